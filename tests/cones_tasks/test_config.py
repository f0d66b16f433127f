"""Configs refuse bad input with the field named (issue #6, item 7)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cones_tasks.config import CustomizeConfig, GenerateConfig, GenerationGrid, RunnerConfig, ScoringParams

MINIMAL = {
    "catalog": "/tmp/cat",
    "model": {"path": "/models/toy"},
    "subjects": [{"subject_id": "striped-yellow-triangle", "class_word": "triangle", "uri": "/data/tri"}],
}


def test_minimal_config_fills_typed_defaults_and_round_trips_json():
    config = CustomizeConfig.model_validate(MINIMAL)
    assert config.grid.max_k == 3 and config.runner.kind == "threads" and config.discovery.attention == "cross"
    assert CustomizeConfig.model_validate_json(config.model_dump_json()) == config
    assert config.discover_config().subjects == ("striped-yellow-triangle",)
    assert config.score_config() is None


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"grid": {"max_k": "three"}}, "grid.max_k"),
        ({"grid": {"seeds": [0, "x"]}}, "grid.seeds.1"),
        ({"grid": {"templates": ["a photo"]}}, "grid.templates"),
        ({"runner": {"kind": "kubernetes"}}, "runner.kind"),
        ({"discovery": {"steps": 0}}, "discovery.gate.steps"),  # the objective is named too
        ({"discovery": {"objective": "score", "scope": "prompt", "threshold_value": 5}}, "discovery.score.prompt"),
        ({"subjects": [{"subject_id": "../etc", "class_word": "dog", "uri": "/x"}]}, "subjects.0.subject_id"),
        ({"modle": {"path": "/x"}}, "modle"),
    ],
)
def test_wrong_input_is_refused_with_the_field_named(patch, field):
    with pytest.raises(ValidationError) as info:
        CustomizeConfig.model_validate({**MINIMAL, **patch})
    locs = [".".join(map(str, e["loc"])) for e in info.value.errors()]
    assert field in locs, locs


def test_configs_are_frozen_and_parts_validate():
    grid = GenerationGrid(templates=("{subjects} on snow",), seeds=(1, 2))
    with pytest.raises(ValidationError):
        grid.max_k = 2  # type: ignore[misc]
    layout = {"inside": 4.0, "outside": 4.0, "lone": 1.0, "boxes": {}}
    assert grid.sampler_settings() == {"steps": 25, "guidance_scale": 7.5, "composition": "token", "layout": layout}
    # the layout is named only where it acts: a grid without it keeps the ids it had before layouts existed
    off = {"steps": 25, "guidance_scale": 7.5}
    assert GenerationGrid(layout=None).sampler_settings() == {**off, "composition": "token"}
    assert GenerationGrid(composition="union").sampler_settings() == {**off, "composition": "union"}
    assert GenerationGrid(composition="union").layout_in_effect is None
    with pytest.raises(ValidationError, match="threads run in this process"):
        RunnerConfig(kind="threads", address="tcp://x:8786")
    with pytest.raises(ValidationError, match="nothing to do"):
        ScoringParams()
    with pytest.raises(ValidationError, match="unique"):
        CustomizeConfig.model_validate({**MINIMAL, "subjects": MINIMAL["subjects"] * 2})
    # "Dog" and "dog" would share a folder on macOS and Windows.
    twins = [{**MINIMAL["subjects"][0], "subject_id": name} for name in ("Dog", "dog")]
    with pytest.raises(ValidationError, match="ignoring case"):
        CustomizeConfig.model_validate({**MINIMAL, "subjects": twins})


@pytest.mark.parametrize("subject_id", ["a/b", "Dog Name", ".hidden", "CON"])
def test_a_bad_subject_id_is_one_error_not_two(subject_id):
    bad = [{**MINIMAL["subjects"][0], "subject_id": subject_id}]
    with pytest.raises(ValidationError) as info:
        CustomizeConfig.model_validate({**MINIMAL, "subjects": bad})
    errors = [(".".join(map(str, e["loc"])), e["msg"]) for e in info.value.errors()]
    assert len(errors) == 1 and errors[0][0] == "subjects.0.subject_id", errors
    assert "Rule: a subject id is" in errors[0][1]
    with pytest.raises(ValidationError, match="at least one subject"):
        CustomizeConfig.model_validate({**MINIMAL, "subjects": []})
    assert CustomizeConfig.model_json_schema()["properties"]["subjects"]["minItems"] == 1


def test_the_composition_must_match_how_the_masks_were_discovered():
    base = {"catalog": "c", "model": {"path": "m"}, "subjects": ["a"]}
    assert GenerateConfig.model_validate(base).grid.composition == "token"  # the defaults agree
    paper = {"scope": "prompt", "objective": "score"}
    GenerateConfig.model_validate({**base, "discovery": paper, "grid": {"composition": "union"}})
    with pytest.raises(ValidationError, match=r"set discovery to \{objective: score, scope: prompt\}, or use composition 'token'"):
        GenerateConfig.model_validate({**base, "discovery": {"steps": 4}, "grid": {"composition": "union"}})
    with pytest.raises(ValidationError, match=r"set discovery to \{objective: fit\} \(the default\)"):
        CustomizeConfig.model_validate({**base, "subjects": [{"subject_id": "a", "class_word": "dog", "uri": "x"}],
                                        "discovery": paper})
