"""`cones bench commits`: the catalog under a long generation run (docs/scale.md).

A catalog whose `generations` hold `base` rows, compacted (as `cones bench plan` leaves it), then
`commits` commits of `batch` rows each, as generate-batch tasks make them (the real
`write_generations`, its subject and mask checks included). Measured as the tail of
uncompacted commits grows: seconds per commit, the planner's join of a 131,072-id chunk,
a deduplicating aggregate over the whole table, and in the end the compaction of it all.
Sizes: bytes per row of the compacted table.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from cones_cli.output import emit

app = typer.Typer(add_completion=False)  # added to `cones bench` by cones_cli/bench.py


def _subjects_and_masks(catalog, n: int) -> tuple[list[str], list[str], str]:
    """n subjects with masks on a synthetic 1,000-neuron space (enough for write_generations' checks)."""
    import numpy as np

    from catalog import NewMask
    from catalog.records import content_key

    class Space:  # SpaceLike: what write_model needs
        fingerprint = content_key("bench-commits-model")
        layout_hash = content_key("layout")
        size = 1000
        entries = (("layer.to_k.weight", (10, 100), 0, 1000),)

    class Mask:  # MaskLike
        space_fingerprint = Space.fingerprint
        size = 1000
        indices = np.arange(10, dtype=np.int64)

    catalog.write_model(Space(), source="synthetic")
    ids = [f"subject-{i:04d}" for i in range(n)]
    for s in ids:
        catalog.write_subject(s, class_word="dog")
    mask_ids = catalog.write_masks([NewMask(subject=s, mask=Mask(), params={"bench": 1}) for s in ids])
    return ids, mask_ids, Space.fingerprint


def run_commits_bench(*, workdir: Path, base: int, commits: int, batch: int, probes: int) -> dict:
    import numpy as np
    import pyarrow as pa

    from catalog import Generation, load_catalog
    from catalog.compact import compact
    from catalog.pipeline import generations_present
    from cones_cli.bench_plan import bench_config, seed_catalog

    uri = str(workdir / "catalog")
    catalog = load_catalog(uri)
    subjects, mask_ids, fingerprint = _subjects_and_masks(catalog, 50)
    seeded = {"rows": 0}
    if base:
        config, resolved = bench_config(uri, subjects=1000, items=max(base, 8))
        seeded = seed_catalog(config, resolved, present=base)
    base_bytes = sum(catalog.store.fs.size(p) for p in catalog.store.snapshot("generations").all)
    rng = np.random.default_rng(0)
    probe_ids = pa.array([f"{i:032x}" for i in range(131_072)])

    def probe() -> dict:
        started = time.perf_counter()
        generations_present(catalog, probe_ids)
        join_s = time.perf_counter() - started
        started = time.perf_counter()
        catalog.query("SELECT count(*) AS n, count(DISTINCT seed) FROM generations")
        return {"join_s": round(join_s, 3), "aggregate_s": round(time.perf_counter() - started, 3)}

    curve, commit_s, done = [], [], 0
    marks = {round(commits * (i + 1) / probes) for i in range(probes)}
    curve.append({"tail_files": 0, **probe()})
    for c in range(1, commits + 1):
        rows = []
        for j in range(batch):
            pick = sorted(rng.choice(len(subjects), size=2, replace=False))
            rows.append(Generation(
                subjects=tuple(subjects[p] for p in pick), prompt=f"a dog and a dog {c}-{j}", seed=j,
                image_uri=f"file:///bench/{c}-{j}.png", model_fingerprint=fingerprint,
                mask_ids=tuple(mask_ids[p] for p in pick), params={"steps": 25},
            ))
        started = time.perf_counter()
        catalog.write_generations(rows)
        commit_s.append(time.perf_counter() - started)
        done += batch
        if c in marks:
            window = commit_s[-max(1, commits // probes):]
            curve.append({"tail_files": c, "commit_s": round(sum(window) / len(window), 4), **probe()})
    started = time.perf_counter()
    compacted = compact(catalog, tables=["generations"], grace_s=0.0)[0]
    compact_s = time.perf_counter() - started
    after = {"tail_files": 0, **probe()}
    files = catalog.store.snapshot("generations").all
    total_bytes = sum(catalog.store.fs.size(p) for p in files)
    return {
        "base_rows": seeded["rows"],
        "commits": commits,
        "batch": batch,
        "commits_per_s": round(commits / sum(commit_s), 1),
        "curve": curve,
        "compact_rows": compacted.rows,
        "compact_files_before": compacted.files_before,
        "compact_s": round(compact_s, 2),
        "after_compaction": after,
        "bytes_per_row": round(total_bytes / max(1, compacted.rows), 1),
        "base_bytes_per_row": round(base_bytes / max(1, seeded["rows"]), 1) if seeded["rows"] else None,
    }


@app.command("commits")
def commits(
    base: Annotated[int, typer.Option(min=0, help="Rows in the compacted generations table to start from.")] = 1_000_000,
    commits: Annotated[int, typer.Option(min=1, help="Commits of `batch` rows after it (one per generate-batch task).")] = 2_000,
    batch: Annotated[int, typer.Option(min=1, help="Rows per commit (grid.task_batch).")] = 64,
    probes: Annotated[int, typer.Option(min=1, help="Points on the curve.")] = 4,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Commit rate, planner join and aggregate time as uncompacted commits pile up, then compaction time."""
    with tempfile.TemporaryDirectory(prefix="cones-commits-") as tmp:
        result = run_commits_bench(workdir=Path(tmp), base=base, commits=commits, batch=batch, probes=probes)
    emit(result, as_json=as_json, title="bench commits")
