"""Captions for toy scenes, from full to partial.

Partial captions ("a circle") cover every colour and pattern, so the class word
alone carries a diverse prior — the prior concept neurons select from (Cones §3).
"""

from __future__ import annotations

import numpy as np

from cones_tasks.toyworld.world import ObjectSpec, Scene


def describe(obj: ObjectSpec, *, color: bool = True, pattern: bool = True) -> str:
    words = ["a"]
    if pattern:
        words.append(obj.pattern)
    if color:
        words.append(obj.color)
    words.append(obj.shape)
    return " ".join(words)


def full_caption(scene: Scene) -> str:
    """Every attribute named: "a striped red circle on snow"."""
    objects = " and ".join(describe(o) for o in scene.objects)
    return f"{objects} on {scene.background}"


def random_caption(rng: np.random.Generator, scene: Scene, *, p_full: float = 0.5) -> str:
    """Full with probability `p_full`, otherwise each attribute dropped independently."""
    if rng.random() < p_full:
        return full_caption(scene)
    objects = " and ".join(
        describe(o, color=rng.random() < 0.5, pattern=rng.random() < 0.5) for o in scene.objects
    )
    if rng.random() < 0.5:
        return f"{objects} on {scene.background}"
    return objects


def class_prompt(shape: str) -> str:
    """The class prompt Cones conditions on: the class word alone (no rare token)."""
    return f"a {shape}"
