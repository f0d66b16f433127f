"""Ray on a model flow, small (the fast twin of tests/flows/test_scale_out.py's Ray run, slow): `customize` on the
toy architecture with random weights, two subjects, a 4-step discovery, its tasks run by a 2-CPU local Ray, makes
the masks, images and scores of the same run on one thread in this process, bit for bit.

Needs the ray extra (`pip install -e '.[ray]'`; `make test` installs it); skipped without it.
"""

from __future__ import annotations

import hashlib

import pytest

from catalog import load_catalog
from cones_tasks.config import CustomizeConfig
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, write_subject_folders

pytest.importorskip("prefect_ray", reason="the ray extra: pip install -e '.[ray]'")

SUBJECTS = TOY_SUBJECTS[:2]


def _config(catalog: str, model_dir, folders, kind: str) -> CustomizeConfig:
    return CustomizeConfig.model_validate({
        "catalog": catalog,
        "model": {"path": str(model_dir)},
        "subjects": [{"subject_id": s.id, "class_word": s.class_word, "uri": str(folders[s.id])} for s in SUBJECTS],
        "ingest": {"min_side": 16},
        # fit: a few steps shut some neurons (the default gate needs more to close any gate)
        "discovery": {"objective": "fit", "steps": 2, "rounds": 2, "batch_size": 2},
        # C(2,1) + C(2,2) = 3 subsets × 1 template × 2 seeds = 6 images in 3 tasks of 2
        "grid": {"max_k": 2, "templates": ["{subjects}"], "seeds": [0, 1], "steps": 2, "sample_batch": 2, "task_batch": 2},
        "scoring": {"judge": True, "task_batch": 2},
        "runner": {"kind": kind, "workers": 2 if kind == "ray" else 1},
    })


def _outputs(catalog_uri: str) -> dict:
    catalog = load_catalog(catalog_uri)
    masks = catalog.query("SELECT subject, neuron_count, mask FROM concept_masks ORDER BY subject").to_pylist()
    return {
        "masks": [{**m, "mask": hashlib.sha256(m["mask"]).hexdigest()} for m in masks],
        "images": sorted(r["image_uri"].rsplit("/", 1)[-1] for r in catalog.query("SELECT image_uri FROM generations").to_pylist()),
        "scores": catalog.query("SELECT generation, metric, target, value FROM clip_scores ORDER BY ALL").to_pylist(),
    }


def test_customize_on_a_local_ray_makes_what_one_thread_makes(prefect_api, tiny_model_dir, tmp_path, request):
    import ray
    import torch

    from flows.customize import customize

    request.addfinalizer(ray.shutdown)  # the local Ray instance outlives a run by design (one per process)
    folders = write_subject_folders(tmp_path / "subjects", SUBJECTS, n=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray workers (OMP_NUM_THREADS=1): one reduction order
    try:
        customize(_config(str(tmp_path / "threads"), tiny_model_dir, folders, "threads"))
    finally:
        torch.set_num_threads(threads)
    result = customize(_config(str(tmp_path / "ray"), tiny_model_dir, folders, "ray"))
    assert ray.is_initialized()  # the runner started the local Ray the tasks ran on
    assert result["failed_subjects"] == {} and result["generations"] == 6 and result["new_generations"] == 6
    on_ray, expected = _outputs(str(tmp_path / "ray")), _outputs(str(tmp_path / "threads"))
    assert [m["subject"] for m in on_ray["masks"]] == sorted(s.id for s in SUBJECTS)
    assert all(m["neuron_count"] > 0 for m in on_ray["masks"])
    assert on_ray == expected
