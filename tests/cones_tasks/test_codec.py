"""The mask storage codec: lossless, near the entropy bound (issue #4, "Storage codec")."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cones_tasks.codec import (
    CodecError,
    decode_indices,
    decoded_universe,
    encode_indices,
    encoded_count,
    encoded_scheme,
    entropy_bytes,
)

SD15_UNIVERSE = 19_169_280


@st.composite
def index_sets(draw):
    """Random subsets: sparse, dense, runs, empty and full, of universes 0..5000."""
    universe = draw(st.integers(min_value=0, max_value=5000))
    kind = draw(st.sampled_from(["sparse", "dense", "runs", "empty", "full"]))
    if universe == 0 or kind == "empty":
        return np.zeros(0, dtype=np.int64), universe
    if kind == "full":
        return np.arange(universe, dtype=np.int64), universe
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "runs":
        starts = rng.integers(0, universe, size=draw(st.integers(1, 8)))
        lengths = rng.integers(1, 200, size=starts.size)
        idx = np.concatenate([np.arange(s, min(s + n, universe)) for s, n in zip(starts, lengths)])
        return np.unique(idx).astype(np.int64), universe
    density = draw(st.floats(0.0, 0.05)) if kind == "sparse" else draw(st.floats(0.05, 1.0))
    return np.flatnonzero(rng.random(universe) < density).astype(np.int64), universe


@settings(max_examples=300, deadline=None)
@given(index_sets())
def test_roundtrip_is_lossless(case):
    idx, universe = case
    blob = encode_indices(idx, universe)
    out = decode_indices(blob)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, idx)
    assert encoded_count(blob) == idx.size
    assert decoded_universe(blob) == universe


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**40), unique=True, max_size=200))
def test_roundtrip_huge_universe_uses_wide_gaps(values):
    # Universes above 2**32 force 64-bit gaps in the shuffle scheme.
    idx = np.array(sorted(values), dtype=np.int64)
    blob = encode_indices(idx, 2**40 + 1)
    np.testing.assert_array_equal(decode_indices(blob), idx)


def test_empty_and_full_sets_cost_only_a_header():
    empty = encode_indices(np.zeros(0, dtype=np.int64), SD15_UNIVERSE)
    full = encode_indices(np.arange(SD15_UNIVERSE, dtype=np.int64), SD15_UNIVERSE)
    assert len(empty) < 16 and len(full) < 16
    assert decode_indices(empty).size == 0
    assert decode_indices(full).size == SD15_UNIVERSE
    assert encoded_scheme(full) == "complement+empty"


@pytest.mark.parametrize("density", [0.001, 0.01, 0.1])
def test_sd_scale_random_masks_are_within_10_percent_of_entropy(density):
    rng = np.random.default_rng(int(density * 1e4))
    n = int(SD15_UNIVERSE * density)
    idx = np.sort(rng.choice(SD15_UNIVERSE, n, replace=False)).astype(np.int64)
    blob = encode_indices(idx, SD15_UNIVERSE)
    assert len(blob) <= 1.10 * entropy_bytes(n, SD15_UNIVERSE)
    np.testing.assert_array_equal(decode_indices(blob), idx)


def test_contiguous_runs_beat_gap_coding():
    # A mask that shuts whole rows of one layer is highly structured; a zstd
    # scheme must win over Rice (which codes each gap separately).
    idx = np.arange(1_000_000, 1_200_000, dtype=np.int64)
    blob = encode_indices(idx, SD15_UNIVERSE)
    assert len(blob) < 1000
    assert encoded_scheme(blob) != "rice"


def test_entropy_bound_matches_small_binomials():
    assert entropy_bytes(0, 10) == pytest.approx(0.0, abs=1e-12)
    assert entropy_bytes(2, 4) == pytest.approx(np.log2(6) / 8)
    assert entropy_bytes(10, 10) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("indices", "universe", "message"),
    [
        (np.array([3, 1]), 10, "sorted and unique"),
        (np.array([1, 1]), 10, "sorted and unique"),
        (np.array([0, 10]), 10, r"\[0, 10\)"),
        (np.array([-1, 2]), 10, r"\[0, 10\)"),
        (np.array([[1, 2]]), 10, "1-D"),
        (np.array([0.5]), 10, "integers"),
    ],
)
def test_bad_indices_are_refused_with_the_reason(indices, universe, message):
    with pytest.raises(CodecError, match=message):
        encode_indices(indices, universe)


def test_corrupt_blobs_raise_codec_error():
    blob = encode_indices(np.arange(0, 5000, 7, dtype=np.int64), 100_000)
    with pytest.raises(CodecError, match="bad magic"):
        decode_indices(b"XX" + blob[2:])
    with pytest.raises(CodecError):
        decode_indices(blob[: len(blob) // 2])
    with pytest.raises(CodecError, match="version"):
        decode_indices(blob[:2] + bytes([99]) + blob[3:])
