"""`cones bench select`: what scoring and the report hold to select one run's grid of 10 M items.

Target (docs/scale.md, "Selecting a run's grid"): ≤ 1,024 MB peak on 2 shared cores. The catalog
is seeded as a finished `generate-combinations` run of `items` items leaves it (sampled
combinations of 3–4 of `subjects` subjects × 1 template × 4 seeds): its `generations` and its
`grid_items`, plus toy-judge scores for the first `scored` of them (two rows each), each table
written in commits of 1 M rows and compacted. Measured, each after resetting the peak:

- score: the scoring flow's selection of the grid's unscored work (`score_batches`: one DuckDB
  query per range of positions, the range's batches cut at fixed positions), consumed whole as
  the flow's fan-out would, with no task run;
- report: the report's (and the leaderboard's) selection (`rank_grid`: the grid's combinations
  aggregated in DuckDB a range at a time, the best 200 kept, every combination's scores tallied
  for the plots at 8 B a combination and metric).

peak_mb is what each adds to the process (Linux VmHWM minus the size before, as `cones bench
plan` measures planning); the result's peak_mb is the larger of the two.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from cones_cli.bench_plan import _peak_mb, _reset_peak, _rss_mb
from cones_cli.output import emit

app = typer.Typer(add_completion=False)  # added to `cones bench` by cones_cli/bench.py

GRID = "bench-select-grid"
SEEDS = 4
KS = (3, 4)
COMMIT_ROWS = 1_000_000
_WORDS = ("dog", "cat", "owl", "teapot", "apple", "circle")


def _hex_ids(rng, n: int):
    """n random 32-hex-digit ids (what catalog.records.content_key makes), vectorised."""
    import numpy as np
    import pyarrow as pa

    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    text = np.empty((n, 32), dtype=np.uint8)
    text[:, 0::2], text[:, 1::2] = digits[raw >> 4], digits[raw & 15]
    ids = pa.array(text.view("S32").ravel()).cast(pa.string())
    return ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids


def _seed(catalog_uri: str, *, items: int, subjects: int, scored: int, seed: int = 0) -> dict:
    """Write the grid's generations, grid items and scores in commits of COMMIT_ROWS, then compact."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from catalog import load_catalog
    from catalog.compact import compact

    catalog = load_catalog(catalog_uri)
    rng = np.random.default_rng(seed)
    names = pa.array([f"subject-{i:04d}" for i in range(subjects)])
    words = pa.array([_WORDS[i % len(_WORDS)] for i in range(subjects)])
    started = time.perf_counter()
    for start in range(0, items, COMMIT_ROWS):
        n = min(COMMIT_ROWS, items - start)
        positions = np.arange(start, start + n)
        combination = positions // SEEDS
        k = np.where(combination % 2 == 0, KS[0], KS[1])  # the combination's size, the same for its seeds
        offsets = np.concatenate([[0], np.cumsum(k)]).astype(np.int32)
        # a combination's subjects: the k-subset of rank (index · a prime) mod C(subjects, k), unranked in the
        # combinatorial number system, so no two combinations of a k share their subjects (a sampled grid's do not)
        picks = np.empty(offsets[-1], dtype=np.int64)
        row = np.repeat(np.arange(n), k)
        for size in KS:
            rows = np.flatnonzero(k == size)
            ranks = (combination[rows] * 2_654_435_761) % math.comb(subjects, size)
            members = _unrank(ranks, subjects, size)  # [rows, size]
            picks[(offsets[rows][:, None] + np.arange(size)).ravel()] = members.ravel()
        del row
        subject_lists = pa.ListArray.from_arrays(pa.array(offsets), names.take(pa.array(picks)))
        prompts = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), words.take(pa.array(picks))), " and ")
        ids = _hex_ids(rng, n)
        uris = pc.binary_join_element_wise("file:///catalog/blobs/", pc.utf8_slice_codeunits(ids, 0, 2), "/", ids, ids, ".png", "")
        catalog.commit("generations", pa.table({
            "id": ids, "subjects": subject_lists, "prompt": prompts, "seed": pa.array(positions % SEEDS),
            "image_uri": uris, "model_fingerprint": pa.repeat(pa.scalar("bench-select-model"), n),
            "mask_ids": pa.ListArray.from_arrays(pa.array(offsets), pc.binary_join_element_wise("mask-", names.take(pa.array(picks)), "")),
            "params": pa.repeat(pa.scalar('{"steps":25}'), n),
        }))
        catalog.write_grid_items(GRID, start=start, generations=ids)
        done = max(0, min(n, scored - start))
        if done:
            first = ids.slice(0, done)
            catalog.commit("clip_scores", pa.table({
                "generation": pa.concat_arrays([first, first]),
                "metric": pa.concat_arrays([pa.repeat(pa.scalar("presence"), done), pa.repeat(pa.scalar("all_present"), done)]),
                "target": pa.concat_arrays([pa.repeat(pa.scalar("subject-0000"), done), pa.repeat(pa.scalar("all"), done)]),
                "value": pa.array(rng.random(2 * done)), "scorer": pa.repeat(pa.scalar("toy-judge"), 2 * done),
            }))
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    compact(catalog, tables=["generations", "grid_items", "clip_scores"], grace_s=0.0)
    return {"write_s": round(write_s, 1), "compact_s": round(time.perf_counter() - started, 1)}


