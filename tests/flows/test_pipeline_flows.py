"""The pipeline's flows under a real Prefect API, on the toy architecture with random weights (issue #6).

Real catalog on disk, real Parquet, real model and CLIP forward passes; sizes kept tiny so the
whole file runs in about a minute on 2 cores.
"""

from __future__ import annotations

import json

import pytest
from bs4 import BeautifulSoup

from catalog import load_catalog
from cones_tasks.config import CustomizeConfig
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, write_subject_folders

SUBJECTS = TOY_SUBJECTS[:3]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random open_clip model in the layout load_clip_scorer reads: weights + `<name>.json` beside them."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny-clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / "tiny-clip-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "tiny-clip-test.json")
    model = open_clip.create_model("tiny-clip-test")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "weights.safetensors")
    return {"model_name": "tiny-clip-test", "weights_path": str(folder / "weights.safetensors")}


def _config(tmp_path, model_dir, clip, *, max_k: int) -> CustomizeConfig:
    folders = write_subject_folders(tmp_path / "subjects", SUBJECTS, n=4)
    (tmp_path / "subjects" / "empty-subject").mkdir(exist_ok=True)
    subjects = [{"subject_id": s.id, "class_word": s.class_word, "uri": str(folders[s.id])} for s in SUBJECTS]
    subjects.append({"subject_id": "empty-subject", "class_word": "circle", "uri": str(tmp_path / "subjects" / "empty-subject")})
    return CustomizeConfig.model_validate(
        {
            "catalog": str(tmp_path / "catalog"),
            "model": {"path": str(model_dir)},
            "subjects": subjects,
            "ingest": {"min_side": 16},
            "discovery": {"steps": 2, "batch_size": 2},
            "grid": {"max_k": max_k, "templates": ["{subjects}", "{subjects} on night"], "seeds": [0], "steps": 2,
                     "sample_batch": 4, "task_batch": 3},
            "scoring": {"clip": clip, "judge": True, "task_batch": 5},
            "runner": {"kind": "threads", "workers": 2},
        }
    )


def test_customize_end_to_end_and_a_rerun_does_only_missing_work(prefect_api, tmp_path, tiny_model_dir, tiny_clip):
    from flows.customize import customize

    # A first run that stops at single subjects stands in for a run that crashed part-way.
    first = customize(_config(tmp_path, tiny_model_dir, tiny_clip, max_k=1))
    assert first["failed_subjects"].keys() == {"empty-subject"}
    assert "has no files" in first["failed_subjects"]["empty-subject"]
    assert first["generations"] == first["new_generations"] == 3 * 2

    catalog = load_catalog(str(tmp_path / "catalog"))
    masks_before = catalog.read_table("concept_masks").num_rows

    full = customize(_config(tmp_path, tiny_model_dir, tiny_clip, max_k=2))
    # C(3,1)+C(3,2) = 6 subsets × 2 templates × 1 seed; the 6 single-subject images are reused.
    assert full["generations"] == 12 and full["new_generations"] == 6
    assert catalog.read_table("concept_masks").num_rows == masks_before == 3
    assert set(full["masks"]) == {s.id for s in SUBJECTS}

    gens = catalog.query("SELECT count(*) AS n, count(DISTINCT id) AS d FROM generations").to_pylist()[0]
    assert gens == {"n": 12, "d": 12}
    # each run's grid is in the catalog, by position: scoring and the report selected it there
    grids = catalog.query("SELECT grid, count(*) AS n, max(position) AS last FROM grid_items GROUP BY grid ORDER BY n").to_pylist()
    assert [(g["grid"], g["n"], g["last"]) for g in grids] == [(first["grid"], 6, 5), (full["grid"], 12, 11)]
    # every generation records the composition strategy it was made with (the default: token), queryable in SQL
    made_with = catalog.query(
        "SELECT json_extract_string(params, '$.composition') AS composition, count(*) AS n FROM generations GROUP BY ALL"
    ).to_pylist()
    assert made_with == [{"composition": "token", "n": 12}]
    scores = catalog.query(
        "SELECT metric, count(*) AS n FROM clip_scores GROUP BY metric ORDER BY metric"
    ).to_pylist()
    # per generation: 1 text and 1 all-present score; per subject in it: 1 image-alignment and 1 presence score
    subject_slots = 6 * 1 + 6 * 2
    assert scores == [
        {"metric": "all_present", "n": 12},
        {"metric": "image_alignment", "n": subject_slots},
        {"metric": "presence", "n": subject_slots},
        {"metric": "text_alignment", "n": 12},
    ]

    soup = BeautifulSoup(catalog.get_bytes(full["report_uri"]).decode(), "html.parser")
    assert "composition" in soup.get_text() and "token" in soup.get_text()  # the report says how images were composed
    grids = soup.select("section.combination div.image-grid")
    assert len(grids) == 6 * 2  # one grid per (subjects, prompt) combination
    assert all(len(g.find_all("img")) == 1 for g in grids)

    again = customize(_config(tmp_path, tiny_model_dir, tiny_clip, max_k=2))
    assert again["new_generations"] == 0
    assert catalog.query("SELECT count(*) AS n FROM clip_scores").to_pylist()[0]["n"] == subject_slots * 2 + 12 * 2
