"""Planning a generation grid against the catalog, a chunk at a time (docs/scale.md, "Planning in chunks").

The grid's items (subsets × templates × seeds) are built as Arrow columns, named by their
content-keyed generation ids, and joined against `generations` in DuckDB, so a grid of any size
plans in bounded memory and a rerun plans only what the catalog lacks. It lives in the catalog
because it is Arrow and DuckDB work; the `generate-combinations` flow only calls it, and
`cones bench plan` times it without importing a flow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog.catalog import load_catalog
from catalog.combination_files import combination_file_digest, combination_rows, count_combination_rows
from catalog.pipeline import generations_present
from catalog.records import generation_ids, grid_id, shard_of
from cones_tasks.combinations import SLOT, check_template, class_phrase
from cones_tasks.config import GenerateConfig, GenerationGrid
from cones_tasks.subsets import Subsets, grid_subset_count, grid_subsets

__all__ = [
    "PLAN_CHUNK_ITEMS",
    "POSITION",
    "GridItem",
    "PlanTally",
    "ResolvedMasks",
    "grid_id_of",
    "grid_item_count",
    "grid_items",
    "plan_chunks",
    "task_batches",
]

# Items per planned chunk: planning holds ~2 KB an item of a chunk at its peak (`cones bench plan`), whatever the grid's size.
PLAN_CHUNK_ITEMS = 131_072
# Column of planned rows: the item's index in the grid (or the shard's share of it), which fixes its batch.
POSITION = "position"


@dataclass(frozen=True)
class ResolvedMasks:
    """What generation needs to know of a grid's subjects: the model's fingerprint, each subject's class word and mask."""

    model_fingerprint: str
    class_words: Mapping[str, str]  # subject id -> class word
    mask_ids: Mapping[str, str]  # subject id -> concept mask id


@dataclass(frozen=True)
class GridItem:
    """One image to generate: its generation id, its subjects (sorted ids) with their class words and masks, prompt, seed."""

    id: str
    subjects: tuple[str, ...]
    class_words: tuple[str, ...]
    mask_ids: tuple[str, ...]
    prompt: str
    seed: int

    @classmethod
    def rows_of(cls, table: pa.Table) -> list[GridItem]:
        """The items of a planned table (columns id, subjects, class_words, mask_ids, prompt, seed)."""
        return [
            cls(id=r["id"], subjects=tuple(r["subjects"]), class_words=tuple(r["class_words"]), mask_ids=tuple(r["mask_ids"]),
                prompt=r["prompt"], seed=int(r["seed"]))
            for r in table.select(["id", "subjects", "class_words", "mask_ids", "prompt", "seed"]).to_pylist()
        ]


@dataclass
class PlanTally:
    """What planning has seen so far: grid items, and those the catalog already held."""

    items: int = 0
    skipped: int = 0
    ids: list[pa.Array] = field(default_factory=list)  # every grid id, 36 B each, when asked to keep them
    # called with (first position, ids) of each planned chunk: the flow records its grid's items in the catalog
    record: Callable[[int, pa.Array], None] | None = None


def _template_parts(template: str) -> tuple[str, str]:
    """(text before, text after) the `{subjects}` slot, with `{{`/`}}` already unescaped."""
    marker = "\x00subjects\x00"
    before, after = check_template(template).format(**{SLOT: marker}).split(marker)
    return before, after


def grid_items(
    subsets: Subsets,
    *,
    ids: Sequence[str],
    class_words: Sequence[str],
    mask_ids: Sequence[str],
    templates: Sequence[str],
    seeds: Sequence[int],
) -> pa.Table:
    """One row per subset × template × seed (that order), built column-wise for millions of rows.

    `ids` sorted, `class_words[i]` and `mask_ids[i]` those of subject `ids[i]`; `subsets` index
    into them. Columns: subjects, class_words, mask_ids (lists, sorted-id order), prompt, seed.
    Prompts: the template with " and "-joined class phrases in its slot (cones_tasks.combinations).
    """
    m, t, s = len(subsets), len(templates), len(seeds)
    offsets = pa.array(subsets.offsets.astype(np.int32))
    take = pa.array(subsets.values)

    def lists(per_subject: Sequence[str]) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, pa.array(list(per_subject), pa.string()).take(take))

    subjects, words, masks = lists(ids), lists(class_words), lists(mask_ids)
    phrase = pc.binary_join(lists([class_phrase(w) for w in class_words]), " and ")
    prompts = pa.concat_arrays(
        [pc.binary_join_element_wise(before, phrase, after, "") for before, after in map(_template_parts, templates)]
    )
    per_subset = np.repeat(np.arange(m, dtype=np.int64), t * s)  # item → its subset
    per_template = np.tile(np.repeat(np.arange(t, dtype=np.int64), s), m)  # item → its template
    rows = pa.array(per_subset)
    return pa.table(
        {
            "subjects": subjects.take(rows),
            "class_words": words.take(rows),
            "mask_ids": masks.take(rows),
            "prompt": prompts.take(pa.array(per_template * m + per_subset)),
            "seed": pa.array(np.tile(np.asarray(seeds, dtype=np.int64), m * t)),
        }
    )


