"""A sampled grid through `cones run generate`: SIGKILLed mid-generation, rerun, it completes the same combinations.

The sample is drawn again by the rerun (another process), so this holds only because a sample is a
function of its seed and the subject list; the rerun then generates exactly what the kill left out.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
from cones_runs import ConesRun, cones_env

from catalog import load_catalog

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL of a real process")

SUBJECTS = [f"subject-{i}" for i in range(8)]
GRID = {"combinations": {"sample": 6, "k": [2, 3], "seed": 11}, "seeds": [0, 1], "steps": 2, "sample_batch": 2,
        "task_batch": 2, "templates": ["{subjects}", "{subjects} on night"]}
GRID_SIZE = 6 * 2 * 2 * 2  # 6 combinations per k, 2 k, 2 templates, 2 seeds
SKIPPED = re.compile(r"generate-combinations: (\d+) of (\d+) generations already in the catalog")


def _catalog_with_masks(root, model_dir) -> str:
    """Eight subjects with random 1 % masks on the tiny model (discovery is not what is tested here)."""
    from cones_tasks.config import FitObjective, mask_params
    from cones_tasks.loading import load_diffusion_model
    from cones_tasks.neurons.masks import ConceptMask
    from cones_tasks.neurons.space import NeuronSpace

    uri = str(root / "catalog")
    catalog = load_catalog(uri)
    space = NeuronSpace.from_unet(load_diffusion_model(model_dir).unet)
    catalog.write_model(space, source=str(model_dir))
    rng = np.random.default_rng(0)
    for i, subject in enumerate(SUBJECTS):
        catalog.write_subject(subject, class_word=("circle", "square", "triangle")[i % 3])
        indices = rng.choice(space.size, size=max(1, space.size // 100), replace=False)
        catalog.write_mask(subject=subject, mask=ConceptMask.from_indices(space, indices), params=mask_params(FitObjective(), seed=0))
    return uri


def _planned_ids(config: dict) -> set[str]:
    from cones_tasks.config import GenerateConfig
    from catalog.planning import PlanTally, plan_chunks
    from flows.generate_combinations import resolve_masks

    parsed = GenerateConfig.model_validate({**config, "catalog": config["catalog"] + "-empty"})
    resolved = resolve_masks.fn(config["catalog"], parsed.model, parsed.subjects, parsed.discovery, parsed.discovery_seed)
    tally = PlanTally()
    for _ in plan_chunks(parsed, resolved, tally=tally):
        pass
    return set(__import__("pyarrow").chunked_array(tally.ids).to_pylist())


@pytest.mark.slow  # ~80 s: a Prefect server, two cones processes
def test_a_killed_sampled_run_rerun_completes_the_same_combinations(tmp_path, tiny_model_dir, prefect_api):
    config = {"catalog": _catalog_with_masks(tmp_path, tiny_model_dir), "model": {"path": str(tiny_model_dir)},
              "subjects": SUBJECTS, "grid": GRID, "runner": {"kind": "threads", "workers": 2}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    args = ["run", "generate", "--config", str(tmp_path / "run.json"), "--json"]
    expected = _planned_ids(config)
    assert len(expected) == GRID_SIZE

    killed = ConesRun(args, cones_env(tmp_path / "prefect-home"))
    for _ in range(2):  # two of its twelve batches committed, then the kill
        killed.wait_for(r"Task run 'generate-batch-\w+' - Finished", timeout=600)
    killed.kill()
    catalog = load_catalog(config["catalog"])
    after_kill = {r["id"] for r in catalog.query("SELECT id FROM generations").to_pylist()}
    assert 4 <= len(after_kill) < GRID_SIZE and after_kill <= expected

    rerun = ConesRun(args, cones_env(tmp_path / "prefect-home"))
    assert rerun.finish(timeout=600) == 0, rerun.log[-5000:]
    match = SKIPPED.search(rerun.log)
    assert match and (int(match.group(1)), int(match.group(2))) == (len(after_kill), GRID_SIZE), rerun.log[-3000:]
    result = rerun.result()
    assert result["new"] == GRID_SIZE - len(after_kill)
    rows = catalog.query("SELECT id, subjects FROM generations").to_pylist()
    grid = {r["generation"] for r in catalog.query("SELECT generation FROM grid_items WHERE grid = ?", [result["grid"]]).to_pylist()}
    assert len(rows) == GRID_SIZE == result["generations"] and {r["id"] for r in rows} == expected == grid
    sizes = sorted(len(r["subjects"]) for r in rows)
    assert sizes == [2] * (GRID_SIZE // 2) + [3] * (GRID_SIZE // 2)


def test_resolve_masks_finds_every_subject_in_two_queries_and_names_the_missing(tmp_path, tiny_model_dir):
    from cones_tasks.config import FitObjective, ModelRef
    from flows.generate_combinations import MissingMaskError, resolve_masks

    uri = _catalog_with_masks(tmp_path, tiny_model_dir)
    model = ModelRef(path=str(tiny_model_dir))
    resolved = resolve_masks.fn(uri, model, tuple(SUBJECTS), FitObjective(), 0)
    assert list(resolved.class_words) == SUBJECTS and resolved.class_words["subject-4"] == "square"
    stored = {m["subject"]: m["mask_id"] for m in load_catalog(uri).query("SELECT subject, mask_id FROM concept_masks").to_pylist()}
    assert resolved.mask_ids == stored
    with pytest.raises(MissingMaskError, match=r"no concept mask for \['subject-9'\]"):
        resolve_masks.fn(uri, model, (*SUBJECTS, "subject-9"), FitObjective(), 0)
    with pytest.raises(MissingMaskError):
        resolve_masks.fn(uri, model, tuple(SUBJECTS), FitObjective(), 1)  # masks of another discovery seed
