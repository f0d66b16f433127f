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
from catalog.pipeline import GenerationRow, generations_without_scores, list_generations, mean_scores, subject_image_uris
from cones_tasks import generation_scores as gs
from cones_tasks.combinations import batched, batched_by_position
from cones_tasks.config import ClipRef, ScoreConfig
from cones_tasks.ingest import decode_rgb
from cones_tasks.toyworld.presence import toy_presence
from flows._runtime import TASK_OPTIONS, clip_session, ensure_concurrency_limit, fan_out

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


@flow(name="score-generations")
def score_generations(config: ScoreConfig) -> dict[str, Any]:
    ensure_concurrency_limit()
    catalog = load_catalog(config.catalog)
    scoring = config.scoring
    scorers = ([clip_scorer_name(scoring.clip)] if scoring.clip else []) + ([JUDGE] if scoring.judge else [])
    calls = []
    logger = get_run_logger()
    for scorer in scorers:
        todo = generations_without_scores(catalog, scorer=scorer, ids=config.generations)
        if config.generations is not None:
            logger.info(
                "score-generations: %s: %d of %d generations already scored (skipped), %d to score", scorer,
                len(config.generations) - len(todo), len(config.generations), len(todo),
            )
        else:
            logger.info("score-generations: %s: %d generations to score", scorer, len(todo))
        calls += [
            {"catalog_uri": config.catalog, "rows": batch, "scorer": scorer, "clip": scoring.clip, "batch_size": scoring.batch_size}
            for batch in score_batches(todo, config.generations, scoring.task_batch)
        ]
    scored = fan_out(score_batch, calls, runner=config.runner, label="score-generations")
    leaderboard = publish_leaderboard(catalog, config.generations)
    return {"scored": sum(scored), "leaderboard": leaderboard}


def score_batches(todo: list[GenerationRow], grid: tuple[str, ...] | None, size: int) -> Iterator[list[GenerationRow]]:
    """Batches cut at fixed positions of the run's grid, so that two overlapping runs of one grid
    (or a rerun) that score the same generations commit identical files instead of doubled rows."""
    if grid is None:
        return batched(todo, size)
    wanted = {r.id for r in todo}  # a grid can be millions of ids: index only the ones to score
    position = {gid: i for i, gid in enumerate(grid) if gid in wanted}
    return batched_by_position(todo, [position[r.id] for r in todo], size)


def publish_leaderboard(catalog, ids: tuple[str, ...] | None, *, top: int = 50) -> list[dict[str, Any]]:
    """A table artifact of combinations (subjects + prompt, mean over seeds) ranked by score, and a summary."""
    rows = list_generations(catalog, ids)
    board = gs.leaderboard_rows(gs.combination_scores(rows, mean_scores(catalog, [r.id for r in rows])))
    if board:
        create_table_artifact(key="leaderboard", table=board[:top], description="combinations ranked by score (mean over seeds)")
        best = board[0]
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in best.items() if isinstance(v, float))
        create_markdown_artifact(
            key="score-summary",
            markdown=f"# Scores\n\n{len(rows)} generations in {len(board)} combinations. "
            f"Best: **{best['subjects']}**, “{best['prompt']}” ({metrics}).",
        )
    return board
