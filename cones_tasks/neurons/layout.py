"""Layout attention control: each subject's class word is read in its own region of the image (docs/composition.md).

Why. A word-scoped concept edits only its class word's K/V rows (cones_tasks.neurons.word_scope),
but every image position's query reads every row: in "a triangle and a circle" the circle's
pixels also attend to the edited "triangle" row and take on the triangle subject's colour or
pattern. On the toy model that is most of the pair failures: a named subject drawn in its class
but wearing another member's look (docs/research/pairs.md, "misses"). Cones 2 (Liu et al., 2023,
§3.3 "layout guidance") answers it at generation time, with no change to the concepts: each
subject gets a region, and the cross-attention scores between a subject's word and the
positions inside its region are raised, outside it lowered. Here that is an additive bias on
the attention logits, handed to the pipeline's own attention processor as its attention mask,
so every stock processor that honours a mask (AttnProcessor2_0, AttnProcessor, xformers) applies it.

Regions come from a `Layout`: `grid` gives the k subjects of a prompt the cells of a reading-order
grid (two side by side, three or four in quadrants), the arrangement a caption that names
objects left to right describes; explicit boxes per subject position can be given instead. A
prompt with one subject gets no bias: its region would be the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cones_tasks.neurons.processor import conditional_offset
from cones_tasks.neurons.words import text_tokenizers, word_rows

__all__ = ["Box", "Layout", "RegionBias", "grid_boxes", "word_regions"]

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image's width and height


def grid_boxes(k: int) -> list[Box]:
    """k cells of a reading-order grid: ⌈√k⌉ columns, as many rows as k needs (1: the image; 2: halves side by side;
    3, 4: quadrants)."""
    if k < 1:
        raise ValueError(f"a layout needs at least one subject, got {k}")
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    return [((i % cols) / cols, (i // cols) / rows, (i % cols + 1) / cols, (i // cols + 1) / rows) for i in range(k)]


class Layout(BaseModel):
    """Where each subject of a prompt is drawn (a lone subject: anywhere), and how strongly attention is held there.

    inside / outside: logits added to / taken from the attention score between a subject's class
    word and each image position inside / outside its region; lone: added for a prompt's only
    subject everywhere (all 0: no control). `boxes[k]`:
    the regions of a k-subject prompt, in the order the prompt names its subjects (left to right in
    its text, whatever order the concepts are listed in); a count not
    given falls back to the grid (grid_boxes).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # chosen on the toy model's selection seeds with the default concepts (docs/research/layout.md): pairs 0.42 ->
    # 0.75 at inside 1 or 2 and outside 4 or 8 (n = 48); at n = 96, inside 2 over 1: pairs 0.78 against 0.73,
    # three subjects 0.53 against 0.27; 3 and above break images (subjects left out, unreadable pictures).
    # A lone subject has no region to win against another subject's word: there 2 cost hits (0.94 -> 0.81), 1 did not.
    inside: float = Field(2.0, ge=0.0, description="logit added where a subject's word meets its own region (two or "
                          "more subjects)")
    outside: float = Field(4.0, ge=0.0, description="logit taken where a subject's word meets the rest of the image")
    lone: float = Field(1.0, ge=0.0, description="logit added where a prompt's only subject's word meets the image")
    boxes: dict[int, tuple[Box, ...]] = Field(default_factory=dict, description="explicit regions per subject count")

    @model_validator(mode="after")
    def _boxes_fit(self) -> Layout:
        for k, boxes in self.boxes.items():
            if len(boxes) != k:
                raise ValueError(f"layout boxes for {k} subjects list {len(boxes)} boxes; give one (x0, y0, x1, y1) per subject")
            for b in boxes:
                if not (0.0 <= b[0] < b[2] <= 1.0 and 0.0 <= b[1] < b[3] <= 1.0):
                    raise ValueError(f"layout box {b} is not inside the image: give 0 ≤ x0 < x1 ≤ 1 and 0 ≤ y0 < y1 ≤ 1")
        return self

    def regions(self, k: int) -> list[Box]:
        return list(self.boxes.get(k) or grid_boxes(k))


