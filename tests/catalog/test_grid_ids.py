"""Generation ids for millions of planned items: the vectorised path gives the scalar path's ids; one join finds the stored ones."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from grid_oracle import enumerate_combinations

from catalog import generation_id, generation_ids, load_catalog
from catalog.combination_files import (
    CombinationFileError,
    combination_rows,
    count_combination_rows,
)
from catalog.pipeline import generations_present
from catalog.planning import grid_items
from cones_tasks.subsets import Subsets, grid_subsets

PARAMS = {"steps": 25, "guidance_scale": 7.5, "composition": "token"}


def _items(n: int = 12, max_k: int = 3) -> pa.Table:
    ids = [f"subj-{i:02d}" for i in range(n)]
    words = ["dog", "apple", "owl", "cat"] * n
    return pa.concat_tables(
        grid_items(subsets, ids=ids, class_words=words[:n], mask_ids=[f"{i:032x}" for i in range(n)],
                   templates=["{subjects}", "{subjects} on snow, 'quoted' \u00e9"], seeds=[0, -3, 2**40])
        for subsets in grid_subsets("all", n=n, ids=ids, max_k=max_k, chunk_rows=100)
    )


def test_vectorised_ids_equal_the_scalar_generation_id():
    items = _items()
    fast = generation_ids(items, model_fingerprint="f" * 64, params=PARAMS).to_pylist()
    slow = [generation_id(subjects=r["subjects"], prompt=r["prompt"], seed=r["seed"], model_fingerprint="f" * 64,
                          mask_ids=r["mask_ids"], params=PARAMS) for r in items.to_pylist()]
    assert len(fast) == items.num_rows == 298 * 6 and fast == slow
    sliced = items.slice(17, 40)  # an Arrow slice (non-zero offset) hashes the same rows
    assert generation_ids(sliced, model_fingerprint="f" * 64, params=PARAMS).to_pylist() == slow[17:57]


def test_present_joins_a_chunk_of_ids_against_generations(tmp_path):
    catalog = load_catalog(str(tmp_path / "c"))
    ids = [f"{i:032x}" for i in range(1000)]
    stored = pa.table({"id": ids[::3], "subjects": [["a"]] * len(ids[::3]), "prompt": ["p"] * len(ids[::3]),
                       "seed": [0] * len(ids[::3]), "image_uri": ["u"] * len(ids[::3]), "model_fingerprint": ["f"] * len(ids[::3]),
                       "mask_ids": [[]] * len(ids[::3]), "params": ["{}"] * len(ids[::3])})
    catalog.commit("generations", stored.slice(0, 200))
    catalog.commit("generations", stored.slice(150))
    found = generations_present(catalog, pa.array(ids + ["nope"]))
    assert found.tolist() == [i % 3 == 0 for i in range(1000)] + [False]
    assert generations_present(catalog, pa.array([], pa.string())).size == 0


def test_combination_files_parquet_and_csv(tmp_path):
    pq.write_table(pa.table({"subjects": [["dog", "cat"], ["owl"], None], "note": ["a", "b", "c"]}), tmp_path / "c.parquet")
    (tmp_path / "c.csv").write_text("note,subjects\nx,dog|cat\ny, owl \nz,\n")
    for name in ("c.parquet", "c.csv"):
        batches = list(combination_rows(str(tmp_path / name), batch_rows=2))
        rows = [[v[a:b] for a, b in itertools.pairwise(o)] for v, o in batches]
        assert [r for batch in rows for r in batch] == [["dog", "cat"], ["owl"], []]
        assert count_combination_rows(str(tmp_path / name)) == 3
    pq.write_table(pa.table({"names": [["dog"]]}), tmp_path / "bad.parquet")
    with pytest.raises(CombinationFileError, match="no 'subjects' column"):
        list(combination_rows(str(tmp_path / "bad.parquet")))
    with pytest.raises(CombinationFileError, match="does not exist"):
        list(combination_rows(str(tmp_path / "missing.csv")))


def test_grid_items_prompts_match_the_enumeration():
    words = {"cat": "cat", "dog": "dog", "owl": "owl", "sun": "sun"}
    templates, seeds = ["{subjects}", "{{x}} {subjects} on snow"], [0, 3]
    ids = ["cat", "dog", "owl", "sun"]
    chunks = list(grid_subsets("all", n=4, ids=ids, max_k=3, chunk_rows=5))
    table = [row for s in chunks for row in grid_items(
        s, ids=ids, class_words=[words[i] for i in ids], mask_ids=[f"m-{i}" for i in ids], templates=templates, seeds=seeds
    ).to_pylist()]
    expected = list(enumerate_combinations(words, max_k=3, templates=templates, seeds=seeds))
    assert [(tuple(r["subjects"]), r["prompt"], r["seed"]) for r in table] == [(c.subjects, c.prompt, c.seed) for c in expected]
    assert table[0]["mask_ids"] == ["m-cat"] and table[-1]["class_words"] == ["dog", "owl", "sun"]
    assert table[-1]["prompt"] == "{x} a dog and an owl and a sun on snow"
    assert len(Subsets.fixed(np.zeros((0, 2), np.int32))) == 0
