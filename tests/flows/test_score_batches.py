"""Score batches are cut at fixed positions of the run's grid, so overlapping runs commit the same files."""

from __future__ import annotations

from catalog.pipeline import GenerationRow
from flows.score_generations import score_batches


def _rows(ids):
    return [GenerationRow(id=i, subjects=("s",), prompt="a dog", seed=0, image_uri="u") for i in ids]


def test_a_run_over_a_prefix_of_the_grid_scores_in_the_same_batches():
    """A small run (its grid: g0–g7) and a full run (g0–g11) that both score g0–g7 at once cut the same
    batches: each batch's commit is named by its rows' keys, so the second writes nothing new."""
    big = tuple(f"g{i:02d}" for i in range(12))
    small = big[:8]
    unsorted = list(reversed(big))  # the catalog answers in id order, not grid order
    small_batches = [[r.id for r in b] for b in score_batches(_rows(reversed(small)), small, 2)]
    big_batches = [[r.id for r in b] for b in score_batches(_rows(unsorted), big, 2)]
    assert small_batches == big_batches[:4] == [list(small[i : i + 2]) for i in range(0, 8, 2)]


def test_generations_another_run_scored_leave_their_batch_short_not_shifted():
    grid = tuple(f"g{i}" for i in range(6))
    todo = _rows(["g1", "g2", "g3", "g5"])  # g0 and g4 were scored by a run that overlapped this one
    assert [[r.id for r in b] for b in score_batches(todo, grid, 2)] == [["g1"], ["g2", "g3"], ["g5"]]


def test_without_a_grid_the_unscored_generations_are_batched_as_they_come():
    assert [len(b) for b in score_batches(_rows(["a", "b", "c"]), None, 2)] == [2, 1]
