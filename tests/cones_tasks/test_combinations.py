from __future__ import annotations

import math

import pytest

from catalog.planning import grid_items
from cones_tasks.combinations import TemplateError, batched, batched_by_position, check_template, subjects_phrase
from cones_tasks.subsets import grid_subset_count, grid_subsets

CLASS_WORDS = {"red-circle": "circle", "blue-square": "square", "dotted-triangle": "triangle", "my-owl": "owl"}


def _grid(class_words, *, max_k, templates, seeds, chunk_rows=5) -> list[dict]:
    """The grid's items as the planner builds them (every subset, in chunks), one dict per item."""
    ids = sorted(class_words)
    words, masks = [class_words[s] for s in ids], [f"m-{s}" for s in ids]
    return [
        row
        for subsets in grid_subsets("all", n=len(ids), ids=ids, max_k=max_k, chunk_rows=chunk_rows)
        for row in grid_items(subsets, ids=ids, class_words=words, mask_ids=masks, templates=templates, seeds=seeds).to_pylist()
    ]


def test_grid_is_every_k_subset_times_templates_times_seeds():
    combos = _grid(CLASS_WORDS, max_k=3, templates=["{subjects}", "{subjects} on snow"], seeds=[0, 1])
    # C(4,1)+C(4,2)+C(4,3) = 4+6+4 = 14 subsets × 2 templates × 2 seeds
    assert len(combos) == 56 == grid_subset_count("all", n=4, max_k=3) * 2 * 2
    assert len({(tuple(c["subjects"]), c["prompt"], c["seed"]) for c in combos}) == 56
    assert [len(c["subjects"]) for c in combos] == sorted(len(c["subjects"]) for c in combos)
    assert all(c["subjects"] == sorted(c["subjects"]) for c in combos)
    pair = next(c for c in combos if c["subjects"] == ["blue-square", "red-circle"] and c["prompt"].endswith("snow"))
    assert pair["prompt"] == "a square and a circle on snow"
    owl = next(c for c in combos if c["subjects"] == ["my-owl"])
    assert owl["prompt"] == "an owl"


def test_max_k_beyond_subject_count_is_clamped_and_order_is_stable():
    a = _grid(CLASS_WORDS, max_k=9, templates=["{subjects}"], seeds=[3])
    b = _grid(dict(reversed(CLASS_WORDS.items())), max_k=9, templates=["{subjects}"], seeds=[3], chunk_rows=2)
    assert a == b and len(a) == 2**4 - 1


def test_closed_form_count_matches_at_scale():
    words = {f"s{i:02d}": "dog" for i in range(14)}
    n = grid_subset_count("all", n=14, max_k=3) * 2 * 4
    assert n == (14 + math.comb(14, 2) + math.comb(14, 3)) * 8 == 3752
    assert len(_grid(words, max_k=3, templates=["{subjects}", "x {subjects}"], seeds=range(4), chunk_rows=100)) == n


@pytest.mark.parametrize("bad", ["a photo", "{subject}", "{subjects} and {subjects}", "{subjects} {style}", "{subjects"])
def test_templates_need_exactly_one_subjects_slot(bad):
    with pytest.raises(TemplateError, match="subjects"):
        check_template(bad)


def test_batches_by_position_do_not_shift_when_items_are_missing():
    """Two overlapping runs of one grid, or a rerun, cut the same slices: a slice is the same list
    whichever other items were already done, so its commit file is the same file."""
    grid = list("abcdefghij")
    full = list(batched_by_position(grid, range(10), 4))
    assert full == [list("abcd"), list("efgh"), list("ij")]
    # a and b done by another run, f and g out of order: slices still end at positions 4 and 8
    todo = ["g", "c", "d", "f", "e", "h", "i", "j"]
    assert list(batched_by_position(todo, [grid.index(x) for x in todo], 4)) == [list("cd"), list("efgh"), list("ij")]
    with pytest.raises(ValueError):
        list(batched_by_position(grid, range(10), 0))


def test_batched_and_phrase():
    assert [len(b) for b in batched(range(10), 4)] == [4, 4, 2]
    assert list(batched([], 3)) == []
    with pytest.raises(ValueError):
        list(batched(range(3), 0))
    assert subjects_phrase(["dog", "apple", "cat"]) == "a dog and an apple and a cat"
