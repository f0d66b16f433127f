"""Which subsets a grid holds: sampled (uniform, reproducible, distinct), balanced, listed (checked row by row)."""

from __future__ import annotations

import collections
import itertools
import math

import numpy as np
import pytest

from cones_tasks.config import GenerateConfig, GenerationGrid
from cones_tasks.subsets import (
    CombinationRowError,
    SeenRows,
    balanced_subsets,
    grid_subset_count,
    grid_subsets,
    listed_subsets,
    sample_subsets,
)


def _rows(a: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in r) for r in a]


def test_a_sample_is_reproducible_from_its_seed_and_has_no_duplicates():
    a = sample_subsets(1000, 3, 200_000, rng=np.random.default_rng(7))
    b = sample_subsets(1000, 3, 200_000, rng=np.random.default_rng(7))
    c = sample_subsets(1000, 3, 200_000, rng=np.random.default_rng(8))
    assert a.shape == (200_000, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(np.unique(a, axis=0)) == 200_000  # no combination twice
    assert np.all(a[:, 1:] > a[:, :-1])  # sorted rows, no subject twice
    assert a.min() >= 0 and a.max() < 1000


def test_a_sample_is_uniform_over_subsets():
    # 6 subjects, 2-subsets: 15 of them. 3,000 draws of 5: each subset should be in 1,000 of them.
    counts = collections.Counter()
    rng = np.random.default_rng(0)
    for _ in range(3000):
        counts.update(_rows(sample_subsets(6, 2, 5, rng=rng)))
    assert len(counts) == 15
    observed = np.array(list(counts.values()))
    chi2 = float(((observed - 1000) ** 2 / 1000).sum())
    assert chi2 < 36.1  # 14 degrees of freedom, p = 0.001


def test_asking_for_most_or_all_subsets_works_and_too_many_is_refused():
    every = sample_subsets(8, 3, math.comb(8, 3), rng=np.random.default_rng(0))
    assert sorted(_rows(every)) == list(itertools.combinations(range(8), 3))
    most = sample_subsets(8, 3, 50, rng=np.random.default_rng(0))
    assert len(set(_rows(most))) == 50
    with pytest.raises(ValueError, match="only 56"):
        sample_subsets(8, 3, 57, rng=np.random.default_rng(0))


def test_each_k_of_a_sample_has_its_own_seed_stream():
    spec = GenerationGrid(combinations={"sample": 100, "k": [2, 3], "seed": 5}).combinations
    only3 = GenerationGrid(combinations={"sample": 100, "k": [3], "seed": 5}).combinations
    ids = [f"s{i:03d}" for i in range(40)]
    both = [r for s in grid_subsets(spec, n=40, ids=ids, max_k=3, chunk_rows=64) for r in s.rows()]
    three = [r for s in grid_subsets(only3, n=40, ids=ids, max_k=3, chunk_rows=64) for r in s.rows()]
    assert len(both) == 200 == grid_subset_count(spec, n=40, max_k=3)
    assert [r for r in both if len(r) == 3] == three


@pytest.mark.parametrize(("n", "ks", "count"), [(50, [3], 400), (7, [2, 3], 20), (1000, [2, 3, 4], 10_000), (5, [2], 10)])
def test_balanced_subject_counts_differ_by_at_most_one(n, ks, count):
    blocks = balanced_subsets(n, ks, count, rng=np.random.default_rng(3))
    per_subject = np.bincount(np.concatenate([b.ravel() for b in blocks]), minlength=n)
    assert per_subject.max() - per_subject.min() <= 1
    for k, block in zip(ks, blocks):
        assert block.shape == (count, k)
        assert np.all(block[:, 1:] > block[:, :-1])
        assert len(np.unique(block, axis=0)) == count
    again = balanced_subsets(n, ks, count, rng=np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(blocks, again))


IDS = ["cat", "dog", "owl", "sun"]


def _listed(rows, **kw):
    values = [v for r in rows for v in r]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    return listed_subsets(values, offsets, ids=IDS, max_k=3, **kw)


def test_listed_rows_are_sorted_into_id_order():
    assert _listed([["dog", "cat"], ["sun"], ["owl", "cat", "dog"]]).rows() == [(0, 1), (3,), (0, 1, 2)]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["dog"], ["cat", "fox"]], r"row 2 \['cat', 'fox'\]: subject 'fox' is not one of the grid's 4 subjects"),
        ([["dog"], ["sun"], ["owl", "owl"]], r"row 3 \['owl', 'owl'\]: names subject 'owl' twice"),
        ([["dog", "cat", "owl", "sun"]], r"row 1 .*has 4 subjects; a combination needs 1 to max_k=3"),
        ([["dog"], []], r"row 2 \[\]: has 0 subjects"),
        ([["dog", "cat"], ["sun"], ["cat", "dog"]], r"row 3 \['cat', 'dog'\]: the same combination as row 1"),
    ],
)
def test_listed_rows_are_checked_row_by_row(rows, message):
    with pytest.raises(CombinationRowError, match=message):
        _listed(rows, seen=SeenRows(3))


def test_a_combination_listed_again_in_a_later_chunk_is_refused_with_both_rows():
    seen = SeenRows(3)
    _listed([["dog"], ["cat", "owl"]], seen=seen, first_row=1)
    with pytest.raises(CombinationRowError, match=r"row 4 \['owl', 'cat'\]: the same combination as row 2"):
        _listed([["sun"], ["owl", "cat"]], seen=seen, first_row=3)


def test_the_config_refuses_bad_rows_naming_them():
    base = {"catalog": "c", "model": {"path": "m"}, "subjects": IDS}
    with pytest.raises(ValueError, match=r"row 2 \['dog', 'emu'\]: subject 'emu' is not one of"):
        GenerateConfig.model_validate({**base, "grid": {"combinations": [["dog"], ["dog", "emu"]]}})
    with pytest.raises(ValueError, match=r"row 1 \['dog', 'dog'\]: names subject 'dog' twice"):
        GenerationGrid(combinations=[["dog", "dog"]])
    with pytest.raises(ValueError, match=r"row 1 .*has 3 subjects.*max_k=2"):
        GenerationGrid(max_k=2, combinations=[["a", "b", "c"]])
    with pytest.raises(ValueError, match="k \\[4\\] goes above max_k=3"):
        GenerationGrid(combinations={"sample": 3, "k": [4]})
    with pytest.raises(ValueError, match="only 6"):
        GenerateConfig.model_validate({**base, "grid": {"combinations": {"balanced": 7, "k": [2]}}})
    with pytest.raises(ValueError, match="neither 'all' nor a file"):
        GenerationGrid(combinations="al")
    assert GenerationGrid().combinations == "all"
