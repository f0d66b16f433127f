"""The ground-truth judge: reads each object's attributes back from a toy image.

Rules, not a learned classifier, so its verdicts mean exactly what the renderer means:
1. every pixel goes to its nearest palette entry (backgrounds, object colours, their darkened
   pattern colours); pixels far from every entry are "off-palette";
2. the background is the background colour most pixels agree on;
3. objects are the 8-connected components of object-coloured pixels;
4. colour = the majority colour family of a component (a colour and its darkened mark);
   pattern = how many marks and whether they fill whole rows; shape = how the footprint fills
   its bounding box and whether it widens downwards.
A scene or object that fits no value well is "unreadable" rather than guessed, so a model's
mush is never scored as a lucky hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cones_tasks.toyworld.world import BACKGROUNDS, COLORS, pattern_color

_NAMES = list(COLORS)
_PALETTE = np.array(
    [*BACKGROUNDS.values(), *COLORS.values(), *(pattern_color(c) for c in COLORS)], dtype=np.float32
)
_N_BG = len(BACKGROUNDS)
_N_COLORS = len(COLORS)
OFF_PALETTE_DISTANCE = 70.0  # RGB distance beyond which a pixel matches no palette entry
MIN_OBJECT_PIXELS = 6
MIN_PURITY = 0.75  # share of a component's pixels in its majority colour family


@dataclass(frozen=True)
class JudgedObject:
    shape: str
    color: str
    pattern: str
    cx: float
    cy: float
    pixels: int


@dataclass(frozen=True)
class Judgement:
    background: str | None
    objects: tuple[JudgedObject, ...] = ()
    unreadable: bool = False
    reasons: tuple[str, ...] = field(default=())

    def has(self, *, shape: str | None = None, color: str | None = None, pattern: str | None = None) -> bool:
        """True when some object matches every attribute given."""
        return any(
            (shape is None or o.shape == shape) and (color is None or o.color == color) and (pattern is None or o.pattern == pattern)
            for o in self.objects
        )

    def shows(self, subject, *, on: str | None = None) -> bool:
        """True when the image is readable and an object wears `subject`'s colour and pattern, in the
        subject's own shape, or in shape `on` (another class's object wearing the subject's look: cross-talk).
        `subject` is anything with shape, color and pattern (toyworld.subjects.ToySubject)."""
        return not self.unreadable and self.has(shape=on or subject.shape, color=subject.color, pattern=subject.pattern)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean [H, W] mask, each as an [n, 2] array of (row, col)."""
    seen = np.zeros_like(mask)
    components = []
    h, w = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, members = [start], []
        seen[start] = True
        while stack:
            r, c = stack.pop()
            members.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
        components.append(np.array(members))
    return components


def _shape(footprint: np.ndarray) -> str:
    """Corners first (a square fills all four corners of its box, a triangle only the bottom two,
    a circle none), then fill ratio and widening for ragged, generated footprints.

    Small circles rasterise unevenly: a one-pixel nub on top (rows 1, 4, 6, …), or one corner of
    the box filled with the rows beside it still short. Neither happens to a rendered triangle
    (its rows widen by at most 2 px a step) or square (a full box), so the nub is dropped before
    reading and a square needs every edge of its box within a pixel of full
    (docs/research/toy-model.md, "Three and four objects")."""
    rows = footprint.sum(axis=1)
    if len(rows) > 3 and rows[0] == 1 and rows[1] >= 4:
        footprint = footprint[1:]
        footprint = footprint[:, footprint.any(axis=0)]
        rows = rows[1:]
    top = int(footprint[0, 0]) + int(footprint[0, -1])
    bottom = int(footprint[-1, 0]) + int(footprint[-1, -1])
    if top == 2 and bottom == 2:
        return "square"
    if top == 0 and bottom == 2:
        return "triangle"
    third = max(1, len(rows) // 3)
    if top == 0 and bottom == 0 and footprint.shape[0] >= 3:
        if rows[-third:].mean() < 1.8 * rows[:third].mean():
            return "circle"
    fill = footprint.sum() / footprint.size
    widening = rows[-third:].mean() / max(rows[:third].mean(), 1e-6)
    if widening > 1.8 or fill < 0.62:
        return "triangle"
    cols = footprint.sum(axis=0)
    edges = min(rows[0], rows[-1], cols[0], cols[-1])
    return "square" if fill > 0.9 and edges >= max(rows.max(), cols.max()) - 1 else "circle"


def _pattern(footprint: np.ndarray, marks: np.ndarray) -> str:
    share = marks.sum() / footprint.sum()
    if share < 0.08:
        return "plain"
    # stripes fill whole rows with marks; dots leave every other pixel of a row bare
    row_sizes = footprint.sum(axis=1)
    marked_rows = marks.sum(axis=1)
    full = (marked_rows >= 0.7 * row_sizes) & (row_sizes >= 2)
    return "striped" if full.sum() >= max(1, 0.6 * (marked_rows >= 1).sum()) else "dotted"


def judge(image: np.ndarray) -> Judgement:
    """uint8 [H, W, 3] → what the image shows."""
    pixels = image.astype(np.float32)
    distances = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)  # [H, W, P]
    nearest = distances.argmin(-1)
    off = distances.min(-1) > OFF_PALETTE_DISTANCE
    is_bg = (nearest < _N_BG) & ~off
    reasons = []
    if is_bg.sum() < 0.25 * nearest.size:
        return Judgement(None, unreadable=True, reasons=("no background colour dominates",))
    background = list(BACKGROUNDS)[np.bincount(nearest[is_bg], minlength=_N_BG).argmax()]
    if off.mean() > 0.15:
        return Judgement(background, unreadable=True, reasons=(f"{off.mean():.0%} of pixels match no palette colour",))
    family = np.where(nearest >= _N_BG, (nearest - _N_BG) % _N_COLORS, -1)  # colour index or -1
    is_mark = nearest >= _N_BG + _N_COLORS
    objects = []
    for members in _components((family >= 0) & ~off):
        if len(members) < MIN_OBJECT_PIXELS:
            continue
        fam = family[members[:, 0], members[:, 1]]
        counts = np.bincount(fam, minlength=_N_COLORS)
        if counts.max() / len(members) < MIN_PURITY:
            reasons.append("an object mixes colours")
            continue
        r0, c0 = members.min(0)
        r1, c1 = members.max(0) + 1
        footprint = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        footprint[members[:, 0] - r0, members[:, 1] - c0] = True
        marks = footprint & is_mark[r0:r1, c0:c1]
        objects.append(
            JudgedObject(
                shape=_shape(footprint),
                color=_NAMES[counts.argmax()],
                pattern=_pattern(footprint, marks),
                cx=float(members[:, 1].mean() + 0.5),
                cy=float(members[:, 0].mean() + 0.5),
                pixels=len(members),
            )
        )
    if not objects:
        return Judgement(background, unreadable=True, reasons=tuple(reasons) or ("no object found",))
    return Judgement(background, tuple(objects), unreadable=False, reasons=tuple(reasons))