def _unrank(ranks, n: int, k: int):
    """The k-subsets of range(n) with these ranks in the combinatorial number system, [len(ranks), k], vectorised."""
    import numpy as np

    out = np.empty((len(ranks), k), dtype=np.int64)
    rest = ranks.astype(np.int64).copy()
    for j in range(k, 0, -1):
        table = np.array([math.comb(x, j) for x in range(n)], dtype=np.int64)  # C(x, j), increasing in x
        x = np.searchsorted(table, rest, side="right") - 1
        out[:, k - j] = x
        rest -= table[x]
    return out


def _measured(fn) -> tuple[object, dict]:
    exact = _reset_peak()
    before = _rss_mb() if exact else None
    started = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - started
    peak = _peak_mb()
    return out, {"peak_mb": round(peak - before, 1) if before is not None else None, "process_peak_mb": round(peak, 1),
                 "seconds": round(seconds, 2)}


def run_select_bench(*, workdir: Path, items: int, subjects: int, scored: int, task_batch: int) -> dict:
    import multiprocessing

    from catalog import load_catalog
    from flows.score_generations import SELECT_POSITIONS, rank_grid, score_batches

    uri = str(workdir / "catalog")
    # Seeded in a child process, so that what seeding leaves in this process's allocators hides no peak.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        seeded = pool.apply(_seed, (uri,), {"items": items, "subjects": subjects, "scored": scored})
    catalog = load_catalog(uri)
    baseline = _rss_mb()

    def select_for_scoring() -> dict:
        tally, batches, largest = [0, 0], 0, 0
        for batch in score_batches(catalog, GRID, scorer="toy-judge", size=task_batch, tally=tally):
            batches, largest = batches + 1, max(largest, len(batch))
        return {"batches": batches, "largest_batch": largest, "in_grid": tally[0], "to_score": tally[1]}

    score, score_cost = _measured(select_for_scoring)
    def select_for_report() -> dict:
        best, tally = rank_grid(catalog, GRID, top=200)  # the report's default report_top
        return {"combinations": tally.combinations, "generations": tally.generations, "kept": len(best)}

    report, report_cost = _measured(select_for_report)
    if score["in_grid"] != items or score["to_score"] != items - scored:
        raise RuntimeError(f"selected {score}; the grid has {items} items, {scored} scored")
    return {
        "items": items,
        "scored": scored,
        "peak_mb": max(score_cost["peak_mb"] or 0, report_cost["peak_mb"] or 0) if baseline is not None else None,
        "baseline_mb": round(baseline, 1) if baseline is not None else None,
        "score": {**score, **score_cost, "positions_per_query": max(task_batch, SELECT_POSITIONS // task_batch * task_batch)},
        "report": {**report, **report_cost},
        "subjects": subjects,
        "task_batch": task_batch,
        "catalog": seeded,
    }


@app.command("select")
def select(
    items: Annotated[int, typer.Option(min=SEEDS, help="Items in the run's grid (combinations × 4 seeds).")] = 10_000_000,
    scored: Annotated[int, typer.Option(min=0, help="Of them, this many already scored (the rest are to score).")] = 5_000_000,
    subjects: Annotated[int, typer.Option(min=4, help="Subjects the combinations are drawn from.")] = 1_000,
    task_batch: Annotated[int, typer.Option(min=1, help="Generations per scoring task (scoring.task_batch).")] = 256,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Seed a catalog with a 10 M-item run; measure what scoring and the report hold to select its generations."""
    if scored > items:
        raise typer.BadParameter("--scored cannot exceed --items", param_hint="--scored")
    with tempfile.TemporaryDirectory(prefix="cones-select-") as tmp:
        result = run_select_bench(workdir=Path(tmp), items=items, subjects=subjects, scored=scored, task_batch=task_batch)
    emit(result, as_json=as_json, title="bench select")
