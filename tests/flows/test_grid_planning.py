"""Streamed planning: a 1 M-item sampled grid plans in bounded memory; a catalog's items are skipped; `all` keeps its ids."""

from __future__ import annotations

import tracemalloc

import pyarrow as pa
import pytest

from catalog import generation_id, load_catalog
from catalog.records import content_key
from cones_tasks.combinations import enumerate_combinations
from cones_tasks.config import GenerateConfig
from flows.generate_combinations import (
    PLAN_CHUNK_ITEMS,
    PlanTally,
    batch_calls,
    grid_item_count,
    plan_chunks,
)

# Stated bounds for planning 1,000,000 items in chunks of PLAN_CHUNK_ITEMS: Python objects (tracemalloc,
# numpy included) and Arrow's pool, sampled at every chunk. Measured on 2 shared cores: 37 MB and 66 MB.
TRACEMALLOC_PEAK_MB = 100
ARROW_LIVE_MB = 150


def _config(tmp_path, n_subjects: int, combinations, seeds=(0, 1, 2, 3), templates=("{subjects}",), max_k: int = 3):
    ids = [f"subject-{i:04d}" for i in range(n_subjects)]
    config = GenerateConfig.model_validate({
        "catalog": str(tmp_path / "catalog"), "model": {"path": "unused"}, "subjects": ids,
        "grid": {"combinations": combinations, "seeds": list(seeds), "templates": list(templates), "max_k": max_k,
                 "task_batch": 5},
    })
    words = ("dog", "apple", "owl")
    resolved = {"model_fingerprint": content_key("model"), "class_words": {s: words[i % 3] for i, s in enumerate(ids)},
                "mask_ids": {s: content_key("mask", s) for s in ids}}
    return config, resolved


def test_a_million_item_sampled_grid_plans_under_a_stated_memory_peak(tmp_path):
    config, resolved = _config(tmp_path, 1000, {"sample": 125_000, "k": [2, 3], "seed": 0})
    assert grid_item_count(config, 1000) == 1_000_000
    tally, arrow_live = PlanTally(), []
    tracemalloc.start()
    try:
        todo = 0
        for chunk in plan_chunks(config, resolved, tally=tally, keep_ids=False):
            todo += chunk.num_rows
            arrow_live.append(pa.total_allocated_bytes())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tally.items == todo == 1_000_000 and tally.skipped == 0
    assert len(arrow_live) >= 1_000_000 // PLAN_CHUNK_ITEMS
    print(f"\ntracemalloc peak {peak / 2**20:.0f} MB, Arrow live at most {max(arrow_live) / 2**20:.0f} MB")
    assert peak < TRACEMALLOC_PEAK_MB * 2**20
    assert max(arrow_live) < ARROW_LIVE_MB * 2**20


def test_a_rerun_plans_only_what_the_catalog_lacks(tmp_path):
    config, resolved = _config(tmp_path, 30, {"balanced": 40, "k": [2, 3], "seed": 4}, seeds=(0, 1))
    first = [row for chunk in plan_chunks(config, resolved, chunk_items=50) for row in chunk.to_pylist()]
    assert len(first) == 160 == grid_item_count(config, 30)
    stored = first[::3]
    load_catalog(config.catalog).commit("generations", [
        {"id": r["id"], "subjects": r["subjects"], "prompt": r["prompt"], "seed": r["seed"], "image_uri": "u",
         "model_fingerprint": resolved["model_fingerprint"], "mask_ids": r["mask_ids"], "params": "{}"} for r in stored
    ])
    tally = PlanTally()
    again = [row for chunk in plan_chunks(config, resolved, chunk_items=50, tally=tally) for row in chunk.to_pylist()]
    assert tally.skipped == len(stored) and tally.items == 160
    assert [r["id"] for r in again] == [r["id"] for r in first if r not in stored]
    calls = list(batch_calls(config, plan_chunks(config, resolved, chunk_items=7)))  # batches span chunks
    assert [len(c["items"]) for c in calls] == [5] * 21 + [1]  # 106 missing items


def test_all_keeps_the_ids_of_the_enumerated_grid(tmp_path):
    """Catalogs made before sampling existed hold these ids: `all` must plan the same ones, or they would regenerate."""
    config, resolved = _config(tmp_path, 7, "all", seeds=(0, 9), templates=("{subjects}", "{subjects} on snow"))
    tally = PlanTally()
    planned = [row for chunk in plan_chunks(config, resolved, chunk_items=16, tally=tally) for row in chunk.to_pylist()]
    params = config.grid.sampler_settings()
    expected = [
        generation_id(subjects=c.subjects, prompt=c.prompt, seed=c.seed, model_fingerprint=resolved["model_fingerprint"],
                      mask_ids=[resolved["mask_ids"][s] for s in c.subjects], params=params)
        for c in enumerate_combinations(resolved["class_words"], max_k=3, templates=config.grid.templates, seeds=config.grid.seeds)
    ]
    assert [r["id"] for r in planned] == expected and len(expected) == (7 + 21 + 35) * 4


@pytest.mark.parametrize("combinations", [[["subject-0001", "subject-0000"], ["subject-0002"]], "FILE"])
def test_listed_combinations_plan_in_sorted_subject_order(tmp_path, combinations):
    if combinations == "FILE":
        (tmp_path / "combos.csv").write_text("subjects\nsubject-0001|subject-0000\nsubject-0002\n")
        combinations = str(tmp_path / "combos.csv")
    config, resolved = _config(tmp_path, 3, combinations, seeds=(0,))
    rows = [row for chunk in plan_chunks(config, resolved) for row in chunk.to_pylist()]
    assert [r["subjects"] for r in rows] == [["subject-0000", "subject-0001"], ["subject-0002"]]
    assert rows[0]["prompt"] == "a dog and an apple"


def test_a_file_row_naming_an_unknown_subject_is_refused_with_its_row(tmp_path):
    (tmp_path / "combos.csv").write_text("subjects\nsubject-0001\nsubject-0000|subject-0002\nsubject-0002|nobody\n")
    config, resolved = _config(tmp_path, 3, str(tmp_path / "combos.csv"), seeds=(0,))
    with pytest.raises(ValueError, match=r"row 3 \['subject-0002', 'nobody'\]: subject 'nobody' is not one of"):
        list(plan_chunks(config, resolved))


def test_shards_split_the_grid_into_disjoint_even_shares(tmp_path):
    config, resolved = _config(tmp_path, 40, {"sample": 500, "k": [2, 3], "seed": 1})
    whole = {r["id"] for chunk in plan_chunks(config, resolved) for r in chunk.to_pylist()}
    shares = []
    for index in range(3):
        shard = config.model_copy(update={"shard": {"index": index, "count": 3}})
        shard = type(config).model_validate(shard.model_dump())
        shares.append({r["id"] for chunk in plan_chunks(shard, resolved) for r in chunk.to_pylist()})
    assert set().union(*shares) == whole and sum(len(s) for s in shares) == len(whole) == 4000
    assert all(abs(len(s) - 4000 / 3) < 150 for s in shares)  # ±3.5 σ of a binomial(4000, 1/3)
    with pytest.raises(ValueError, match="shard index 3 must be below count 3"):
        type(config).model_validate({**config.model_dump(), "shard": {"index": 3, "count": 3}})
