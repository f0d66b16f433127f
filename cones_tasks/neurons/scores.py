"""Choosing which neurons to shut from their scores (Cones §3.1: a threshold τ, or a budget).

A neuron's score s = θ·∂L/∂θ is the first-order drop of the concept loss L
if θ is set to zero (L(θ=0) ≈ L − θ·∂L/∂θ). Positive scores are neurons
whose shutting helps; scores are means over steps, so a τ chosen once keeps
its meaning whatever the step count (the notebook thresholded a growing sum).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["ThresholdMode", "round_budget", "select_neurons"]

ThresholdMode = Literal["tau", "fraction", "top_k"]


def round_budget(*, mode: ThresholdMode, value: float, size: int, rounds: int, round_index: int) -> int | None:
    """Neurons to add in round `round_index` of `rounds` (None for τ: no budget).

    A fraction or top-k budget is the total over all rounds, split as evenly as
    integers allow, so iterative and one-shot runs shut the same count.
    """
    if mode == "tau":
        return None
    total = int(round(value * size)) if mode == "fraction" else int(value)
    total = min(total, size)
    return total * (round_index + 1) // rounds - total * round_index // rounds


def select_neurons(
    scores: np.ndarray, *, excluded: np.ndarray, mode: ThresholdMode, value: float, budget: int | None
) -> np.ndarray:
    """Sorted global indices of the neurons to shut now.

    scores: fp32 [size] mean scores; excluded: bool [size] (already shut).
    τ: every non-excluded neuron with score > τ. Budget: the `budget` highest
    positive scores among the non-excluded (fewer if fewer are positive: a
    neuron with s ≤ 0 would raise the loss when shut). Ties break by index.
    """
    s = np.where(excluded, -np.inf, np.asarray(scores, dtype=np.float32))
    if mode == "tau":
        return np.flatnonzero(s > value).astype(np.int64)
    if budget is None or budget < 0:
        raise ValueError(f"mode {mode!r} needs a non-negative budget, got {budget}")
    positive = np.flatnonzero(s > 0)
    if positive.size <= budget:
        return positive.astype(np.int64)
    # stable order on -score: deterministic ties (lower index first)
    order = np.argsort(-s[positive], kind="stable")[:budget]
    return np.sort(positive[order]).astype(np.int64)
