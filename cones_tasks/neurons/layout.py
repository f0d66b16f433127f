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
prompt's only subject has the whole image: its word is read more strongly everywhere (`lone`).

Discovery holds the subject's word the same way while it learns the edit (span_regions; the
objectives' `layout`), so the edit is learned under the attention generation will give it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cones_tasks.neurons.layout_settings import FULL_IMAGE, Box, Layout, grid_boxes
from cones_tasks.neurons.processor import conditional_offset
from cones_tasks.neurons.words import text_tokenizers, word_rows

__all__ = ["FULL_IMAGE", "Box", "Layout", "RegionBias", "grid_boxes", "span_regions", "word_regions"]


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
    tokenizers = text_tokenizers(model)
    held = []
    for i, (prompt, words) in enumerate(zip(prompts, class_words)):
        if not words:
            continue
        spans = sorted(word_rows(tokenizers, prompt, list(words)))  # regions go in the order the prompt names them
        boxes = layout.regions(len(words)) if len(words) > 1 else [None]
        held.extend((i, span, box) for span, box in zip(spans, boxes))
    return span_regions(held, layout, batch_size=len(prompts), aspect=aspect)


def span_regions(held: Sequence[tuple[int, Sequence[int], Box | None]], layout: Layout, *, batch_size: int,
                 aspect: float = 1.0) -> RegionBias | None:
    """The RegionBias that holds token rows in regions: one (prompt index, token rows, box) per held word.

    A box of None is a lone subject's: the whole image at +lone; a box, its word at +inside there and
    −outside elsewhere. None when nothing is held or every strength is 0.
    """
    batch, rows, boxes, inside = [], [], [], []
    for i, span, box in held:
        for r in span:
            batch.append(i)
            rows.append(r)
            boxes.append(FULL_IMAGE if box is None else box)
            inside.append(layout.lone if box is None else layout.inside)
    if not batch or (layout.inside == layout.outside == layout.lone == 0):
        return None
    return RegionBias(batch=torch.tensor(batch), rows=torch.tensor(rows), boxes=torch.tensor(boxes, dtype=torch.float32),
                      inside=torch.tensor(inside, dtype=torch.float32), outside=layout.outside, batch_size=batch_size,
                      aspect=aspect)
