"""`generate-combinations`: the grid's subject subsets × template × seed, batched (Cones §3.3).

The grid is planned a chunk at a time (docs/scale.md): each chunk's missing items become tasks
while later chunks are still being planned, so a grid of any size runs in bounded memory.

Each combination is generated with its subjects' concept masks composed by the grid's strategy
(cones_tasks.neurons.composition: each mask at its own class word, or the paper's union), per
sample in one batched UNet forward, so a task of many combinations costs about what the same
batch costs unmasked. Tasks take batches of combinations: with
Prefect's ~10–20 ms per task, one task per image would cost more than the image at toy scale.
Generation ids are content keys; the ones already in the catalog are not generated again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from catalog import Generation, generation_ids, load_catalog, shard_of
from catalog.combination_files import combination_rows, count_combination_rows
from catalog.pipeline import class_words, generations_present, stored_mask_ids
from cones_tasks.combinations import batched, grid_items
from cones_tasks.config import (
    DiscoveryParams,
    GenerateConfig,
    GenerationGrid,
    ModelRef,
    mask_params,
)
from cones_tasks.ingest import encode_png
from cones_tasks.neurons.composition import compose
from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.sampling import sample
from cones_tasks.subsets import grid_subset_count, grid_subsets
from flows._runtime import (
    TASK_OPTIONS,
    ensure_concurrency_limit,
    fan_out_stream,
    model_session,
    neuron_space,
)


class MissingMaskError(LookupError):
    """A subject without a concept mask for this model and these discovery parameters."""


@task(name="resolve-masks", **TASK_OPTIONS)
def resolve_masks(
    catalog_uri: str, model_ref: ModelRef, subjects: tuple[str, ...], discovery: DiscoveryParams, seed: int
) -> dict[str, Any]:
    """Model fingerprint, each subject's class word and mask id (or a clear error naming the missing ones)."""
    catalog = load_catalog(catalog_uri)
    fingerprint = neuron_space(model_ref, discovery.attention).fingerprint
    # Two queries for any number of subjects (a 1,000-subject grid made 2,000 before; docs/scale.md), a third
    # only for subjects whose masks predate today's identities
    mask_ids = stored_mask_ids(catalog, subjects, fingerprint, mask_params(discovery, seed=seed))
    missing = sorted(set(subjects) - set(mask_ids))
    if missing:
        raise MissingMaskError(
            f"no concept mask for {missing} on model {fingerprint[:16]}… with these discovery parameters; "
            "run discover-concepts for them first (same model, discovery params and seed)"
        )
    return {
        "model_fingerprint": fingerprint,
        "class_words": class_words(catalog, subjects),
        "mask_ids": {s: mask_ids[s] for s in subjects},
    }


@task(name="generate-batch", **TASK_OPTIONS)
def generate_batch(
    catalog_uri: str, model_ref: ModelRef, items: list[dict[str, Any]], grid: GenerationGrid, attention: str
) -> int:
    """Generate and store one batch of combinations; returns how many images it wrote."""
    catalog = load_catalog(catalog_uri)
    stored = {m.mask_id: m for m in catalog.get_masks(sorted({i for it in items for i in it["mask_ids"]}))}
    subject_masks = {mid: ConceptMask.from_bytes(m.blob, space_fingerprint=m.model_fingerprint) for mid, m in stored.items()}
    images = []
    space = neuron_space(model_ref, attention)
    with model_session(model_ref) as model:  # hold the model (and a gpu slot) only while sampling
        for chunk in batched(items, grid.sample_batch):
            # subjects in prompt order with their class words: token composition finds each one's word by it
            applied = [
                compose(grid.composition, [(subject_masks[mid], word) for mid, word in zip(it["mask_ids"], it["class_words"])])
                for it in chunk
            ]
            images.extend(
                sample(
                    model,
                    [it["prompt"] for it in chunk],
                    seeds=[it["seed"] for it in chunk],
                    steps=grid.steps,
                    guidance_scale=grid.guidance_scale,
                    masks=[mask for mask, _ in applied],
                    word_masks=[words for _, words in applied],
                    space=space,
                )  # uint8 [B, H, W, 3]
            )
    generations = [
        Generation(
            id=it["id"], subjects=tuple(it["subjects"]), prompt=it["prompt"], seed=it["seed"],
            image_uri=catalog.put_bytes(encode_png(image), suffix=".png"),
            model_fingerprint=space.fingerprint, mask_ids=tuple(it["mask_ids"]), params=grid.sampler_settings(),
        )
        for it, image in zip(items, images, strict=True)
    ]
    catalog.write_generations(generations)  # one commit per batch: a crash loses at most this batch
    return len(generations)


@dataclass
class PlanTally:
    """What planning has seen so far: grid items, and those the catalog already held."""

    items: int = 0
    skipped: int = 0
    ids: list[pa.Array] = field(default_factory=list)  # every grid id, 36 B each (docs/scale.md)


# Items per planned chunk: planning holds ~2 KB an item of a chunk at its peak (`cones bench plan`), whatever the grid's size.
PLAN_CHUNK_ITEMS = 131_072
# Column of planned rows: the item's index in the grid (or the shard's share of it), which fixes its batch.
POSITION = "position"


