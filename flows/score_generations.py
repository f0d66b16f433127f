"""`score-generations`: open_clip image/text alignment and, on the toy world, the judge's presence.

Each scorer scores only generations it has not scored yet (the catalog says which), in batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from catalog import ClipScore, load_catalog
from catalog.pipeline import (
    GenerationRow,
    generations_without_scores,
    grid_combination_ranges,
    grid_rows_to_score,
    grid_size,
    list_generations,
    mean_scores,
    subject_image_uris,
)
from cones_tasks import generation_scores as gs
from cones_tasks.combinations import batched, batched_by_position
from cones_tasks.config import ClipRef, ScoreConfig
from cones_tasks.ingest import decode_rgb
from cones_tasks.report import ScoreTally
from cones_tasks.toyworld.presence import toy_presence
from flows._runtime import TASK_OPTIONS, clip_session, ensure_concurrency_limit, fan_out_stream

JUDGE = "toy-judge"


def clip_scorer_name(clip: ClipRef) -> str:
    return f"open_clip/{clip.model_name}/{os.path.basename(clip.weights_path)}"


@task(name="score-batch", **TASK_OPTIONS)
def score_batch(catalog_uri: str, rows: list[GenerationRow], scorer: str, clip: ClipRef | None, batch_size: int) -> int:
    catalog = load_catalog(catalog_uri)
    images = np.stack([decode_rgb(catalog.get_bytes(r.image_uri)) for r in rows])  # [N, H, W, 3]
    scores: list[ClipScore] = []
    if scorer == JUDGE:
        for row, present in zip(rows, toy_presence(images, [r.subjects for r in rows])):
            scores += [ClipScore(row.id, gs.PRESENCE, s, v, JUDGE) for s, v in present.items()]
            scores.append(ClipScore(row.id, gs.ALL_PRESENT, "+".join(row.subjects), gs.all_present(present), JUDGE))
    else:
        assert clip is not None
        references = {  # subject → its reference images [M, H, W, 3]
            s: np.stack([decode_rgb(catalog.get_bytes(u)) for u in subject_image_uris(catalog, s)])
            for s in sorted({s for r in rows for s in r.subjects})
        }
        with clip_session(clip) as model:
            embedded = np.asarray(model.embed_images(images, batch_size=batch_size))  # [N, D], normalised
            texts = np.asarray(model.embed_texts([r.prompt for r in rows]))
            refs = {s: np.asarray(model.embed_images(im, batch_size=batch_size)) for s, im in references.items()}
        text = gs.text_alignment(embedded, texts)
        for i, row in enumerate(rows):
            scores.append(ClipScore(row.id, gs.TEXT_ALIGNMENT, row.prompt, float(text[i]), scorer))
            for s in row.subjects:
                value = float(gs.image_alignment(embedded[i : i + 1], refs[s])[0])
                scores.append(ClipScore(row.id, gs.IMAGE_ALIGNMENT, s, value, scorer))
    catalog.write_clip_scores(scores)
    return len(rows)


# Positions of a grid selected at once, one DuckDB query each (docs/scale.md, "Selecting a run's grid"):
# at 10 M items ranges of 262,144 held 892 MB at the peak, 131,072 held 486 MB (`cones bench select`).
SELECT_POSITIONS = 1 << 17


@flow(name="score-generations")
def score_generations(config: ScoreConfig) -> dict[str, Any]:
    ensure_concurrency_limit()
    catalog = load_catalog(config.catalog)
    scoring = config.scoring
    scorers = ([clip_scorer_name(scoring.clip)] if scoring.clip else []) + ([JUDGE] if scoring.judge else [])
    tally: dict[str, list[int]] = {scorer: [0, 0] for scorer in scorers}  # scorer → [generations seen, to score]
    calls = (
        {"catalog_uri": config.catalog, "rows": batch, "scorer": scorer, "clip": scoring.clip, "batch_size": scoring.batch_size}
        for scorer in scorers
        for batch in score_batches(catalog, config.grid, scorer=scorer, size=scoring.task_batch, tally=tally[scorer])
    )
    scored = fan_out_stream(score_batch, calls, runner=config.runner, label="score-generations")
    logger = get_run_logger()
    for scorer, (seen, todo) in tally.items():
        logger.info("score-generations: %s: %d of %d generations already scored (skipped), %d to score", scorer,
                    seen - todo, seen, todo)
    leaderboard = publish_leaderboard(catalog, config.grid)
    return {"scored": sum(scored), "leaderboard": leaderboard}


def score_batches(catalog, grid: str | None, *, scorer: str, size: int, tally: list[int]) -> Iterator[list[GenerationRow]]:
    """The batches of generations `scorer` has not scored yet, selected from the catalog as they are needed.

    With a grid: a range of SELECT_POSITIONS positions at a time, cut at fixed positions of the grid
    (`position // size`), so that two overlapping runs of one grid (or a rerun) that score the same
    generations commit identical files instead of doubled rows. Without one: every unscored
    generation in the catalog. `tally` counts [generations seen, to score] as the batches go.
    """
    if grid is None:
        todo = generations_without_scores(catalog, scorer=scorer)
        tally[0] += catalog.query("SELECT count(*) AS n FROM generations").column("n")[0].as_py()
        tally[1] += len(todo)
        yield from batched(todo, size)
        return
    step = max(size, SELECT_POSITIONS // size * size)  # a whole number of batches per range
    for start in range(0, grid_size(catalog, grid), step):
        positions, rows, seen = grid_rows_to_score(catalog, grid, scorer=scorer, start=start, stop=start + step)
        tally[0] += seen
        tally[1] += len(rows)
        yield from batched_by_position(rows, positions.tolist(), size)


def publish_leaderboard(catalog, grid: str | None, *, top: int = 50) -> list[dict[str, Any]]:
    """A table artifact of the best `top` combinations (subjects + prompt, mean over seeds), and a summary;
    returns those rows."""
    best, tally = rank_grid(catalog, grid, top=top)
    board = gs.leaderboard_rows(best)
    if board:
        create_table_artifact(key="leaderboard", table=board, description="combinations ranked by score (mean over seeds)")
        top_row = board[0]
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in top_row.items() if isinstance(v, float))
        create_markdown_artifact(
            key="score-summary",
            markdown=f"# Scores\n\n{tally.generations} generations in {tally.combinations} combinations. "
            f"Best: **{top_row['subjects']}**, “{top_row['prompt']}” ({metrics}).",
        )
    return board


def rank_grid(catalog, grid: str | None, *, top: int | None) -> tuple[list[gs.CombinationScores], ScoreTally]:
    """The best `top` combinations of the grid (all when None), ranked, and every combination's scores tallied for
    the plots; without a grid, of every generation in the catalog. No generation ids are looked up.

    A grid is read a range of SELECT_POSITIONS positions at a time, and only the best `top` are kept as they
    go: what this holds is a range, the kept combinations and 8 B a combination and metric (docs/scale.md)."""
    tally = ScoreTally()

    def combinations() -> Iterator[gs.CombinationScores]:
        if grid is None:
            rows = list_generations(catalog)
            ranked: Iterator[gs.CombinationScores] = iter(gs.combination_scores(rows, mean_scores(catalog, [r.id for r in rows])))
        else:
            ranked = (c for table in grid_combination_ranges(catalog, grid, positions=SELECT_POSITIONS)
                      for c in gs.aggregated_combinations(table.to_pylist()))
        for c in ranked:
            tally.add(len(c.subjects), c.scores)
            tally.generations += c.seeds
            yield c

    return gs.best_combinations(combinations(), top), tally
