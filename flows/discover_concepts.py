"""`discover-concepts`: one task per subject → a concept mask in the catalog (Cones §3).

A subject whose mask for this model (weight fingerprint) and these parameters is already in
the catalog is skipped, so a rerun after a crash does only the subjects that are missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from catalog import load_catalog
from catalog.pipeline import stored_mask_ids, subject_image_boxes, subject_image_captions, subject_image_uris
from cones_tasks.combinations import class_phrase
from cones_tasks.config import DiscoverConfig, DiscoveryParams, ModelRef, mask_params
from cones_tasks.ingest import crop_box, decode_rgb, fit_to_resolution
from cones_tasks.neurons.discovery import discover_concept_neurons
from cones_tasks.neurons.space import NeuronSpace
from flows._runtime import TASK_OPTIONS, ensure_concurrency_limit, fan_out, model_session

# The discovery report minus its per-step loss curve: what `concept_masks.stats` keeps.
_STATS_KEYS = ("images", "neurons", "fraction", "neurons_per_layer", "eval_loss_unmasked", "eval_loss_masked", "time_s", "rounds")


@dataclass(frozen=True)
class DiscoveredMask:
    """What one `discover-concept` task returns: the subject's mask, and whether it was already in the catalog."""

    subject: str
    mask_id: str
    neurons: int
    skipped: bool


@task(name="discover-concept", **TASK_OPTIONS)
def discover_subject(
    catalog_uri: str, model_ref: ModelRef, subject: str, params: DiscoveryParams, seed: int
) -> DiscoveredMask:
    catalog = load_catalog(catalog_uri)
    class_word = catalog.get_subject(subject).class_word  # UnknownSubjectError names the fix
    identity = mask_params(params, seed=seed)
    with model_session(model_ref) as model:
        space = NeuronSpace.from_unet(model.unet, attention=params.attention)
        found = stored_mask_ids(catalog, [subject], space.fingerprint, identity).get(subject)
        if found is not None:
            return DiscoveredMask(subject, found, catalog.get_mask(found).neuron_count, skipped=True)
        uris = subject_image_uris(catalog, subject)
        if not uris:
            raise ValueError(f"subject {subject!r} has no images in the catalog; run ingest-subjects for it first")
        photos = [decode_rgb(catalog.get_bytes(u)) for u in uris]
        images = np.stack([fit_to_resolution(p, model.resolution) for p in photos])
        # a photo of the subject alone is conditioned on its class phrase (Cones §3.1); a captioned scene
        # photo on its caption, which names the subject by its class word (docs/composition.md)
        captions = subject_image_captions(catalog, subject)
        prompts = [captions.get(u, class_phrase(class_word)) for u in uris]
        # where discovery's layout holds the word: the subject's box in a scene photo, in the square discovery sees
        given = subject_image_boxes(catalog, subject)
        boxes = [crop_box(given[u], p.shape[1], p.shape[0]) if u in given else None for u, p in zip(uris, photos)]
        result = discover_concept_neurons(
            model, images, prompts if captions else prompts[0], params, class_word=class_word, boxes=boxes, seed=seed,
            progress=False,
        )
    catalog.write_model(space, source=model.source, attention=params.attention)
    stats = {k: result.report[k] for k in _STATS_KEYS if k in result.report}
    mask_id = catalog.write_mask(subject=subject, mask=result.mask, params=identity, stats=stats)
    return DiscoveredMask(subject, mask_id, result.mask.count, skipped=False)


@flow(name="discover-concepts")
def discover_concepts(config: DiscoverConfig) -> dict[str, str]:
    """Returns subject id → mask id for every subject."""
    ensure_concurrency_limit()
    results = fan_out(
        discover_subject,
        [
            {"catalog_uri": config.catalog, "model_ref": config.model, "subject": s, "params": config.discovery, "seed": config.seed}
            for s in config.subjects
        ],
        runner=config.runner,
        label="discover-concepts",
    )
    cached = sum(r.skipped for r in results)
    get_run_logger().info(
        "discover-concepts: %d of %d masks already in the catalog (skipped), %d discovered", cached, len(results),
        len(results) - cached,
    )
    lines = ["# Concept neurons", "", "| subject | neurons | mask | |", "|---|---|---|---|"]
    lines += [f"| {r.subject} | {r.neurons} | `{r.mask_id[:12]}` | {'cached' if r.skipped else 'new'} |" for r in results]
    create_markdown_artifact(key="discovery-summary", markdown="\n".join(lines), description="discover-concepts")
    return {r.subject: r.mask_id for r in results}
