"""Seeded procedural renderer for the toy world.

Hard-edged pixels, no anti-aliasing: every pixel is exactly a palette colour, which is
what lets the judge read attributes back with rules.
"""

from __future__ import annotations

import numpy as np

from cones_tasks.toyworld.world import (
    BACKGROUNDS,
    COLORS,
    PATTERNS,
    RESOLUTION,
    SHAPES,
    ObjectSpec,
    Scene,
    pattern_color,
)

# Half-size ranges by object count: single objects are large (≥ 35 % of the side); two objects
# share the canvas in halves, three or four in quadrants (8 px cells at 16 px), so they never overlap.
RADIUS_RANGE = {1: (4.0, 6.0), 2: (3.0, 3.5)}
# Three and four objects ("crowds"): 3.0–3.5 px, the pairs' size and the most a quadrant holds with
# its 0.5 px margin. The two-object 8,750-step model and the first one were trained on 2.6–3.2 px
# (SMALL_CROWD_RADIUS), where some circles rasterise to a full box, a square's very pixels: the judge
# read every object of a four-object scene right in 0.94 of them, 1.00 at 3.0–3.5
# (docs/research/toy-model.md, "Three and four objects").
CROWD_RADIUS = (3.0, 3.5)
SMALL_CROWD_RADIUS = (2.6, 3.2)


def check_crowd_radius(crowd_radius: tuple[float, float], resolution: int = RESOLUTION) -> None:
    lo, hi = crowd_radius
    most = resolution / 4 - 0.5  # a quadrant's half-side less the margin that keeps objects apart
    if not 0 < lo <= hi <= most:
        raise ValueError(f"crowd radius {lo}–{hi} px does not fit a {resolution} px canvas's quadrants: "
                         f"pass 0 < low ≤ high ≤ {most}, e.g. {CROWD_RADIUS[0]},{CROWD_RADIUS[1]}")


def shape_mask(shape: str, cx: float, cy: float, radius: float, resolution: int = RESOLUTION) -> np.ndarray:
    """Boolean [H, W] footprint of a shape, tested at pixel centres."""
    ys, xs = np.mgrid[0:resolution, 0:resolution].astype(np.float64) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        half = radius * 0.82  # equal-ish area to the circle of the same radius
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # apex up: half-width grows linearly from 0 at the top to `radius` at the bottom
        t = (dy + radius) / (2 * radius)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= radius * t + 0.35)
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def pattern_mask(pattern: str, footprint: np.ndarray) -> np.ndarray:
    """Which pixels of a footprint carry the darker pattern colour."""
    if pattern == "plain":
        return np.zeros_like(footprint)
    rows, cols = np.nonzero(footprint)
    top, left = rows.min(), cols.min()
    ys, xs = np.mgrid[0 : footprint.shape[0], 0 : footprint.shape[1]]
    if pattern == "striped":  # horizontal stripes, every other row from the object's top
        marks = (ys - top) % 2 == 1
    elif pattern == "dotted":  # one dot in each 2×2 cell
        marks = ((ys - top) % 2 == 1) & ((xs - left) % 2 == 1)
    else:
        raise ValueError(f"unknown pattern {pattern!r}; choose one of {PATTERNS}")
    return footprint & marks


def render(scene: Scene, resolution: int = RESOLUTION) -> np.ndarray:
    """Scene → uint8 image [H, W, 3]."""
    image = np.empty((resolution, resolution, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        footprint = shape_mask(obj.shape, obj.cx, obj.cy, obj.radius, resolution)
        if not footprint.any():
            continue
        image[footprint] = COLORS[obj.color]
        image[pattern_mask(obj.pattern, footprint)] = pattern_color(obj.color)
    return image


OBJECT_ORDERS = ("random", "reading", "left-to-right")


def check_object_order(order: str) -> None:
    if order not in OBJECT_ORDERS:
        raise ValueError(f"unknown object order {order!r}; choose one of {OBJECT_ORDERS}")


def place_objects(
    rng: np.random.Generator, attributes: list[tuple[str, str, str]], resolution: int = RESOLUTION,
    *, order: str = "random", crowd_radius: tuple[float, float] = CROWD_RADIUS,
) -> tuple[ObjectSpec, ...]:
    """Random non-overlapping positions and sizes for (shape, colour, pattern) triples.

    `order`: where the i-th triple goes. "random": any cell. "reading": cells in reading order
    (left before right, top before bottom), so a caption names objects as one reads the image and
    the UNet has a place to bind each noun phrase to. "left-to-right": reading order, and two
    objects always side by side: with stacking allowed, a pixel at the top right is the first
    object or the second depending on a layout that denoising settles only after it has settled
    colours (README, "Object order"). `crowd_radius`: half-sizes of three or four objects.
    """
    check_object_order(order)
    check_crowd_radius(crowd_radius, resolution)
    n = len(attributes)
    lo, hi = RADIUS_RANGE[n] if n <= 2 else crowd_radius
    radii = rng.uniform(lo, hi, size=n)
    if n == 1:
        r = radii[0]
        centres = [rng.uniform(r + 0.5, resolution - r - 0.5, size=2)]
    else:
        # one object per cell (halves for two, quadrants for three or four), jittered
        # inside it; cells keep a 0.5 px margin, so objects never touch.
        cells = [(0, 0, 2, 1), (1, 0, 2, 1)] if n == 2 else [(i % 2, i // 2, 2, 2) for i in range(4)]
        # Both draws are made in every order, so orders differ in placement alone.
        if n == 2 and rng.random() < 0.5 and order != "left-to-right":
            cells = [(y, x, ny, nx) for (x, y, nx, ny) in cells]  # stack vertically
        chosen = rng.permutation(len(cells))[:n]
        centres = []
        for k, r in zip(chosen if order == "random" else np.sort(chosen), radii):
            col, row, ncols, nrows = cells[k]
            w, h = resolution / ncols, resolution / nrows
            centres.append(
                np.array([col * w + rng.uniform(r + 0.5, w - r - 0.5), row * h + rng.uniform(r + 0.5, h - r - 0.5)])
            )
    return tuple(
        ObjectSpec(s, c, p, float(cx), float(cy), float(r))
        for (s, c, p), (cx, cy), r in zip(attributes, centres, radii)
    )


def random_attributes(rng: np.random.Generator) -> tuple[str, str, str]:
    return (
        SHAPES[rng.integers(len(SHAPES))],
        list(COLORS)[rng.integers(len(COLORS))],
        PATTERNS[rng.integers(len(PATTERNS))],
    )


def random_scene(rng: np.random.Generator, n_objects: int, *, distinct: bool = True, order: str = "random",
                 crowd_radius: tuple[float, float] = CROWD_RADIUS) -> Scene:
    """A random scene; with `distinct`, no two objects share shape and colour (so captions stay unambiguous)."""
    attrs: list[tuple[str, str, str]] = []
    while len(attrs) < n_objects:
        a = random_attributes(rng)
        if not distinct or all((a[0], a[1]) != (b[0], b[1]) for b in attrs):
            attrs.append(a)
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    return Scene(background, place_objects(rng, attrs, order=order, crowd_radius=crowd_radius))
