"""Presence, the toy world's own score of a generated image (docs/composition.md): does the judge see
each subject, with exactly its shape, colour and pattern? The core's scores (cones_tasks.generation_scores)
are model-agnostic; this one reads toy images only, so it lives with the toy world."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.subjects import ToySubject


def toy_presence(images: np.ndarray, subjects: Sequence[Sequence[str]]) -> list[dict[str, float]]:
    """For each image `[H, W, 3]` and its subject ids: subject id → 1.0 if the judge sees it, else 0.0."""
    out = []
    for image, ids in zip(images, subjects, strict=True):
        seen = {(o.shape, o.color, o.pattern) for o in judge(np.asarray(image)).objects}
        out.append({s: float(_attributes(ToySubject.parse(s)) in seen) for s in ids})
    return out


def _attributes(subject: ToySubject) -> tuple[str, str, str]:
    return (subject.shape, subject.color, subject.pattern)
