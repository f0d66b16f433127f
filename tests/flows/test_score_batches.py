"""Scoring selects a run's grid in the catalog, a range of positions at a time, and cuts its batches at
fixed positions of the grid, so overlapping runs commit the same files (real catalog, real DuckDB)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from catalog import ClipScore, load_catalog
from flows import score_generations as sg


def _catalog(tmp_path, grids: dict[str, list[str]], scored: tuple[str, ...] = ()):
    """Generations g00…, the grids over them (grid id → ids by position), and `scored` scored by `judge`."""
    catalog = load_catalog(str(tmp_path / "catalog"))
    ids = sorted({i for grid in grids.values() for i in grid})
    catalog.commit("generations", pa.table({
        "id": ids, "subjects": [["s"]] * len(ids), "prompt": [f"a dog {i}" for i in ids], "seed": [0] * len(ids),
        "image_uri": [f"memory://{i}.png" for i in ids], "model_fingerprint": ["m"] * len(ids),
        "mask_ids": [["k"]] * len(ids), "params": ["{}"] * len(ids),
    }))
    for grid, members in grids.items():
        catalog.write_grid_items(grid, start=0, generations=pa.array(members))
    catalog.write_clip_scores([ClipScore(i, "presence", "s", 1.0, "judge") for i in scored])
    return catalog


def _batches(catalog, grid, size=2):
    tally = [0, 0]
    return [[r.id for r in b] for b in sg.score_batches(catalog, grid, scorer="judge", size=size, tally=tally)], tally


def test_a_run_over_a_prefix_of_the_grid_scores_in_the_same_batches(tmp_path):
    """A small run (its grid: g00–g07) and a full run (g00–g11) that both score g00–g07 at once cut the same
    batches: each batch's commit is named by its rows' keys, so the second writes nothing new."""
    big = [f"g{i:02d}" for i in range(12)][::-1]  # grid order is not id order
    catalog = _catalog(tmp_path, {"small": big[:8], "big": big})
    small_batches, _ = _batches(catalog, "small")
    big_batches, tally = _batches(catalog, "big")
    assert small_batches == big_batches[:4] == [big[i : i + 2] for i in range(0, 8, 2)]
    assert tally == [12, 12]


def test_generations_another_run_scored_leave_their_batch_short_not_shifted(tmp_path):
    grid = [f"g{i}" for i in range(6)]
    catalog = _catalog(tmp_path, {"run": grid}, scored=("g0", "g4"))  # scored by a run that overlapped this one
    batches, tally = _batches(catalog, "run")
    assert batches == [["g1"], ["g2", "g3"], ["g5"]]
    assert tally == [6, 4]


def test_ranges_of_the_grid_cut_the_same_batches_as_the_whole(tmp_path, monkeypatch):
    grid = [f"g{i:02d}" for i in range(23)]
    catalog = _catalog(tmp_path, {"run": grid}, scored=("g03", "g10"))
    whole, _ = _batches(catalog, "run", size=3)
    monkeypatch.setattr(sg, "SELECT_POSITIONS", 6)  # two batches per selected range
    assert _batches(catalog, "run", size=3) == (whole, [23, 21])
    assert whole[1] == ["g04", "g05"] and whole[3] == ["g09", "g11"]


def test_only_the_grids_generations_are_selected(tmp_path):
    catalog = _catalog(tmp_path, {"mine": ["g0", "g1"], "other": ["g2", "g3"]})
    assert _batches(catalog, "mine")[0] == [["g0", "g1"]]
    assert _batches(catalog, "unknown-grid") == ([], [0, 0])


def test_without_a_grid_the_unscored_generations_are_batched_as_they_come(tmp_path):
    catalog = _catalog(tmp_path, {"run": ["a", "b", "c"]}, scored=("b",))
    assert _batches(catalog, None) == ([["a", "c"]], [3, 2])


@pytest.mark.parametrize("positions", [1, 3, 4, 1000])
def test_the_grid_ranked_range_by_range_equals_ranking_it_whole_in_python(tmp_path, monkeypatch, positions):
    """rank_grid reads a grid a range at a time, never splitting a combination across ranges, and keeps only the
    best `top`: what it ranks equals `combination_scores` over all of the grid's generations at once."""
    from catalog.pipeline import list_generations, mean_scores
    from cones_tasks import generation_scores as gs

    catalog = load_catalog(str(tmp_path / "catalog"))
    ids = [f"g{i}" for i in range(9)]
    # grid order: combination by combination, its seeds next to each other; g8 is another run's
    subjects = [["a"], ["a"], ["b"], ["b"], ["a", "b"], ["a", "b"], ["a"], ["a"], ["b"]]
    prompts = ["p", "p", "p", "p", "p", "p", "q", "q", "q"]
    catalog.commit("generations", pa.table({
        "id": ids, "subjects": subjects, "prompt": prompts, "seed": [0, 1] * 4 + [0], "image_uri": [f"u{i}" for i in ids],
        "model_fingerprint": ["m"] * 9, "mask_ids": [["k"]] * 9, "params": ["{}"] * 9,
    }))
    catalog.write_grid_items("run", start=0, generations=pa.array(ids[:8]))
    values = [0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.4, 0.5, 1.0]
    catalog.write_clip_scores(
        [ClipScore(g, "presence", s, v, "judge") for g, v, subs in zip(ids, values, subjects) for s in subs]
        + [ClipScore(g, "text_alignment", "p", v / 2, "clip") for g, v in zip(ids[:3], values)]
    )
    monkeypatch.setattr(sg, "SELECT_POSITIONS", positions)
    best, tally = sg.rank_grid(catalog, "run", top=None)
    rows = list_generations(catalog, ids[:8])
    whole = gs.combination_scores(rows, mean_scores(catalog, ids[:8]))
    assert [(c.subjects, c.prompt, c.seeds) for c in best] == [(c.subjects, c.prompt, c.seeds) for c in whole]
    for a, b in zip(best, whole):
        assert a.scores == pytest.approx(b.scores)
    # presence 0.5, then a tie at 0.45 that the subjects break, then 0.4
    assert [(c.subjects, c.prompt) for c in best] == [(("a",), "p"), (("a",), "q"), (("a", "b"), "p"), (("b",), "p")]
    assert (tally.combinations, tally.generations) == (4, 8) and len(tally.values["presence"]) == 4
    top2, _ = sg.rank_grid(catalog, "run", top=2)
    assert top2 == best[:2]
