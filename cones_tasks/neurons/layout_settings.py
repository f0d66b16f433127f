"""Where each subject is drawn, and how strongly its word is held there: the layout's settings (no torch).

Generation reads them (cones_tasks.neurons.layout turns them into attention biases) and so does
discovery, whose objectives carry a layout (cones_tasks.neurons.objectives), which the catalog
reads without torch: hence a module of its own. Why a layout at all: cones_tasks.neurons.layout.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["FULL_IMAGE", "Box", "Layout", "check_box", "grid_boxes"]

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image's width and height
FULL_IMAGE: Box = (0.0, 0.0, 1.0, 1.0)


def check_box(box: Box, what: str = "box") -> None:
    """Raise ValueError naming the fix unless `box` is (x0, y0, x1, y1) inside the unit square with x0 < x1, y0 < y1."""
    if len(box) != 4 or not (0.0 <= box[0] < box[2] <= 1.0 and 0.0 <= box[1] < box[3] <= 1.0):
        raise ValueError(f"{what} {tuple(box)} is not inside the image: give (x0, y0, x1, y1) as fractions of its width "
                         "and height, 0 ≤ x0 < x1 ≤ 1 and 0 ≤ y0 < y1 ≤ 1")


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

    # chosen on the toy model's selection seeds (docs/research/layout.md, "Inside at 1 %"), n = 48: with the default
    # 1 % concepts (gate, learned under the layout) pairs read 0.83 at inside 2, 0.94 at 3, 0.85 at 4, 0.21 at 6
    # (subjects dropped, pictures unreadable); learned from photos of the subject alone, 0.33 / 0.46 / 0.54 / 0.46.
    # 4 is the best for the worse of the two (discovery's own hold stays at 2: objectives.DISCOVERY_LAYOUT); outside
    # 4 and 8 read the same. A lone subject has no region to win against another subject's word: `lone` 2 cost the
    # older 13.5 % concepts hits (0.94 -> 0.81), 1 did not.
    inside: float = Field(4.0, ge=0.0, description="logit added where a subject's word meets its own region (two or "
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
                check_box(b, "layout box")
        return self

    def regions(self, k: int) -> list[Box]:
        return list(self.boxes.get(k) or grid_boxes(k))
