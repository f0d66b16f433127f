"""Threshold modes: τ, fraction and top-k give exactly the counts they promise."""

from __future__ import annotations

import numpy as np
import pytest

from cones_tasks.neurons.scores import round_budget, select_neurons


def test_tau_selects_every_score_above_it_except_excluded():
    s = np.array([0.5, -1.0, 0.2, 0.9, 0.0], dtype=np.float32)
    excluded = np.array([False, False, False, True, False])
    assert select_neurons(s, excluded=excluded, mode="tau", value=0.1, budget=None).tolist() == [0, 2]


def test_budget_takes_highest_positive_scores_sorted():
    s = np.array([0.1, 0.7, -0.3, 0.7, 0.4, 0.0], dtype=np.float32)
    none = np.zeros(6, dtype=bool)
    assert select_neurons(s, excluded=none, mode="top_k", value=3, budget=3).tolist() == [1, 3, 4]
    # ties break by index: 1 before 3
    assert select_neurons(s, excluded=none, mode="top_k", value=1, budget=1).tolist() == [1]
    # never a non-positive score, even if the budget allows it
    assert select_neurons(s, excluded=none, mode="top_k", value=10, budget=10).tolist() == [0, 1, 3, 4]
    excl = np.array([False, True, False, False, False, False])
    assert select_neurons(s, excluded=excl, mode="fraction", value=0.5, budget=2).tolist() == [3, 4]


@pytest.mark.parametrize("rounds", [1, 3, 7])
def test_round_budgets_sum_to_the_total(rounds):
    size = 1280
    per_round = [round_budget(mode="fraction", value=0.05, size=size, rounds=rounds, round_index=r) for r in range(rounds)]
    assert sum(per_round) == 64 and max(per_round) - min(per_round) <= 1
    assert sum(round_budget(mode="top_k", value=10, size=size, rounds=rounds, round_index=r) for r in range(rounds)) == 10
    assert round_budget(mode="tau", value=0.0, size=size, rounds=rounds, round_index=0) is None