def plan_chunks(
    config: GenerateConfig, resolved: ResolvedMasks, *, chunk_items: int = PLAN_CHUNK_ITEMS, tally: PlanTally | None = None,
    keep_ids: bool = True,
) -> Iterator[pa.Table]:
    """The grid's items still missing from the catalog, chunk by chunk (docs/scale.md, "Planning").

    Each chunk: subsets (cones_tasks.subsets) × templates × seeds as Arrow columns, their content-keyed
    generation ids, then one DuckDB join of the chunk's ids against `generations`. Yields the
    rows not yet generated (columns id, subjects, prompt, seed, mask_ids, class_words, and `position`
    in the grid, which fixes the batch each item belongs to).
    """
    grid, tally = config.grid, tally if tally is not None else PlanTally()
    ids = sorted(resolved.class_words)
    class_words = [resolved.class_words[s] for s in ids]
    mask_ids = [resolved.mask_ids[s] for s in ids]
    chunk_rows = max(1, chunk_items // (len(grid.templates) * len(grid.seeds)))
    spec, listed = grid.combinations, None
    if isinstance(spec, str) and spec != "all":
        spec, listed = None, combination_rows(grid.combinations, batch_rows=chunk_rows)
    catalog, params = load_catalog(config.catalog), grid.sampler_settings()
    for subsets in grid_subsets(spec, n=len(ids), ids=ids, max_k=grid.max_k, chunk_rows=chunk_rows, listed_rows=listed):
        items = grid_items(subsets, ids=ids, class_words=class_words, mask_ids=mask_ids, templates=grid.templates, seeds=grid.seeds)
        gids = generation_ids(items, model_fingerprint=resolved.model_fingerprint, params=params)
        if config.shard is not None:
            mine = pa.array(shard_of(gids, config.shard.count) == config.shard.index)
            items, gids = items.filter(mine), gids.filter(mine)
        if tally.record is not None:
            tally.record(tally.items, gids)
        done = generations_present(catalog, gids)
        items = items.append_column(POSITION, pa.array(np.arange(tally.items, tally.items + items.num_rows)))
        tally.items += items.num_rows
        tally.skipped += int(done.sum())
        if keep_ids:
            tally.ids.append(gids)
        todo = items.add_column(0, "id", gids).filter(pa.array(~done))
        if todo.num_rows:
            yield todo


def grid_id_of(config: GenerateConfig, resolved: ResolvedMasks) -> str:
    """The id of the grid `config` plans: a hash of what decides its items and their positions
    (`grid_items` rows are keyed by it; docs/pipeline.md, "A run's grid is in the catalog").

    Batch sizes are left out (they cut tasks, not the grid); a combinations file counts by its content.
    """
    grid = config.grid.model_dump(mode="json", exclude={"sample_batch", "task_batch"})
    if isinstance(config.grid.combinations, str) and config.grid.combinations != "all":
        grid["combinations"] = {"file": config.grid.combinations, "sha256": combination_file_digest(config.grid.combinations)}
    return grid_id({
        "model": resolved.model_fingerprint, "class_words": dict(resolved.class_words), "mask_ids": dict(resolved.mask_ids),
        "grid": grid, "shard": None if config.shard is None else config.shard.model_dump(),
    })


def grid_item_count(config: GenerateConfig, n_subjects: int) -> int:
    """Items in the grid (or, for a shard, about its share) before skipping; a file is counted in one pass."""
    spec = config.grid.combinations
    listed = count_combination_rows(spec) if isinstance(spec, str) and spec != "all" else None
    subsets = grid_subset_count(None if listed is not None else spec, n=n_subjects, max_k=config.grid.max_k, listed=listed)
    items = subsets * len(config.grid.templates) * len(config.grid.seeds)
    return items if config.shard is None else math.ceil(items / config.shard.count)  # a shard: about its share


def task_batches(grid: GenerationGrid, chunks: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """The planned rows of one `generate-batch` task per `grid.task_batch` positions of the grid (`position` dropped).

    Batches are cut at fixed positions of the grid (`position // task_batch`), not of what is
    missing: a commit is named by its rows' keys (docs/catalog.md), so two overlapping runs of one
    grid, or a rerun after a crash, that generate the same slice write the same file instead of
    doubled rows. Batches span chunk boundaries (a chunk ends where a k or a file batch does), so a
    small grid is as few tasks as before streaming, and each task's sample batches stay full.
    """
    size, pending, current = grid.task_batch, [], None
    for chunk in chunks:
        groups = np.asarray(chunk.column(POSITION)) // size  # non-decreasing: positions grow through the grid
        cuts = np.flatnonzero(np.diff(groups)) + 1
        for start, stop in zip([0, *cuts], [*cuts, chunk.num_rows]):
            if current is not None and groups[start] != current:
                yield pa.concat_tables(pending).drop_columns([POSITION])
                pending = []
            current = groups[start]
            pending.append(chunk.slice(start, stop - start))
    if pending:
        yield pa.concat_tables(pending).drop_columns([POSITION])
