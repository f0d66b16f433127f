"""`generate-combinations`: the grid's subject subsets × template × seed, batched (Cones §3.3).

The grid is planned a chunk at a time (catalog.planning, docs/scale.md): each chunk's missing items
become tasks while later chunks are still being planned, so a grid of any size runs in bounded memory.

Each combination is generated with its subjects' concept masks composed by the grid's strategy
(cones_tasks.neurons.composition: each mask at its own class word, or the paper's union), per
sample in one batched UNet forward, so a task of many combinations costs about what the same
batch costs unmasked. Tasks take batches of combinations: with
Prefect's ~10–20 ms per task, one task per image would cost more than the image at toy scale.
Generation ids are content keys; the ones already in the catalog are not generated again.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from catalog import Generation, load_catalog
from catalog.pipeline import class_words, stored_mask_ids
from catalog.planning import GridItem, PlanTally, ResolvedMasks, grid_id_of, grid_item_count, plan_chunks, task_batches
from cones_tasks.combinations import batched
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
) -> ResolvedMasks:
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
    return ResolvedMasks(
        model_fingerprint=fingerprint, class_words=class_words(catalog, subjects), mask_ids={s: mask_ids[s] for s in subjects}
    )


@task(name="generate-batch", **TASK_OPTIONS)
def generate_batch(
    catalog_uri: str, model_ref: ModelRef, items: pa.Table, grid: GenerationGrid, attention: str
) -> int:
    """Generate and store one batch of combinations (planned rows: catalog.planning); returns how many images it wrote.

    The rows come as one Arrow table, not a list of items: Prefect walks every list, dict and dataclass of
    a task's parameters (to find futures among them) several times per task, ~0.16 s for 1,024 items on
    this machine, on the CPU the other batches sample on (docs/scale.md, "Fixed cost per flow run")."""
    items = GridItem.rows_of(items)
    catalog = load_catalog(catalog_uri)
    stored = {m.mask_id: m for m in catalog.get_masks(sorted({i for it in items for i in it.mask_ids}))}
    subject_masks = {mid: ConceptMask.from_bytes(m.blob, space_fingerprint=m.model_fingerprint) for mid, m in stored.items()}
    images = []
    space = neuron_space(model_ref, attention)
    # shared: concepts travel in each call's kwargs, so batches of one process sample the model at once;
    # the gpu slot is held only while sampling
    with model_session(model_ref, shared=True) as model:
        for chunk in batched(items, grid.sample_batch):
            # subjects in prompt order with their class words: token composition finds each one's word by it
            applied = [
                compose(grid.composition, [(subject_masks[mid], word) for mid, word in zip(it.mask_ids, it.class_words)])
                for it in chunk
            ]
            images.extend(
                sample(
                    model,
                    [it.prompt for it in chunk],
                    seeds=[it.seed for it in chunk],
                    steps=grid.steps,
                    guidance_scale=grid.guidance_scale,
                    layout=grid.layout_in_effect,
                    masks=[mask for mask, _ in applied],
                    word_masks=[words for _, words in applied],
                    space=space,
                )  # uint8 [B, H, W, 3]
            )
    generations = [
        Generation(
            id=it.id, subjects=it.subjects, prompt=it.prompt, seed=it.seed,
            image_uri=catalog.put_bytes(encode_png(image), suffix=".png"),
            model_fingerprint=space.fingerprint, mask_ids=it.mask_ids, params=grid.sampler_settings(),
        )
        for it, image in zip(items, images, strict=True)
    ]
    catalog.write_generations(generations)  # one commit per batch: a crash loses at most this batch
    return len(generations)


@flow(name="generate-combinations")
def generate_combinations(config: GenerateConfig) -> dict[str, Any]:
    """Returns the grid's id (scoring and the report select its generations by it), its size, and what was new."""
    ensure_concurrency_limit()
    resolved = resolve_masks(config.catalog, config.model, config.subjects, config.discovery, config.discovery_seed)
    catalog, grid = load_catalog(config.catalog), grid_id_of(config, resolved)
    # each planned chunk's ids go to `grid_items` as planning goes: scoring and the report select the grid there
    tally = PlanTally(record=lambda start, ids: catalog.write_grid_items(grid, start=start, generations=ids))
    most = math.ceil(grid_item_count(config, len(config.subjects)) / config.grid.task_batch)
    calls = (
        {"catalog_uri": config.catalog, "model_ref": config.model, "grid": config.grid,
         "attention": config.discovery.attention, "items": rows}
        for rows in task_batches(config.grid, plan_chunks(config, resolved, tally=tally, keep_ids=False))
    )
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
    return {"grid": grid, "generations": tally.items, "new": sum(written), "cached": tally.skipped}

