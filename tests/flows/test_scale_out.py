"""Scale-out runners on a real model flow: `customize` on the shipped toy model, its tasks run by a
2-process Dask LocalCluster or a local Ray instance (docs/pipeline.md, "Scale-out").

The same run on threads in this process is the reference: the runner decides where work runs,
never what it makes, so masks, images and scores must be identical bit for bit. Torch uses one
thread here, as the Dask and Ray workers do (both set OMP_NUM_THREADS=1 in their workers):
a reduction split over another number of threads may round differently.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone

import pytest

from catalog import load_catalog
from cones_tasks.config import CustomizeConfig
from cones_tasks.toyworld.assets import TOY_MODEL_DIR
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, write_subject_folders

pytestmark = pytest.mark.slow

SUBJECTS = TOY_SUBJECTS[:2]


@pytest.fixture(scope="module")
def subject_folders(tmp_path_factory):
    return write_subject_folders(tmp_path_factory.mktemp("subjects"), SUBJECTS, n=4)


def _config(catalog: str, folders, kind: str, workers: int) -> CustomizeConfig:
    return CustomizeConfig.model_validate(
        {
            "catalog": catalog,
            "model": {"path": str(TOY_MODEL_DIR)},
            "subjects": [{"subject_id": s.id, "class_word": s.class_word, "uri": str(folders[s.id])} for s in SUBJECTS],
            "ingest": {"min_side": 16},
            # a short discovery: 2 rounds × 6 gradient steps of the word-row gates (the default objective)
            "discovery": {"steps": 6, "rounds": 2, "batch_size": 4},
            # C(2,1)+C(2,2) = 3 subsets × 1 template × 2 seeds = 6 images in 3 tasks of 2
            "grid": {"max_k": 2, "templates": ["{subjects}"], "seeds": [0, 1], "steps": 6, "guidance_scale": 3.0,
                     "sample_batch": 2, "task_batch": 2},
            "scoring": {"judge": True, "task_batch": 2},
            "runner": {"kind": kind, "workers": workers},
        }
    )


def _outputs(catalog_uri: str) -> dict[str, object]:
    """What a run made, keyed by content: mask bits per subject, image hash per generation id, every score."""
    catalog = load_catalog(catalog_uri)
    masks = catalog.query("SELECT subject, neuron_count, mask FROM concept_masks ORDER BY subject").to_pylist()
    generations = catalog.query("SELECT id, image_uri FROM generations ORDER BY id").to_pylist()
    scores = catalog.query("SELECT generation, metric, target, value FROM clip_scores ORDER BY ALL").to_pylist()
    return {
        "masks": [{**m, "mask": hashlib.sha256(m["mask"]).hexdigest()} for m in masks],
        # image URIs are content-addressed (sha256 of the PNG) under each catalog's own root
        "generations": [(g["id"], g["image_uri"].rsplit("/", 1)[-1]) for g in generations],
        "scores": scores,
    }


def _run(catalog: str, folders, kind: str, workers: int) -> tuple[dict, float]:
    from flows.customize import customize

    started = time.perf_counter()
    result = customize(_config(catalog, folders, kind, workers))
    return result, time.perf_counter() - started


@pytest.fixture(scope="module")
def reference(prefect_api, subject_folders, tmp_path_factory):
    """The run on one thread in this process."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        catalog = str(tmp_path_factory.mktemp("reference") / "catalog")
        result, _ = _run(catalog, subject_folders, "threads", 1)
    finally:
        torch.set_num_threads(threads)
    return result, _outputs(catalog)


@pytest.mark.parametrize("kind", ["dask", "ray"])
def test_customize_on_a_cluster_makes_what_one_thread_makes(kind, prefect_api, subject_folders, reference, tmp_path, request):
    if kind == "ray":  # the local Ray instance outlives the run by design (one per process): not this session
        import ray

        request.addfinalizer(ray.shutdown)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime

    catalog = str(tmp_path / "catalog")
    started = datetime.now(timezone.utc)
    result, wall_s = _run(catalog, subject_folders, kind, 2)
    print(f"customize on {kind}: {wall_s:.1f} s")
    _, expected = reference
    assert result["failed_subjects"] == {} and result["generations"] == 6 and result["new_generations"] == 6
    outputs = _outputs(catalog)
    assert [m["subject"] for m in outputs["masks"]] == sorted(s.id for s in SUBJECTS)
    assert all(m["neuron_count"] > 0 for m in outputs["masks"])
    assert outputs["masks"] == expected["masks"]
    assert len(outputs["generations"]) == 6 and outputs["generations"] == expected["generations"]
    # the judge's presence of each subject of each image, 2 seeds
    assert sum(s["metric"] == "presence" for s in outputs["scores"]) == 2 * (1 + 1 + 2)
    assert outputs["scores"] == expected["scores"]
    assert result["report_uri"] and load_catalog(catalog).get_bytes(result["report_uri"]).startswith(b"<!doctype html>")

    # The model work ran as Prefect task runs reported to this API by the workers: one per subject for
    # discovery, one per batch of two for generation (task run names are "<task name>-<suffix>"; the
    # server records them from the workers' events, so give it a moment).
    with get_client(sync_client=True) as client:
        for name, count in (("discover-concept", 2), ("generate-batch", 3)):
            deadline = time.monotonic() + 30
            while True:
                runs = client.read_task_runs(task_run_filter=TaskRunFilter(
                    name=TaskRunFilterName(like_=f"{name}-"), start_time=TaskRunFilterStartTime(after_=started)
                ))
                done = [r for r in runs if r.name.startswith(f"{name}-") and r.state and r.state.is_completed()]
                if len(done) >= count or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert len(done) == count, (name, [(r.name, r.state_name) for r in runs])
