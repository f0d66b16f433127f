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
from catalog.pipeline import grid_combination_generations, grid_subjects, subject_image_captions, subject_image_uris
from cones_tasks.config import CustomizeConfig
from cones_tasks.report import REFERENCES_SHOWN, ReferencePhoto, ReportEntry, render_report
from flows._runtime import TASK_OPTIONS
from flows.discover_concepts import discover_concepts
from flows.generate_combinations import generate_combinations
from flows.ingest_subjects import ingest_subjects
from flows.score_generations import publish_leaderboard, rank_grid, score_generations


@task(name="write-report", **TASK_OPTIONS)
def write_report(
    catalog_uri: str,
    grid: str,
    summary: dict[str, Any],
    top: int | None,
    settings: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Render the HTML report of the grid's generations and store it in the catalog; returns its URI.

    The catalog aggregates the grid's scores per combination, a range at a time (rank_grid); the best
    `top` are kept, their images looked up and read, and each subject's first reference photos for
    the top of the page."""
    catalog = load_catalog(catalog_uri)
    best, tally = rank_grid(catalog, grid, top=top)  # the best `top`, and every combination's scores for the plots
    generations = grid_combination_generations(catalog, grid, [(c.subjects, c.prompt) for c in best])
    entries = [
        ReportEntry(
            combination_key=c.key,
            subjects=c.subjects,
            prompt=c.prompt,
            images=tuple((seed, catalog.get_bytes(uri)) for seed, _, uri in generations.get((c.subjects, c.prompt), ())),
            scores=c.scores,
        )
        for c in best
    ]
    subjects = grid_subjects(catalog, grid)
    html = render_report(entries, title="Cones customization run", summary={**summary, "combinations": tally.combinations},
                         max_shown=top, settings=settings, references=_reference_photos(catalog, subjects), tally=tally)
    return catalog.put_bytes(html.encode("utf-8"), suffix=".html")


def _reference_photos(catalog, subjects: list[str]) -> dict[str, list[ReferencePhoto]]:
    """Each subject's photos as handed in: those of it alone first, then the captioned scene photos;
    only the first REFERENCES_SHOWN of each are read from the store."""
    out = {}
    for subject in subjects:
        captions = subject_image_captions(catalog, subject)
        uris = sorted(subject_image_uris(catalog, subject), key=lambda u: u in captions)  # stable: alone first
        out[subject] = [
            ReferencePhoto(catalog.get_bytes(u) if i < REFERENCES_SHOWN else None, captions.get(u))
            for i, u in enumerate(uris)
        ]
    return out


def run_settings(config: CustomizeConfig) -> dict[str, dict[str, Any]]:
    """What the report shows of how the images were made: composition, discovery and generation settings."""
    grid = config.grid
    return {
        "composition": {"strategy": grid.composition, "what it does": COMPOSITION_MEANING[grid.composition]},
        "discovery": {**config.discovery.model_dump(), "seed": config.seed},
        "generation": {
            "subjects per combination": f"1–{grid.max_k}",
            "prompts": " | ".join(grid.templates),
            "seeds": ", ".join(map(str, grid.seeds)),
            "steps": grid.steps,
            "guidance scale": grid.guidance_scale,
        },
    }


# docs/composition.md
COMPOSITION_MEANING = {
    "token": "each subject's concept neurons shut only at its own class word in the prompt",
    "union": "the union of the subjects' concept neurons shut at every prompt token (Cones §3.3)",
}


@flow(name="customize")
def customize(config: CustomizeConfig) -> dict[str, Any]:
    started = time.perf_counter()
    ingested = ingest_subjects(config.ingest_config())
    subjects = ingested["ingested"]
    masks = discover_concepts(config.discover_config(subjects))
    generated = generate_combinations(config.generate_config(subjects))
    # Scoring and the report select the grid's generations in the catalog by its id: no list of ids is
    # carried from step to step (docs/scale.md, "Selecting a run's grid").
    grid = generated["grid"]
    score_config = config.score_config(grid)
    if score_config is not None:
        score_generations(score_config)
    else:
        publish_leaderboard(load_catalog(config.catalog), grid)
    result: dict[str, Any] = {
        "subjects": subjects,
        "failed_subjects": ingested["failed"],
        "masks": masks,
        "grid": grid,
        "generations": generated["generations"],
        "new_generations": generated["new"],
        "report_uri": None,
    }
    if config.report:
        summary = {
            "subjects": ", ".join(subjects),
            "failed subjects": ", ".join(ingested["failed"]) or "none",
            "generations": generated["generations"],
            "generated in this run": generated["new"],
            "model": config.model.path,
            "wall time before report (s)": round(time.perf_counter() - started, 1),
        }
        result["report_uri"] = write_report(config.catalog, grid, summary, config.report_top, run_settings(config))
    create_markdown_artifact(
        key="customize-summary",
        markdown=(
            f"# Customization run\n\n- subjects: {', '.join(subjects)}\n- failed: {ingested['failed'] or 'none'}\n"
            f"- generations: {generated['generations']} ({generated['new']} new), composition {config.grid.composition}\n"
            f"- report: {result['report_uri']}\n"
        ),
        description="customize",
    )
    return result
