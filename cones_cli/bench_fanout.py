"""`cones bench fanout`: Prefect's orchestration overhead at ≥ 10,000 combinations (target: overhead ≤ 5 % of the run).

The same generation work is run twice, side by side, on a small random UNet (8 px, the toy
world's text encoder) with random 1 % concept masks — small so that 10,000 images fit in
minutes on 2 cores; the larger the per-image work, the smaller the overhead fraction:

- compute_s: the `generate-combinations` steps called as plain functions (`task.fn`), no
  Prefect at all, the batches on a plain thread pool as wide as the flow's (`runner.workers`),
  so both sides overlap one batch's catalog writes with another's sampling alike.
- wall_s: the `generate-combinations` flow on a Prefect API (threads runner), batches fanned out
  as tasks, gpu limit, progress artifact, catalog commits.

overhead_fraction = (wall_s − compute_s) / wall_s of each pair, the median of ≥ 5 pairs reported
with its spread (min, quartiles, max of the pairs). Pairs are interleaved: the plain run goes
first in even pairs and second in odd ones, so a machine that speeds up or slows down during a
pair (a shared machine, a warming cache) favours neither side. Each run writes its own fresh
catalog, and the two must end with the same images (content hashes), so the comparison is of
identical work. The API server's start-up is not timed: it runs once per deployment, not once
per fan-out.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer

from cones_cli.output import emit

app = typer.Typer(add_completion=False)  # added to `cones bench` by cones_cli/bench.py

TEMPLATES = ("{subjects}", "{subjects} on night")
SEEDS = (0, 1, 2, 3)


def _subjects_for(target: int, *, max_k: int) -> int:
    n = max_k
    while sum(math.comb(n, k) for k in range(1, max_k + 1)) * len(TEMPLATES) * len(SEEDS) < target:
        n += 1
    return n


def _prepare(root: Path, model_dir: Path, n_subjects: int, name: str, *, steps: int):
    """A catalog with n subjects, the model and one random 1 % mask per subject; returns its GenerateConfig."""
    import numpy as np

    from catalog import load_catalog
    from cones_tasks.config import FitObjective, GenerateConfig, mask_params
    from cones_tasks.loading import load_diffusion_model
    from cones_tasks.neurons.masks import ConceptMask
    from cones_tasks.neurons.space import NeuronSpace

    catalog = load_catalog(str(root / name))
    space = NeuronSpace.from_unet(load_diffusion_model(model_dir).unet)
    catalog.write_model(space, source=str(model_dir))
    rng = np.random.default_rng(0)
    shapes = ("circle", "square", "triangle")
    ids = [f"bench-{i:03d}" for i in range(n_subjects)]
    for i, subject in enumerate(ids):
        catalog.write_subject(subject, class_word=shapes[i % 3])
        indices = rng.choice(space.size, size=max(1, space.size // 100), replace=False)
        catalog.write_mask(subject=subject, mask=ConceptMask.from_indices(space, indices), params=mask_params(FitObjective(), seed=0))
    return GenerateConfig.model_validate(
        {
            "catalog": str(root / name),
            "model": {"path": str(model_dir)},
            "subjects": ids,
            "grid": {"max_k": 3, "templates": list(TEMPLATES), "seeds": list(SEEDS), "steps": steps,
                     "sample_batch": 256, "task_batch": 1024},
            "runner": {"kind": "threads", "workers": 2},
        }
    )


def _image_names(uri: str) -> set[str]:
    from catalog import load_catalog

    return {r["image_uri"].rsplit("/", 1)[-1] for r in load_catalog(uri).query("SELECT image_uri FROM generations").to_pylist()}


def _write_bench_model(out: Path) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    from cones_tasks.toyworld.architecture import (
        TEXT_WIDTH,
        build_scheduler,
        build_text_encoder,
    )
    from cones_tasks.toyworld.train_model import write_pipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=4,
    )
    write_pipeline(out, unet, build_text_encoder(seed=0), build_scheduler())


def run_fanout_bench(*, combinations: int, workdir: Path, steps: int = 8, repeats: int = 5) -> dict:
    """`repeats` plain/flow pairs on fresh catalogs, interleaved; report the median pair and the spread.

    Each pair's overhead fraction compares two runs seconds apart, so slow drifts in the load of a
    shared machine move both sides alike, and the order alternates from pair to pair; the median
    of the pairs is the figure, min–quartiles–max its spread.
    """
    from flows._runtime import model_session

    model_dir = workdir / "model"
    _write_bench_model(model_dir)
    n_subjects = _subjects_for(combinations, max_k=3)
    plain_s, flow_s = [], []
    for r in range(repeats):
        plain = _prepare(workdir, model_dir, n_subjects, f"catalog-plain-{r}", steps=steps)
        orchestrated = _prepare(workdir, model_dir, n_subjects, f"catalog-prefect-{r}", steps=steps)
        with model_session(plain.model):  # load once: every run reuses the process's model cache
            pass
        order = ("plain", "flow") if r % 2 == 0 else ("flow", "plain")
        for side in order:
            if side == "plain":
                seconds, n_items = _without_prefect(plain)
                plain_s.append(seconds)
            else:
                seconds, new = _with_prefect(orchestrated)
                flow_s.append(seconds)
        same = _image_names(plain.catalog) == _image_names(orchestrated.catalog)
        if new != n_items or not same:
            raise RuntimeError(f"the two runs differ: the flow wrote {new} of {n_items} images; same images: {same}")
    fractions = [(w - c) / w for w, c in zip(flow_s, plain_s)]
    return {
        "combinations": n_items,
        "subjects": n_subjects,
        "steps": steps,
        "task_batch": orchestrated.grid.task_batch,
        "tasks": math.ceil(n_items / orchestrated.grid.task_batch),
        "repeats": repeats,
        "wall_s": round(statistics.median(flow_s), 2),
        "compute_s": round(statistics.median(plain_s), 2),
        "overhead_fraction": round(statistics.median(fractions), 4),
        "overhead_fraction_spread": [round(min(fractions), 4), round(max(fractions), 4)],
        "overhead_fraction_quartiles": [round(q, 4) for q in statistics.quantiles(fractions, n=4)],
        "pair_fractions": [round(f, 4) for f in fractions],
        "pair_order": ["plain first" if r % 2 == 0 else "flow first" for r in range(repeats)],
        "overhead_s": round(statistics.median(w - c for w, c in zip(flow_s, plain_s)), 2),
        "runs_wall_s": [round(x, 2) for x in flow_s],
        "runs_compute_s": [round(x, 2) for x in plain_s],
    }


def _without_prefect(config) -> tuple[float, int]:
    from catalog.planning import PlanTally, plan_chunks, task_batches
    from flows.generate_combinations import generate_batch, resolve_masks

    started = time.perf_counter()
    tally = PlanTally()

    def generate(rows) -> int:  # the flow's generate-batch task, called as a plain function
        return generate_batch.fn(config.catalog, config.model, rows, config.grid, config.discovery.attention)

    with ThreadPoolExecutor(max_workers=config.runner.workers) as pool:
        resolved = pool.submit(resolve_masks.fn, config.catalog, config.model, config.subjects, config.discovery, config.discovery_seed).result()
        written = sum(pool.map(generate, task_batches(config.grid, plan_chunks(config, resolved, tally=tally, keep_ids=False))))
    seconds = time.perf_counter() - started
    if written != tally.items:
        raise RuntimeError(f"plain run wrote {written} of {tally.items} images")
    return seconds, tally.items


def _with_prefect(config) -> tuple[float, int]:
    from flows.generate_combinations import generate_combinations

    started = time.perf_counter()
    result = generate_combinations(config)
    return time.perf_counter() - started, result["new"]


@app.command("fanout")
def fanout(
    combinations: Annotated[int, typer.Option(min=1, help="At least this many combinations (subject subsets × prompts × seeds).")] = 10_000,
    steps: Annotated[int, typer.Option(min=1, help="Denoising steps per image (the work per combination).")] = 8,
    repeats: Annotated[int, typer.Option(min=5, help="Plain/flow pairs, interleaved; the median pair's overhead is reported, with the spread.")] = 5,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Orchestration overhead of generate-combinations: the flow vs the same work as plain calls."""
    import os

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no telemetry calls
    # Set before torch loads OpenMP. On a shared 2-core machine, OpenMP's default spin-waiting
    # tripled the CPU time of the same torch work from the main thread (measured); passive waits
    # make the timings about the work, not about which thread happened to call it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with tempfile.TemporaryDirectory(prefix="cones-fanout-") as tmp:
        if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
            result = run_fanout_bench(combinations=combinations, workdir=Path(tmp), steps=steps, repeats=repeats)
        else:
            with prefect_test_harness(server_startup_timeout=120):  # a throwaway local API, started before timing
                result = run_fanout_bench(combinations=combinations, workdir=Path(tmp), steps=steps, repeats=repeats)
    emit(result, as_json=as_json, title="bench fanout")
