"""deployments/prefect.yaml's presets are configs their flows accept, and hold the toy model's own knobs
(the model the deployments point at: `CONES_MODEL=$(cones toy assets toy-model)`, docs/pipeline.md)."""

from __future__ import annotations

import importlib
import re
import typing
from pathlib import Path

import pytest
import yaml

from cones_lab.validate import ValidateParams
from cones_tasks.neurons.objectives import DISCOVERY_FOR
from cones_tasks.toyworld.world import RESOLUTION

REPO = Path(__file__).resolve().parents[2]
ENV = {"CONES_CATALOG": "/data/cones-catalog", "CONES_MODEL": "/models/toy-model", "CONES_SUBJECTS": "/data/subjects"}


def _deployments() -> list[dict]:
    text = (REPO / "deployments" / "prefect.yaml").read_text()
    named = set(re.findall(r"\{\{ \$(\w+) \}\}", re.sub(r"(?m)^\s*#.*$", "", text)))
    assert named == set(ENV), f"the deployments read {sorted(named)}; docs/pipeline.md and this test name {sorted(ENV)}"
    filled = re.sub(r"\{\{ \$(\w+) \}\}", lambda m: ENV.get(m.group(1), m.group(0)), text)
    return yaml.safe_load(filled)["deployments"]


DEPLOYMENTS = _deployments()


def _config(deployment: dict):
    """The deployment's `config` parameter, validated by the type its flow declares for `config`."""
    path, function = deployment["entrypoint"].split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), function)
    config_type = typing.get_type_hints(flow.fn)["config"]
    return config_type.model_validate(deployment["parameters"]["config"])


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: f"{d['entrypoint'].split(':')[1]}/{d['name']}")
def test_each_deployments_parameters_load_into_its_flows_config(deployment):
    config = _config(deployment)
    assert config.catalog == ENV["CONES_CATALOG"]
    if hasattr(config, "model"):
        assert config.model.path == ENV["CONES_MODEL"]


def test_presets_carry_the_toy_models_knobs_where_they_differ_from_the_library_defaults():
    configs = {d["entrypoint"].split(":")[1]: _config(d) for d in DEPLOYMENTS}
    toy_guidance = ValidateParams().guidance_scale  # what validation and eval-model sample the toy model with
    for name in ("customize", "generate_combinations"):
        grid = configs[name].grid
        assert grid.guidance_scale == toy_guidance != type(grid)().guidance_scale, name  # SD's 7.5 over-saturates it
        # Masks must be found the way validation chose for this composition on the toy model.
        assert configs[name].discovery == DISCOVERY_FOR[grid.composition], name
    assert configs["discover_concepts"].discovery == DISCOVERY_FOR[configs["customize"].grid.composition]
    for name in ("customize", "ingest_subjects"):
        # Toy photos are RESOLUTION px; the library default refuses anything below 64 px.
        assert configs[name].ingest.min_side <= RESOLUTION < type(configs[name].ingest)().min_side, name
    assert configs["customize"].scoring.judge and configs["score_generations"].scoring.judge


def test_the_variables_the_deployments_read_are_named_where_users_look():
    for doc in ("README.md", "docs/pipeline.md"):
        text = (REPO / doc).read_text()
        assert all(name in text for name in ENV), (doc, [name for name in ENV if name not in text])


def test_dataset_runs_have_a_compaction_schedule_of_about_180_s():
    """docs/scale.md: during a dataset run compact every ~180 s (a query pays ~0.5 s per ~500 commit files)."""
    compactions = {d["name"]: d for d in DEPLOYMENTS if d["entrypoint"].endswith(":compact_catalog")}
    schedule = compactions["dataset-run"]["schedules"]
    assert [s["interval"] for s in schedule] == [180] and schedule[0]["active"] is False  # on for a run, off after it
    assert _config(compactions["dataset-run"]).tables == ()  # every table: generations, grid_items, clip_scores…
    assert [s["cron"] for s in compactions["daily"]["schedules"]] == ["0 8 * * *"]