@dataclass(eq=False)
class RegionBias:
    """Attention-logit biases between some (prompt, text token) rows and image regions.

    Entry n: prompt batch[n]'s token row rows[n] gets +inside[n] at the positions inside boxes[n] and
    −outside elsewhere. `batch_size` as RowEdits: a forward of twice as many elements is a
    classifier-free-guidance batch whose unconditional half is left alone. `aspect`: the image's
    height / width, to lay a layer's positions out on its grid.
    """

    batch: torch.Tensor  # [N] int64
    rows: torch.Tensor  # [N] int64
    boxes: torch.Tensor  # [N, 4] float: x0, y0, x1, y1
    inside: torch.Tensor  # [N] float
    outside: float
    batch_size: int
    aspect: float = 1.0
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def bias(self, forward_batch: int, positions: int, tokens: int, *, device, dtype) -> torch.Tensor:
        """The additive attention mask [forward_batch, positions, tokens] of one cross-attention layer."""
        key = (forward_batch, positions, tokens, device, dtype)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._build(forward_batch, positions, tokens).to(device, dtype)
            self._cache[key] = hit
        return hit

    def _build(self, forward_batch: int, positions: int, tokens: int) -> torch.Tensor:
        offset = conditional_offset(self.batch_size, forward_batch, "layout regions")  # the unconditional half: none
        height = round(math.sqrt(positions * self.aspect))
        width = positions // max(height, 1)
        if height * width != positions:
            raise ValueError(f"cannot lay {positions} attention positions on a grid of aspect {self.aspect:.3g} (height/width)")
        ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
        b = self.boxes.float().cpu()
        in_x = (xs[None, :] >= b[:, 0:1]) & (xs[None, :] < b[:, 2:3])  # [N, W]
        in_y = (ys[None, :] >= b[:, 1:2]) & (ys[None, :] < b[:, 3:4])  # [N, H]
        inside = (in_y[:, :, None] & in_x[:, None, :]).reshape(len(b), positions)
        values = torch.where(inside, self.inside.float().cpu()[:, None], torch.tensor(-self.outside))  # [N, positions]
        out = torch.zeros(forward_batch, tokens, positions)
        out.index_put_((self.batch.cpu() + offset, self.rows.cpu()), values, accumulate=True)
        return out.transpose(1, 2).contiguous()


def word_regions(model, prompts: Sequence[str], class_words: Sequence[Sequence[str]], layout: Layout, *,
                 aspect: float = 1.0) -> RegionBias | None:
    """The RegionBias that holds each prompt's subjects (their class words, in naming order) in the layout's regions.

    A lone subject's region is the whole image: its word is only read more strongly (`lone`). Raises ClassWordNotInPromptError (words.py) when a prompt
    does not name a class word given for it.
    """
    if len(class_words) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but class words for {len(class_words)}; pass one list per prompt")
    batch, rows, boxes, inside = [], [], [], []
    tokenizers = text_tokenizers(model)
    for i, (prompt, words) in enumerate(zip(prompts, class_words)):
        if not words:
            continue
        spans = sorted(word_rows(tokenizers, prompt, list(words)))  # regions go in the order the prompt names them
        boost = layout.lone if len(words) == 1 else layout.inside
        for span, box in zip(spans, layout.regions(len(words))):
            for r in span:
                batch.append(i)
                rows.append(r)
                boxes.append(box)
                inside.append(boost)
    if not batch or (layout.inside == layout.outside == layout.lone == 0):
        return None
    return RegionBias(batch=torch.tensor(batch), rows=torch.tensor(rows), boxes=torch.tensor(boxes, dtype=torch.float32),
                      inside=torch.tensor(inside), outside=layout.outside, batch_size=len(prompts), aspect=aspect)
