"""`cones bench plan`: planning a sampled grid of ≥ 10 M items against a catalog that holds 1 M of them.

Targets (docs/scale.md): ≥ 100,000 items/s and ≤ 1,024 MB peak memory on 2 shared cores.
The grid: `subjects` subjects, `{"sample": N, "k": [3, 4]}` × 1 template × 4 seeds, N chosen for
`items` in all. Masks and the model fingerprint are synthetic (planning never opens them);
the catalog's `generations` hold the first `present` planned items, written in commits of
100,000 rows and compacted, as a long run leaves them. Timed: the whole `plan_chunks` pass
the flow makes (subsets, Arrow items, generation ids, one DuckDB join per chunk) — not task
submission, whose cost per batch is `cones bench fanout`'s.

peak_mb is what planning adds to the process's memory: its peak resident size while planning
(Linux VmHWM, reset just before) minus its size when planning began. baseline_mb is that
starting size: the interpreter and the libraries every flow process loads (torch alone, through
the config's discovery parameters, is ~700 MB of it); process_peak_mb is the sum. Elsewhere
than Linux only the lifetime peak is known, reported as process_peak_mb.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from cones_cli.output import emit

app = typer.Typer(add_completion=False)  # added to `cones bench` by cones_cli/bench.py

SEEDS = (0, 1, 2, 3)
KS = (3, 4)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (Documentation/filesystems/proc.rst)
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float | None:
    """A memory line of Linux's /proc/self/status (VmRSS, VmHWM) in MB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mb() -> float | None:
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    if (peak := _status_mb("VmHWM")) is not None:
        return peak
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def bench_config(catalog: str, *, subjects: int, items: int):
    """The benchmark's GenerateConfig and its resolved masks (synthetic fingerprint and mask ids)."""
    from catalog.planning import ResolvedMasks
    from catalog.records import content_key
    from cones_tasks.config import GenerateConfig

    per_k = math.ceil(items / (len(KS) * len(SEEDS)))
    ids = [f"subject-{i:04d}" for i in range(subjects)]
    config = GenerateConfig.model_validate(
        {
            "catalog": catalog,
            "model": {"path": "unused-by-planning"},
            "subjects": ids,
            "grid": {"max_k": max(KS), "seeds": list(SEEDS), "combinations": {"sample": per_k, "k": list(KS), "seed": 0}},
        }
    )
    words = ("dog", "cat", "owl", "teapot", "apple", "circle")
    resolved = ResolvedMasks(
        model_fingerprint=content_key("bench-plan-model"),
        class_words={s: words[i % len(words)] for i, s in enumerate(ids)},
        mask_ids={s: content_key("mask", s) for s in ids},
    )
    return config, resolved


def seed_catalog(config, resolved, *, present: int, commit_rows: int = 100_000) -> dict:
    """Write the first `present` planned items as generations rows, then compact; returns timings."""
    import pyarrow as pa

    from catalog import load_catalog
    from catalog.compact import compact
    from catalog.records import canonical_json
    from catalog.planning import plan_chunks

    catalog = load_catalog(config.catalog)
    params = canonical_json(config.grid.sampler_settings())
    rows, commits, write_s = 0, 0, 0.0
    pending: list[pa.Table] = []
    for chunk in plan_chunks(config, resolved, keep_ids=False):
        chunk = chunk.slice(0, present - rows)
        pending.append(chunk)
        rows += chunk.num_rows
        while sum(t.num_rows for t in pending) >= commit_rows or (rows >= present and pending):
            table = pa.concat_tables(pending)
            batch, rest = table.slice(0, commit_rows), table.slice(commit_rows)
            n = batch.num_rows
            batch = batch.select(["id", "subjects", "prompt", "seed", "mask_ids"]).append_column(
                "image_uri", pa.array([f"memory://bench/{i}.png" for i in range(n)])
            ).append_column("model_fingerprint", pa.array([resolved.model_fingerprint] * n)).append_column(
                "params", pa.array([params] * n)
            )
            started = time.perf_counter()
            catalog.commit("generations", batch)
            write_s += time.perf_counter() - started
            commits += 1
            pending = [rest] if rest.num_rows else []
        if rows >= present:
            break
    started = time.perf_counter()
    compact(catalog, tables=["generations"], grace_s=0.0)
    return {"rows": rows, "commits": commits, "write_rows_per_s": round(rows / write_s), "compact_s": round(time.perf_counter() - started, 2)}


def _seed_in_child(catalog: str, subjects: int, items: int, present: int) -> dict:
    config, resolved = bench_config(catalog, subjects=subjects, items=items)
    return seed_catalog(config, resolved, present=present)


def run_plan_bench(*, workdir: Path, subjects: int, items: int, present: int, chunk_items: int) -> dict:
    import multiprocessing

    from catalog.planning import PlanTally, grid_item_count, plan_chunks

    config, resolved = bench_config(str(workdir / "catalog"), subjects=subjects, items=items)
    # Seeded in a child process: the memory it leaves in this process's allocators would
    # otherwise be reused by planning and hide planning's own peak.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        seeded = pool.apply(_seed_in_child, (str(workdir / "catalog"), subjects, items, present))
    tally = PlanTally()
    exact_peak = _reset_peak()
    baseline = _rss_mb() if exact_peak else None
    started = time.perf_counter()
    todo = sum(chunk.num_rows for chunk in plan_chunks(config, resolved, chunk_items=chunk_items, tally=tally, keep_ids=False))
    seconds = time.perf_counter() - started
    peak = _peak_mb()
    if tally.items != grid_item_count(config, subjects) or todo + tally.skipped != tally.items:
        raise RuntimeError(f"planned {tally.items} items ({todo} to do, {tally.skipped} skipped); the grid has {grid_item_count(config, subjects)}")
    return {
        "items": tally.items,
        "items_per_s": round(tally.items / seconds),
        "peak_mb": round(peak - baseline, 1) if baseline is not None else None,
        "baseline_mb": round(baseline, 1) if baseline is not None else None,
        "process_peak_mb": round(peak, 1),
        "skipped": tally.skipped,
        "to_generate": todo,
        "seconds": round(seconds, 2),
        "subjects": subjects,
        "grid": config.grid.combinations.model_dump() | {"seeds": list(SEEDS), "templates": 1},
        "chunk_items": chunk_items,
        "catalog": seeded,
    }


@app.command("plan")
def plan(
    items: Annotated[int, typer.Option(min=1, help="Grid items to plan (sampled combinations × seeds).")] = 10_000_000,
    present: Annotated[int, typer.Option(min=0, help="Of them, this many already in the catalog.")] = 1_000_000,
    subjects: Annotated[int, typer.Option(min=4, help="Subjects the combinations are drawn from.")] = 1_000,
    chunk_items: Annotated[int, typer.Option(min=0, help="Items per planned chunk (0: the flow's default).")] = 0,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Plan a sampled grid of ≥ 10 M items against a catalog already holding 1 M: items/s, peak memory, skipped."""
    from catalog.planning import PLAN_CHUNK_ITEMS

    with tempfile.TemporaryDirectory(prefix="cones-plan-") as tmp:
        result = run_plan_bench(workdir=Path(tmp), subjects=subjects, items=items, present=present,
                                chunk_items=chunk_items or PLAN_CHUNK_ITEMS)
    emit(result, as_json=as_json, title="bench plan")
