"""Random (image, caption) batches from the toy world, for training the toy models."""

from __future__ import annotations

import numpy as np

from cones_tasks.toyworld.captions import random_caption
from cones_tasks.toyworld.render import CROWD_RADIUS, random_scene, render

# Mostly one or two objects (what the prompts ask for most), a few crowded scenes so
# that unions of 3–4 subjects have something to draw on.
OBJECT_COUNT_WEIGHTS = {1: 0.55, 2: 0.35, 3: 0.07, 4: 0.03}


def random_batch(
    rng: np.random.Generator,
    batch_size: int,
    *,
    p_full: float = 0.5,
    p_empty: float = 0.0,
    object_counts: dict[int, float] = OBJECT_COUNT_WEIGHTS,
    object_order: str = "random",
    crowd_radius: tuple[float, float] = CROWD_RADIUS,
) -> tuple[np.ndarray, list[str]]:
    """uint8 images [B, H, W, 3] and captions; `p_empty` drops captions for classifier-free guidance,
    `object_order` places a caption's objects (render.OBJECT_ORDERS, render.place_objects), `crowd_radius`
    sizes three or four of them (render.CROWD_RADIUS)."""
    counts = rng.choice(list(object_counts), size=batch_size, p=list(object_counts.values()))
    scenes = [random_scene(rng, int(n), order=object_order, crowd_radius=crowd_radius) for n in counts]
    images = np.stack([render(s) for s in scenes])
    captions = ["" if rng.random() < p_empty else random_caption(rng, s, p_full=p_full) for s in scenes]
    return images, captions
