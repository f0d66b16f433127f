"""`cones config schema|example|docs`: what they print is what `cones run` accepts, and docs/config.md is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cones_cli.app import app
from cones_cli.config_cmds import config_class, reachable_models, render_reference
from cones_cli.flow_cmds import FLOWS, load_config

REPO = Path(__file__).resolve().parents[2]
FLOW_NAMES = list(FLOWS)


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result


def test_every_field_of_every_config_model_has_a_description():
    missing = []
    for flow in FLOW_NAMES:
        for model in reachable_models(config_class(flow)):
            missing += [f"{model.__name__}.{key}" for key, field in model.model_fields.items()
                        if not (field.description or "").strip()]
    assert not missing, f"fields without a description (Field(description=...)): {sorted(set(missing))}"


def test_reachable_models_finds_parts_behind_optional_and_tuples():
    names = {m.__name__ for m in reachable_models(config_class("customize"))}
    # ClipRef only through `scoring: ScoringParams | None` -> `clip: ClipRef | None`; SubjectSource through a tuple.
    assert {"ClipRef", "ScoringParams", "SubjectSource", "GenerationGrid", "RunnerConfig"} <= names
    # every objective of the discovery union, the nested `score` ones too
    assert {"FitObjective", "GateObjective", "PromptScoreObjective", "WordScoreObjective"} <= names


def test_docs_config_md_is_current():
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == render_reference(), "docs/config.md is stale: run `cones config docs > docs/config.md`"


@pytest.mark.parametrize("flow", FLOW_NAMES)
def test_example_is_a_config_cones_run_accepts(flow, tmp_path):
    result = _cli("config", "example", flow)
    assert result.exit_code == 0, result.output
    assert result.output.count("\n# ") >= 2  # commented: each key's description above it
    path = tmp_path / "run.yaml"
    path.write_text(result.output)
    config = load_config(path, FLOWS[flow][2])  # the loader `cones run` uses
    assert type(config).__name__ == FLOWS[flow][2]
    # Every key left out is optional, and is listed (commented out) with its default.
    data = yaml.safe_load(result.output)
    for key, field in type(config).model_fields.items():
        assert key in data or (not field.is_required() and f"\n# {key}: " in result.output), key


def test_customize_example_names_sd_and_clip_and_its_comments_match_the_models():
    out = _cli("config", "example", "customize").output
    data = yaml.safe_load(out)
    assert data["model"]["path"].endswith("stable-diffusion-v1-5")
    assert data["scoring"]["clip"]["model_name"] == "ViT-L-14"
    from cones_tasks.config import ModelRef

    assert f"# {ModelRef.model_fields['path'].description}" in out


def test_schema_is_the_models_json_schema():
    result = _cli("config", "schema", "customize")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert set(schema["required"]) == {"catalog", "model", "subjects"}
    assert schema["additionalProperties"] is False  # misspelt keys are refused, and the schema says so
    assert "stable" not in result.output.lower()  # a schema, not an example
    paper = schema["$defs"]["PromptScoreObjective"]["properties"]
    assert paper["threshold"]["enum"] == ["tau", "fraction", "top_k"]
    for flow in FLOW_NAMES:
        assert json.loads(_cli("config", "schema", flow).output)["title"] == FLOWS[flow][2]


def test_discover_schema_shows_the_objectives_as_a_discriminated_union():
    schema = json.loads(_cli("config", "schema", "discover").output)
    discovery = schema["properties"]["discovery"]
    assert discovery["discriminator"]["propertyName"] == "objective"
    mapping = discovery["discriminator"]["mapping"]
    assert mapping["fit"] == "#/$defs/FitObjective" and mapping["gate"] == "#/$defs/GateObjective"
    assert mapping["score"]["discriminator"] == {
        "propertyName": "scope",
        "mapping": {"prompt": "#/$defs/PromptScoreObjective", "word": "#/$defs/WordScoreObjective"},
    }
    defs = schema["$defs"]
    # each objective has its own keys: the fit's learning rate is not a key of the paper's score, and back
    assert "learning_rate" in defs["FitObjective"]["properties"] and "learning_rate" not in defs["PromptScoreObjective"]["properties"]
    assert "threshold_value" not in defs["FitObjective"]["properties"]
    assert defs["PromptScoreObjective"]["properties"]["threshold_value"]["default"] == 0.1  # validation's 10 %, not 0.002


def test_the_schema_takes_what_the_config_takes_with_the_objective_left_out():
    """A JSON-schema validator (Prefect's, on a deployment's parameters) accepts discovery settings without
    `objective`, as the config does (gate, the default); a key of another objective is refused by both."""
    import jsonschema

    schema = json.loads(_cli("config", "schema", "discover").output)
    base = {"catalog": "c", "model": {"path": "m"}, "subjects": ["a"]}
    for discovery, objective in (({"steps": 2, "batch_size": 2}, "GateObjective"),
                                 ({"objective": "score", "scope": "prompt", "threshold_value": 0.05}, "PromptScoreObjective")):
        jsonschema.validate({**base, "discovery": discovery}, schema)
        config = config_class("discover").model_validate({**base, "discovery": discovery})
        assert type(config.discovery).__name__ == objective
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**base, "discovery": {"objective": "fit", "threshold_value": 0.1}}, schema)


def test_unknown_flow_is_refused_with_the_choices():
    result = _cli("config", "example", "custom")
    assert result.exit_code == 2 and "customize" in result.output


def test_reference_types_read_as_words():
    from typing import Annotated, Literal

    from pydantic import Field

    from cones_cli.config_cmds import _type_name
    from cones_tasks.config import ClipRef

    assert _type_name(tuple[Annotated[int, Field(ge=1)], ...]) == "list of `int`"
    assert _type_name(ClipRef | None) == "[ClipRef](#clipref) or null"
    assert _type_name(Literal["a", "b"]) == '`"a"` \\| `"b"`'


def test_a_model_default_that_sets_fields_names_them():
    """Discovery's layout is generation's Layout with inside 2: the reference must not call it the Layout's defaults."""
    from cones_cli.config_cmds import _default
    from cones_tasks.config import GenerationGrid
    from cones_tasks.neurons.objectives import GateObjective

    assert _default(GateObjective.model_fields["layout"]) == 'its defaults but `{"inside": 2.0}`'
    assert _default(GenerationGrid.model_fields["layout"]) == "its defaults"
