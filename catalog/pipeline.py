"""The queries the pipeline's flows ask of the catalog (docs/pipeline.md): what is done, what is missing.

The catalog is the source of truth for a rerun (docs/pipeline.md, "Crashes"): each flow asks here which
work already has rows and does only the rest. Flows stay free of SQL; this is the only place
these questions are phrased.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

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


def subject_image_boxes(catalog: Catalog, subject: str) -> dict[str, tuple[float, ...]]:
    """{image URI: the subject's box (x0, y0, x1, y1)} of a subject's scene photos that came with one."""
    rows = catalog.query(
        "SELECT i.uri, b.box FROM subject_images i JOIN subject_boxes b USING (subject, content_hash) "
        "WHERE i.subject = ?", [subject]
    ).to_pylist()
    return {r["uri"]: tuple(r["box"]) for r in rows}


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


def grid_size(catalog: Catalog, grid: str) -> int:
    """Positions in grid `grid` (0 for a grid the catalog does not know)."""
    rows = catalog.query("SELECT coalesce(max(position) + 1, 0) AS n FROM grid_items WHERE grid = ?", [grid]).to_pylist()
    return int(rows[0]["n"])


def grid_rows_to_score(
    catalog: Catalog, grid: str, *, scorer: str, start: int, stop: int
) -> tuple[np.ndarray, list[GenerationRow], int]:
    """The generated items at positions [start, stop) of grid `grid` that `scorer` has not scored yet.

    Returns (their positions, their rows, in position order; how many generated items the range
    holds in all). One range at a time, so what a flow holds to select a grid's work is a range,
    not the grid (docs/scale.md, "Selecting a run's grid").
    """
    with catalog._lookup(["grid_items", "generations", "clip_scores"]) as con:
        items = con.sql(
            "SELECT gi.position, g.id, g.subjects, g.prompt, g.seed, g.image_uri FROM grid_items gi "
            "JOIN generations g ON g.id = gi.generation WHERE gi.grid = $grid AND gi.position >= $start AND gi.position < $stop",
            params={"grid": grid, "start": start, "stop": stop},
        ).to_arrow_table()
        con.register("__range", items.select(["id"]))
        try:
            scored = con.sql(
                "SELECT id FROM __range SEMI JOIN (SELECT generation AS id FROM clip_scores WHERE scorer = $scorer) USING (id)",
                params={"scorer": scorer},
            ).to_arrow_table()
        finally:
            con.unregister("__range")
    done = pa.compute.is_in(items.column("id"), value_set=scored.column("id"))
    todo = items.filter(pa.compute.invert(done)).sort_by("position")
    return todo.column("position").to_numpy(), [_generation(r) for r in todo.to_pylist()], items.num_rows


def grid_combination_ranges(catalog: Catalog, grid: str, *, positions: int) -> Iterator[pa.Table]:
    """Grid `grid`'s combinations (subjects, prompt) with their scores, a range of about `positions` positions
    at a time, each aggregated in DuckDB: what the report and the leaderboard rank, never the whole grid at once.

    Columns: subjects, prompt, seeds (generations made), metrics (list of {metric, value}: each metric's mean
    over the seeds of each generation's mean over targets and scorers). A grid lists each combination's
    items next to each other (subset × template × seed, cones_tasks.combinations.grid_items), so a range
    is cut before its last combination, which the next range starts with: every combination comes whole.
    """
    size = grid_size(catalog, grid)
    start = 0
    while start < size:
        stop = min(size, start + positions)
        while (combos := _combinations_in(catalog, grid, start, stop)).num_rows < 2 and stop < size:
            stop = min(size, stop + positions)  # one combination, maybe going on: widen the range until a second starts
        if stop < size:  # the last combination may go on past `stop`: the next range starts with it
            start = combos.column("first")[-1].as_py()
            combos = combos.slice(0, combos.num_rows - 1)
        else:
            start = stop
        yield combos.drop_columns(["first"])


def _combinations_in(catalog: Catalog, grid: str, start: int, stop: int) -> pa.Table:
    """The combinations of the grid's generated items at positions [start, stop), by first position, with their
    metric means (grid_combination_ranges' columns, and `first`)."""
    with catalog._lookup(["grid_items", "generations", "clip_scores"]) as con:
        return con.sql(
            "WITH gen AS (SELECT gi.position, g.id, g.subjects, g.prompt FROM grid_items gi "
            "  JOIN generations g ON g.id = gi.generation WHERE gi.grid = $grid AND gi.position >= $start AND gi.position < $stop), "
            "per_gen AS (SELECT s.generation, s.metric, avg(s.value) AS value FROM clip_scores s "
            "  SEMI JOIN gen ON gen.id = s.generation GROUP BY ALL), "
            "combos AS (SELECT subjects, prompt, min(position) AS first, count(*) AS seeds FROM gen GROUP BY ALL), "
            "scores AS (SELECT gen.subjects, gen.prompt, p.metric, avg(p.value) AS value "
            "  FROM gen JOIN per_gen p ON p.generation = gen.id GROUP BY ALL) "
            "SELECT c.first, c.subjects, c.prompt, c.seeds, "
            "  coalesce(list({'metric': s.metric, 'value': s.value} ORDER BY s.metric) FILTER (WHERE s.metric IS NOT NULL), []) AS metrics "
            "FROM combos c LEFT JOIN scores s ON s.subjects = c.subjects AND s.prompt = c.prompt GROUP BY ALL ORDER BY c.first",
            params={"grid": grid, "start": start, "stop": stop},
        ).to_arrow_table()


def grid_subjects(catalog: Catalog, grid: str) -> list[str]:
    """The subjects that appear in grid `grid`'s generations, sorted."""
    rows = catalog.query(
        "SELECT DISTINCT unnest(g.subjects) AS subject FROM grid_items gi JOIN generations g ON g.id = gi.generation "
        "WHERE gi.grid = ? ORDER BY subject", [grid],
    ).to_pylist()
    return [r["subject"] for r in rows]


def grid_combination_generations(
    catalog: Catalog, grid: str, combinations: Sequence[tuple[Sequence[str], str]]
) -> dict[tuple[tuple[str, ...], str], list[tuple[int, str, str]]]:
    """(subjects, prompt) → [(seed, generation id, image uri)] by seed, for these combinations of grid `grid`."""
    if not combinations:
        return {}
    wanted = pa.table({"subjects": pa.array([list(s) for s, _ in combinations], pa.list_(pa.string())),
                       "prompt": pa.array([p for _, p in combinations], pa.string())})
    with catalog._lookup(["grid_items", "generations"]) as con:
        con.register("__wanted", wanted)
        try:
            rows = con.sql(
                "SELECT g.subjects, g.prompt, g.seed, g.id, g.image_uri FROM grid_items gi JOIN generations g ON g.id = gi.generation "
                "SEMI JOIN __wanted w ON w.subjects = g.subjects AND w.prompt = g.prompt WHERE gi.grid = $grid ORDER BY g.seed",
                params={"grid": grid},
            ).to_arrow_table().to_pylist()
        finally:
            con.unregister("__wanted")
    out: dict[tuple[tuple[str, ...], str], list[tuple[int, str, str]]] = {}
    for r in rows:
        out.setdefault((tuple(r["subjects"]), r["prompt"]), []).append((int(r["seed"]), r["id"], r["image_uri"]))
    return out


def _generation(r: dict[str, Any]) -> GenerationRow:
    return GenerationRow(id=r["id"], subjects=tuple(r["subjects"]), prompt=r["prompt"], seed=int(r["seed"]), image_uri=r["image_uri"])
