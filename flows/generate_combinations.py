"""`generate-combinations`: every k-subset of subjects × template × seed, batched (Cones §3.3).

Each combination is generated with its subjects' concept masks composed by the grid's strategy
(cones_tasks.neurons.composition: each mask at its own class word, or the paper's union), per
sample in one batched UNet forward, so a task of many combinations costs about what the same
batch costs unmasked. Tasks take batches of combinations: with
Prefect's ~10–20 ms per task, one task per image would cost more than the image at toy scale.
Generation ids are content keys; the ones already in the catalog are not generated again.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from catalog import Generation, generation_id, load_catalog, params_hash
from catalog.pipeline import existing_generation_ids
from cones_tasks.combinations import batched, enumerate_combinations
from cones_tasks.config import DiscoveryParams, GenerateConfig, GenerationGrid, ModelRef, mask_params
from cones_tasks.ingest import encode_png
from cones_tasks.neurons.composition import compose
from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.sampling import sample
from flows._runtime import TASK_OPTIONS, ensure_concurrency_limit, fan_out, model_session


class MissingMaskError(LookupError):
    """A subject without a concept mask for this model and these discovery parameters."""


@task(name="resolve-masks", **TASK_OPTIONS)
def resolve_masks(
    catalog_uri: str, model_ref: ModelRef, subjects: tuple[str, ...], discovery: DiscoveryParams, seed: int
) -> dict[str, Any]:
    """Model fingerprint, each subject's class word and mask id (or a clear error naming the missing ones)."""
    catalog = load_catalog(catalog_uri)
    with model_session(model_ref) as model:
        fingerprint = NeuronSpace.from_unet(model.unet, attention=discovery.attention).fingerprint
    wanted = params_hash(mask_params(discovery, seed=seed))
    found = {s: catalog.find_mask(subject=s, model_fingerprint=fingerprint, params_hash=wanted) for s in subjects}
    missing = sorted(s for s, m in found.items() if m is None)
    if missing:
        raise MissingMaskError(
            f"no concept mask for {missing} on model {fingerprint[:16]}… with these discovery parameters; "
            "run discover-concepts for them first (same model, discovery params and seed)"
        )
    return {
        "model_fingerprint": fingerprint,
        "class_words": {s: catalog.get_subject(s).class_word for s in subjects},
        "mask_ids": {s: m.mask_id for s, m in found.items()},
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
    with model_session(model_ref) as model:  # hold the model (and a gpu slot) only while sampling
        space = NeuronSpace.from_unet(model.unet, attention=attention)
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


def plan_generations(config: GenerateConfig, resolved: dict[str, Any]) -> tuple[list[dict[str, Any]], set[str]]:
    """Every grid item with its content-keyed generation id, and the ids the catalog already holds."""
    items = []
    for combo in enumerate_combinations(
        resolved["class_words"], max_k=config.grid.max_k, templates=config.grid.templates, seeds=config.grid.seeds
    ):
        mask_ids = [resolved["mask_ids"][s] for s in combo.subjects]
        gid = generation_id(
            subjects=combo.subjects, prompt=combo.prompt, seed=combo.seed, model_fingerprint=resolved["model_fingerprint"],
            mask_ids=mask_ids, params=config.grid.sampler_settings(),
        )
        items.append({"id": gid, "subjects": list(combo.subjects), "prompt": combo.prompt, "seed": combo.seed, "mask_ids": mask_ids,
                      "class_words": [resolved["class_words"][s] for s in combo.subjects]})
    return items, existing_generation_ids(load_catalog(config.catalog), [it["id"] for it in items])


def batch_calls(config: GenerateConfig, todo: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keyword arguments of one `generate-batch` task per `grid.task_batch` items."""
    return [
        {"catalog_uri": config.catalog, "model_ref": config.model, "items": batch, "grid": config.grid,
         "attention": config.discovery.attention}
        for batch in batched(todo, config.grid.task_batch)
    ]


@flow(name="generate-combinations")
def generate_combinations(config: GenerateConfig) -> dict[str, Any]:
    """Returns the ids of every generation in the grid (new and already present)."""
    ensure_concurrency_limit()
    resolved = resolve_masks(config.catalog, config.model, config.subjects, config.discovery, config.discovery_seed)
    items, done = plan_generations(config, resolved)
    todo = [it for it in items if it["id"] not in done]
    get_run_logger().info(
        "generate-combinations: %d of %d generations already in the catalog (skipped), %d to generate", len(done),
        len(items), len(todo),
    )
    written = fan_out(generate_batch, batch_calls(config, todo), runner=config.runner, label="generate-combinations")
    summary = (
        f"# Generation\n\n{len(items)} combinations × seeds in the grid; {len(done)} already in the catalog, "
        f"{sum(written)} generated now in {len(written)} batches of ≤ {config.grid.task_batch}."
    )
    create_markdown_artifact(key="generation-summary", markdown=summary, description="generate-combinations")
    return {"generations": [it["id"] for it in items], "new": sum(written), "cached": len(done)}