def plan_chunks(
    config: GenerateConfig, resolved: dict[str, Any], *, chunk_items: int = PLAN_CHUNK_ITEMS, tally: PlanTally | None = None,
    keep_ids: bool = True,
) -> Iterator[pa.Table]:
    """The grid's items still missing from the catalog, chunk by chunk (docs/scale.md, "Planning").

    Each chunk: subsets (cones_tasks.subsets) × templates × seeds as Arrow columns, their content-keyed
    generation ids, then one DuckDB join of the chunk's ids against `generations`. Yields the
    rows not yet generated (columns id, subjects, prompt, seed, mask_ids, class_words, and `position`
    in the grid, which fixes the batch each item belongs to).
    """
    grid, tally = config.grid, tally if tally is not None else PlanTally()
    ids = sorted(resolved["class_words"])
    class_words = [resolved["class_words"][s] for s in ids]
    mask_ids = [resolved["mask_ids"][s] for s in ids]
    chunk_rows = max(1, chunk_items // (len(grid.templates) * len(grid.seeds)))
    spec, listed = grid.combinations, None
    if isinstance(spec, str) and spec != "all":
        spec, listed = None, combination_rows(grid.combinations, batch_rows=chunk_rows)
    catalog, params = load_catalog(config.catalog), grid.sampler_settings()
    for subsets in grid_subsets(spec, n=len(ids), ids=ids, max_k=grid.max_k, chunk_rows=chunk_rows, listed_rows=listed):
        items = grid_items(subsets, ids=ids, class_words=class_words, mask_ids=mask_ids, templates=grid.templates, seeds=grid.seeds)
        gids = generation_ids(items, model_fingerprint=resolved["model_fingerprint"], params=params)
        if config.shard is not None:
            mine = pa.array(shard_of(gids, config.shard.count) == config.shard.index)
            items, gids = items.filter(mine), gids.filter(mine)
        done = generations_present(catalog, gids)
        items = items.append_column(POSITION, pa.array(np.arange(tally.items, tally.items + items.num_rows)))
        tally.items += items.num_rows
        tally.skipped += int(done.sum())
        if keep_ids:
            tally.ids.append(gids)
        todo = items.add_column(0, "id", gids).filter(pa.array(~done))
        if todo.num_rows:
            yield todo


def grid_item_count(config: GenerateConfig, n_subjects: int) -> int:
    """Items in the grid (or, for a shard, about its share) before skipping; a file is counted in one pass."""
    spec = config.grid.combinations
    listed = count_combination_rows(spec) if isinstance(spec, str) and spec != "all" else None
    subsets = grid_subset_count(None if listed is not None else spec, n=n_subjects, max_k=config.grid.max_k, listed=listed)
    items = subsets * len(config.grid.templates) * len(config.grid.seeds)
    return items if config.shard is None else math.ceil(items / config.shard.count)  # a shard: about its share


def batch_calls(config: GenerateConfig, chunks: Iterable[pa.Table]) -> Iterator[dict[str, Any]]:
    """Keyword arguments of one `generate-batch` task per `grid.task_batch` positions of the grid.

    Batches are cut at fixed positions of the grid (`position // task_batch`), not of what is
    missing: a commit is named by its rows' keys (docs/catalog.md), so two overlapping runs of one
    grid, or a rerun after a crash, that generate the same slice write the same file instead of
    doubled rows. Batches span chunk boundaries (a chunk ends where a k or a file batch does), so a
    small grid is as few tasks as before streaming, and each task's sample batches stay full.
    """
    size, pending, current = config.grid.task_batch, [], None

    def call(parts: list[pa.Table]) -> dict[str, Any]:
        rows = pa.concat_tables(parts).drop_columns([POSITION])
        return {"catalog_uri": config.catalog, "model_ref": config.model, "grid": config.grid,
                "attention": config.discovery.attention, "items": rows.to_pylist()}

    for chunk in chunks:
        groups = np.asarray(chunk.column(POSITION)) // size  # non-decreasing: positions grow through the grid
        cuts = np.flatnonzero(np.diff(groups)) + 1
        for start, stop in zip([0, *cuts], [*cuts, chunk.num_rows]):
            if current is not None and groups[start] != current:
                yield call(pending)
                pending = []
            current = groups[start]
            pending.append(chunk.slice(start, stop - start))
    if pending:
        yield call(pending)


@flow(name="generate-combinations")
def generate_combinations(config: GenerateConfig) -> dict[str, Any]:
    """Returns the ids of every generation in the grid (new and already present)."""
    ensure_concurrency_limit()
    resolved = resolve_masks(config.catalog, config.model, config.subjects, config.discovery, config.discovery_seed)
    tally = PlanTally()
    most = math.ceil(grid_item_count(config, len(config.subjects)) / config.grid.task_batch)
    calls = batch_calls(config, plan_chunks(config, resolved, tally=tally))
    written = fan_out_stream(generate_batch, calls, runner=config.runner, label="generate-combinations", most_calls=most)
    get_run_logger().info(
        "generate-combinations: %d of %d generations already in the catalog (skipped), %d generated now", tally.skipped,
        tally.items, sum(written),
    )
    summary = (
        f"# Generation\n\n{tally.items} combinations × seeds in the grid; {tally.skipped} already in the catalog, "
        f"{sum(written)} generated now in {len(written)} batches of ≤ {config.grid.task_batch}."
    )
    create_markdown_artifact(key="generation-summary", markdown=summary, description="generate-combinations")
    ids = pa.chunked_array(tally.ids, pa.string()).to_pylist()
    return {"generations": ids, "new": sum(written), "cached": tally.skipped}
