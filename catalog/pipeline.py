"""The queries the pipeline's flows ask of the catalog (docs/pipeline.md): what is done, what is missing.

The catalog is the source of truth for a rerun (docs/pipeline.md, "Crashes"): each flow asks here which
work already has rows and does only the rest. Flows stay free of SQL; this is the only place
these questions are phrased.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from catalog.catalog import Catalog
from catalog.errors import UnknownSubjectError
from catalog.records import mask_id_for, params_hash
from cones_tasks.neurons.objectives import legacy_mask_identity


@dataclass(frozen=True)
class GenerationRow:
    id: str
    subjects: tuple[str, ...]
    prompt: str
    seed: int
    image_uri: str


def subject_image_uris(catalog: Catalog, subject: str) -> list[str]:
    """URIs of a subject's reference images, in content-hash order (stable across runs)."""
    rows = catalog.query(
        "SELECT uri FROM subject_images WHERE subject = ? ORDER BY content_hash", [subject]
    ).to_pylist()
    return [r["uri"] for r in rows]


def subject_image_captions(catalog: Catalog, subject: str) -> dict[str, str]:
    """{image URI: caption} of a subject's captioned reference images."""
    rows = catalog.query(
        "SELECT i.uri, c.caption FROM subject_images i JOIN subject_captions c USING (subject, content_hash) "
        "WHERE i.subject = ?", [subject]
    ).to_pylist()
    return {r["uri"]: r["caption"] for r in rows}


def subject_image_hashes(catalog: Catalog, subject: str) -> set[str]:
    """Content hashes of the reference images the catalog already holds for `subject`."""
    rows = catalog.query("SELECT content_hash FROM subject_images WHERE subject = ?", [subject]).to_pylist()
    return {r["content_hash"] for r in rows}


def generations_present(catalog: Catalog, ids: pa.Array) -> np.ndarray:
    """bool [len(ids)]: which generation ids the catalog holds (a DuckDB join against one planned chunk)."""
    return catalog.present("generations", "id", ids)


def existing_mask_ids(catalog: Catalog, ids: Sequence[str]) -> set[str]:
    """The subset of mask `ids` in `concept_masks` (one join, blobs not read)."""
    ids = list(ids)
    found = catalog.present("concept_masks", "mask_id", pa.array(ids, pa.string()))
    return {ids[i] for i in np.flatnonzero(found)}


def stored_mask_ids(
    catalog: Catalog, subjects: Sequence[str], model_fingerprint: str, params: Mapping[str, Any]
) -> dict[str, str]:
    """{subject: mask id} of the masks stored for `subjects` on this model under mask `params`, for those that have one.

    `params` is a mask's identity (cones_tasks.config.mask_params). First the ids it names (one join,
    blobs not read); then, for the subjects still missing, masks written before identities held only
    what changes the neurons (docs/discovery.md, "A mask's identity"): their flat params, read as
    today's objective, must name the same identity. Such a mask keeps its old id, so the generations
    made with it keep theirs too.
    """
    wanted = params_hash(params)
    ids = {s: mask_id_for(s, model_fingerprint, wanted) for s in subjects}
    stored = existing_mask_ids(catalog, list(ids.values()))
    found = {s: m for s, m in ids.items() if m in stored}
    missing = [s for s in subjects if s not in found]
    if not missing:
        return found
    rows = catalog.query(
        "SELECT mask_id, subject, params FROM concept_masks WHERE model_fingerprint = ? AND list_contains(?, subject) "
        "AND json_extract(params, '$.version') IS NULL ORDER BY mask_id",
        [model_fingerprint, missing],
    ).to_pylist()
    for r in rows:
        identity = legacy_mask_identity(json.loads(r["params"]))
        if r["subject"] not in found and identity is not None and params_hash(identity) == wanted:
            found[r["subject"]] = r["mask_id"]
    return found


def class_words(catalog: Catalog, subjects: Sequence[str]) -> dict[str, str]:
    """{subject id: class word} in one query; UnknownSubjectError names any subject not in the catalog."""
    rows = catalog.query("SELECT id, class_word FROM subjects WHERE list_contains(?, id)", [list(subjects)]).to_pylist()
    words = {r["id"]: r["class_word"] for r in rows}
    missing = sorted(set(subjects) - set(words))
    if missing:
        raise UnknownSubjectError(f"subjects not in the catalog: {missing[:5]}; add them with `cones run ingest` first")
    return {s: words[s] for s in subjects}


def generations_without_scores(catalog: Catalog, *, scorer: str, ids: Sequence[str] | None = None) -> list[GenerationRow]:
    """Generations (optionally only `ids`) with no `clip_scores` row from `scorer` yet."""
    where, params = "", [scorer]
    if ids is not None:
        where, params = "AND list_contains(?, g.id)", [scorer, list(ids)]
    rows = catalog.query(
        "SELECT g.id, g.subjects, g.prompt, g.seed, g.image_uri FROM generations g "
        "WHERE NOT EXISTS (SELECT 1 FROM clip_scores s WHERE s.generation = g.id AND s.scorer = ?) "
        f"{where} ORDER BY g.id",
        params,
    ).to_pylist()
    return [_generation(r) for r in rows]


def list_generations(catalog: Catalog, ids: Sequence[str] | None = None) -> list[GenerationRow]:
    """Generations with these ids (all of them when `ids` is None), ordered by id."""
    if ids is None:
        rows = catalog.query("SELECT id, subjects, prompt, seed, image_uri FROM generations ORDER BY id").to_pylist()
    else:
        rows = catalog.query(
            "SELECT id, subjects, prompt, seed, image_uri FROM generations WHERE list_contains(?, id) ORDER BY id", [list(ids)]
        ).to_pylist()
    return [_generation(r) for r in rows]


def mean_scores(catalog: Catalog, ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """generation id → metric → mean value over targets (and scorers) of that metric."""
    rows = catalog.query(
        "SELECT generation, metric, avg(value) AS value FROM clip_scores WHERE list_contains(?, generation) "
        "GROUP BY generation, metric",
        [list(ids)],
    ).to_pylist()
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r["generation"], {})[r["metric"]] = float(r["value"])
    return out


def _generation(r: dict[str, Any]) -> GenerationRow:
    return GenerationRow(id=r["id"], subjects=tuple(r["subjects"]), prompt=r["prompt"], seed=int(r["seed"]), image_uri=r["image_uri"])
