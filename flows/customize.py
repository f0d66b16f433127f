"""`customize`: the parent flow — ingest → discover → generate → score → report (docs/pipeline.md).

Each step is a child flow run (visible on its own in Prefect) reading and writing the catalog,
so a rerun after a crash skips every step's finished work. A subject that fails to ingest is
reported and dropped; the run goes on with the others.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from catalog import load_catalog
from catalog.pipeline import list_generations, mean_scores
from cones_tasks import generation_scores as gs
from cones_tasks.config import CustomizeConfig
from cones_tasks.report import ReportEntry, render_report
from flows._runtime import TASK_OPTIONS
from flows.discover_concepts import discover_concepts
from flows.generate_combinations import generate_combinations
from flows.ingest_subjects import ingest_subjects
from flows.score_generations import publish_leaderboard, score_generations


@task(name="write-report", **TASK_OPTIONS)
def write_report(catalog_uri: str, generation_ids: list[str], summary: dict[str, Any], top: int | None) -> str:
    """Render the HTML report of these generations and store it in the catalog; returns its URI.

    Images are read only for the `top` best combinations (combination_scores ranks best first)."""
    catalog = load_catalog(catalog_uri)
    rows = list_generations(catalog, generation_ids)
    combos = gs.combination_scores(rows, mean_scores(catalog, generation_ids))
    shown = len(combos) if top is None else top
    entries = [
        ReportEntry(
            combination_key=c.key,
            subjects=c.subjects,
            prompt=c.prompt,
            images=tuple((seed, catalog.get_bytes(uri)) for seed, _, uri in c.generations) if rank < shown else (),
            scores=c.scores,
        )
        for rank, c in enumerate(combos)
    ]
    html = render_report(entries, title="Cones customization run", summary={**summary, "combinations": len(entries)},
                         max_shown=top)
    return catalog.put_bytes(html.encode("utf-8"), suffix=".html")


@flow(name="customize")
def customize(config: CustomizeConfig) -> dict[str, Any]:
    started = time.perf_counter()
    ingested = ingest_subjects(config.ingest_config())
    subjects = ingested["ingested"]
    masks = discover_concepts(config.discover_config(subjects))
    generated = generate_combinations(config.generate_config(subjects))
    generation_ids = generated["generations"]
    score_config = config.score_config(generation_ids)
    if score_config is not None:
        score_generations(score_config)
    else:
        publish_leaderboard(load_catalog(config.catalog), tuple(generation_ids))
    result: dict[str, Any] = {
        "subjects": subjects,
        "failed_subjects": ingested["failed"],
        "masks": masks,
        "generations": len(generation_ids),
        "new_generations": generated["new"],
        "report_uri": None,
    }
    if config.report:
        summary = {
            "subjects": ", ".join(subjects),
            "failed subjects": ", ".join(ingested["failed"]) or "none",
            "generations": len(generation_ids),
            "generated in this run": generated["new"],
            "model": config.model.path,
            "composition": config.grid.composition,
            "discovery": ", ".join(f"{k}={v}" for k, v in config.discovery.model_dump().items()),
            "wall time before report (s)": round(time.perf_counter() - started, 1),
        }
        result["report_uri"] = write_report(config.catalog, generation_ids, summary, config.report_top)
    create_markdown_artifact(
        key="customize-summary",
        markdown=(
            f"# Customization run\n\n- subjects: {', '.join(subjects)}\n- failed: {ingested['failed'] or 'none'}\n"
            f"- generations: {len(generation_ids)} ({generated['new']} new), composition {config.grid.composition}\n"
            f"- report: {result['report_uri']}\n"
        ),
        description="customize",
    )
    return result
