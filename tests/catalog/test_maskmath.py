"""All-pairs intersections / Jaccard through the inverted index equal the pairwise definition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog.maskmath import intersection_counts, jaccard_matrix


@settings(max_examples=40, deadline=None)
@given(
    universe=st.integers(1, 3000),
    n_sets=st.integers(1, 12),
    chunk=st.sampled_from([7, 64, 1 << 20]),  # tiny chunks exercise chunk boundaries
    seed=st.integers(0, 2**32 - 1),
)
def test_counts_equal_pairwise_intersections(universe, n_sets, chunk, seed):
    rng = np.random.default_rng(seed)
    densities = rng.choice([0.0, 0.01, 0.3, 1.0], size=n_sets)
    sets = [np.flatnonzero(rng.random(universe) < d) for d in densities]
    counts = intersection_counts(sets, universe, chunk_positions=chunk, workers=2)
    expected = np.array([[np.intersect1d(a, b).size for b in sets] for a in sets])
    np.testing.assert_array_equal(counts, expected)


def test_jaccard_matrix_values_and_empty_sets():
    sets = [np.array([0, 1, 2, 3]), np.array([2, 3, 4, 5]), np.array([], dtype=np.int64), np.array([], dtype=np.int64)]
    jac = jaccard_matrix(sets, 10)
    assert jac[0, 1] == pytest.approx(2 / 6)
    assert jac[0, 0] == 1.0 and jac[0, 2] == 0.0
    assert jac[2, 3] == 1.0  # two empty masks are the same (empty) concept


def test_out_of_range_indices_are_refused():
    with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
        intersection_counts([np.array([3, 10])], 10)
