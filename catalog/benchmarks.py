"""Measurements behind `cones bench storage` and `cones bench catalog` (targets in README, "What we measured").

Masks here are uniform random sets: the hardest case for the codec (no
structure to exploit beyond the entropy bound) and a fair one for Jaccard.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from catalog.catalog import Catalog, load_catalog
from catalog.compact import compact
from catalog.records import NewMask
from cones_tasks.codec import encode_indices, entropy_bytes

# SD-1.5 cross-attention K/V: 16 transformer blocks, to_k and to_v of [C, 768]
# with C = 320 (5 blocks), 640 (5), 1280 (6): 2·768·(5·320 + 5·640 + 6·1280).
SD15_CROSS_KV = 19_169_280
_SD15_CHANNELS = (320,) * 5 + (640,) * 5 + (1280,) * 6


def random_mask(rng: np.random.Generator, universe: int, density: float) -> np.ndarray:
    """Uniform random sorted set with each position in it with probability `density`."""
    if density <= 0:
        return np.zeros(0, dtype=np.int64)
    # Geometric gaps: O(n) draws instead of O(universe) coin flips.
    n_draw = int(universe * density * 1.1) + 64
    positions = np.cumsum(rng.geometric(density, size=n_draw)) - 1
    while positions[-1] < universe:
        more = np.cumsum(rng.geometric(density, size=n_draw)) + positions[-1]
        positions = np.concatenate([positions, more])
    return positions[positions < universe].astype(np.int64)


def storage_bench(
    *, universe: int = SD15_CROSS_KV, densities: tuple[float, ...] = (0.001, 0.01, 0.1), seed: int = 0
) -> list[dict[str, float]]:
    """Encoded bytes vs dense fp32 and the entropy bound, one row per density."""
    rng = np.random.default_rng(seed)
    out = []
    for density in densities:
        idx = random_mask(rng, universe, density)
        blob = encode_indices(idx, universe)
        out.append(
            {
                "density": density,
                "bytes": len(blob),
                "dense_fp32_bytes": 4 * universe,
                "entropy_bytes": round(entropy_bytes(int(idx.size), universe), 1),
            }
        )
    return out


@dataclass(frozen=True)
class _Entry:
    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


@dataclass(frozen=True)
class _Space:
    """An SD-1.5-shaped neuron-space record (layout only: no weights are needed to store masks)."""

    fingerprint: str
    layout_hash: str
    entries: tuple[_Entry, ...]
    attention: str = "cross"

    @property
    def size(self) -> int:
        return self.entries[-1].offset + self.entries[-1].numel


def _sd15_space() -> _Space:
    entries, offset = [], 0
    for block, channels in enumerate(_SD15_CHANNELS):
        for proj in ("to_k", "to_v"):
            numel = channels * 768
            entries.append(_Entry(f"block{block}.attn2.{proj}.weight", (channels, 768), offset, numel))
            offset += numel
    assert offset == SD15_CROSS_KV
    return _Space("bench-sd15", "bench-sd15-layout", tuple(entries))


def _toy_space(universe: int) -> _Space:
    half = universe // 2
    return _Space(
        "bench-toy", "bench-toy-layout",
        (_Entry("attn2.to_k.weight", (half // 16, 16), 0, half), _Entry("attn2.to_v.weight", (half // 16, 16), half, half)),
    )


@dataclass(frozen=True)
class _Mask:
    space_fingerprint: str
    size: int
    indices: np.ndarray


def jaccard_bench(catalog: Catalog, *, n_masks: int = 1000, density: float = 0.01, seed: int = 0, workers: int = 2) -> float:
    """Seconds for `catalog.jaccard_matrix` over `n_masks` SD-scale masks (read, decode, count)."""
    space = _sd15_space()
    catalog.write_model(space, source="bench")
    catalog.write_subject("bench-subject", class_word="thing")
    rng = np.random.default_rng(seed)
    ids: list[str] = []
    for start in range(0, n_masks, 100):
        batch = [
            NewMask("bench-subject", _Mask(space.fingerprint, space.size, random_mask(rng, space.size, density)), {"i": i})
            for i in range(start, min(n_masks, start + 100))
        ]
        ids += catalog.write_masks(batch)
    t0 = time.perf_counter()
    jac = catalog.jaccard_matrix(ids, workers=workers)
    elapsed = time.perf_counter() - t0
    assert jac.shape == (n_masks, n_masks)
    return elapsed


def aggregate_bench(catalog: Catalog, *, rows: int = 10_000_000, batch: int = 1_000_000, seed: int = 0) -> dict[str, float]:
    """Seconds for a GROUP BY over `rows` clip_scores rows, before and after compaction."""
    rng = np.random.default_rng(seed)
    metrics = np.array(["image_image", "image_text", "judge_hit", "judge_context"])
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        gens = np.char.add("g", np.arange(start // 4, (start + n + 3) // 4).astype(str))
        gen_col = np.repeat(gens, 4)[:n]
        table = pa.table(
            {
                "generation": gen_col,
                "metric": np.tile(metrics, (n + 3) // 4)[:n],
                "target": np.char.add("subject-", (rng.integers(0, 50, n)).astype(str)),
                "value": rng.random(n),
                "scorer": np.full(n, "toy-clip"),
            }
        )
        catalog.commit("clip_scores", table)
    sql = "SELECT metric, target, avg(value) AS mean, count(*) AS n FROM clip_scores GROUP BY metric, target"

    def timed() -> float:
        con = catalog.connect(["clip_scores"])
        try:
            t0 = time.perf_counter()
            out = con.sql(sql).to_arrow_table()
            elapsed = time.perf_counter() - t0
        finally:
            con.close()
        assert sum(out.column("n").to_pylist()) == rows
        return elapsed

    before = min(timed() for _ in range(2))
    compact(catalog, tables=["clip_scores"], grace_s=0)
    after = min(timed() for _ in range(3))
    return {"uncompacted_s": before, "compacted_s": after}


def lookup_bench(
    catalog: Catalog, *, n_masks: int = 100_000, universe: int = 100_000, density: float = 0.01, seed: int = 0
) -> dict[str, float]:
    """Median milliseconds of `get_mask(id)` among `n_masks` toy-sized masks, before/after compaction."""
    space = _toy_space(universe)
    catalog.write_model(space, source="bench")
    subjects = [f"toy-{i}" for i in range(100)]
    for s in subjects:
        catalog.write_subject(s, class_word="thing")
    rng = np.random.default_rng(seed)
    ids: list[str] = []
    per_batch = 10_000
    for start in range(0, n_masks, per_batch):
        batch = [
            NewMask(subjects[i % 100], _Mask(space.fingerprint, space.size, random_mask(rng, universe, density)), {"i": i})
            for i in range(start, min(n_masks, start + per_batch))
        ]
        ids += catalog.write_masks(batch)
    probe = rng.choice(len(ids), size=50, replace=False)

    def timed() -> float:
        catalog.get_mask(ids[0])  # warm the lookup connection
        times = []
        for i in probe:
            t0 = time.perf_counter()
            found = catalog.get_mask(ids[i])
            times.append((time.perf_counter() - t0) * 1000)
            assert found.mask_id == ids[i]
        return statistics.median(times)

    before = timed()
    compact(catalog, tables=["concept_masks"], grace_s=0)
    return {"uncompacted_ms": before, "compacted_ms": timed()}


def catalog_bench(*, uri: str | None = None, quick: bool = False, workers: int = 2) -> dict[str, float]:
    """All of `cones bench catalog`; `quick` shrinks every size 10x (for tests)."""
    scale = 10 if quick else 1
    with tempfile.TemporaryDirectory(prefix="cones-bench-") as tmp:
        base = uri or f"file://{tmp}"
        jac_s = jaccard_bench(load_catalog(f"{base}/jaccard"), n_masks=1000 // scale, workers=workers)
        agg = aggregate_bench(load_catalog(f"{base}/agg"), rows=10_000_000 // scale, batch=1_000_000 // scale)
        look = lookup_bench(load_catalog(f"{base}/lookup"), n_masks=100_000 // scale)
    # The sizes ride along, so a published figure and the size it was measured at come from one file.
    return {
        "jaccard_masks": 1000 // scale,
        "agg_rows": 10_000_000 // scale,
        "lookup_masks": 100_000 // scale,
        "jaccard_matrix_1000_s": round(jac_s, 3),
        "agg_10m_rows_s": round(agg["compacted_s"], 3),
        "point_lookup_ms": round(look["compacted_ms"], 2),
        "agg_10m_rows_uncompacted_s": round(agg["uncompacted_s"], 3),
        "point_lookup_uncompacted_ms": round(look["uncompacted_ms"], 2),
        "scale": 1 / scale,
    }
