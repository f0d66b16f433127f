"""Discovery settings as typed objectives, and what names a mask (docs/discovery.md, "A mask's identity")."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cones_tasks.config import GenerateConfig, mask_params
from cones_tasks.neurons.objectives import (
    DISCOVERY_FOR,
    FitObjective,
    GateObjective,
    PromptScoreObjective,
    WordScoreObjective,
    legacy_mask_identity,
    parse_discovery,
)

OBJECTIVES = (FitObjective, GateObjective, PromptScoreObjective, WordScoreObjective)
# A value other than every objective's default for every field they have (objective and scope choose the class).
CHANGED = {
    "steps": 3, "rounds": 2, "batch_size": 5, "learning_rate": 0.07, "key_step": 0.5, "fit_tolerance": 0.01,
    "composed": 1, "threshold": "top_k", "threshold_value": 7, "rho": 0.5, "prior_weight": 1.0, "attention": "both",
    "eval_draws": 1, "density": 0.05, "layout": None,
}


def test_the_settings_the_readme_names_work_as_written():
    assert parse_discovery({}) == GateObjective()  # objective: gate is the default
    assert (GateObjective().density, GateObjective().rounds * GateObjective().steps) == (0.01, 800)
    paper = parse_discovery({"scope": "prompt", "objective": "score"})
    # validation's tuned setting for the paper's statistic (docs/research/validate-runs.md), not a library-wide 0.002
    assert paper == DISCOVERY_FOR["union"] == PromptScoreObjective()
    assert (paper.threshold, paper.threshold_value, paper.rounds, paper.steps, paper.batch_size) == ("fraction", 0.1, 30, 8, 4)
    assert parse_discovery({"objective": "fit", "scope": "word", "steps": 20, "rounds": 10, "batch_size": 6}) == FitObjective()
    assert isinstance(parse_discovery({"objective": "score", "scope": "word"}), WordScoreObjective)
    # no `discovery` at all: the one validation chose for the grid's composition
    base = {"catalog": "c", "model": {"path": "m"}, "subjects": ["a"]}
    assert GenerateConfig.model_validate({**base, "grid": {"composition": "union"}}).discovery == PromptScoreObjective()
    assert GenerateConfig.model_validate(base).discovery == GateObjective() == DISCOVERY_FOR["token"]


def test_each_objective_refuses_the_others_keys_with_a_clear_error():
    with pytest.raises(ValidationError, match="extra"):
        parse_discovery({"objective": "fit", "threshold_value": 0.1})  # fit has no budget
    with pytest.raises(ValidationError, match="extra"):
        parse_discovery({"objective": "score", "scope": "prompt", "learning_rate": 0.1})
    with pytest.raises(ValidationError, match="extra"):
        parse_discovery({"objective": "score", "scope": "word", "eval_draws": 1})  # no every-token eval at the word
    with pytest.raises(ValidationError, match="objective 'score' needs a scope"):
        parse_discovery({"objective": "score"})


@pytest.mark.parametrize("kind", OBJECTIVES)
def test_every_field_is_in_the_identity_or_only_reports(kind):
    fields = set(kind.model_fields)
    assert kind.identity_fields | kind.report_only == fields  # no field is left to the default rule yet
    assert not kind.identity_fields & kind.report_only


@pytest.mark.parametrize("kind", OBJECTIVES)
def test_a_mask_is_named_by_what_changes_its_neurons_only(kind):
    base = kind()
    tagged = {"objective", "scope"}
    for name in sorted(set(kind.model_fields) - tagged):
        changed = base.model_copy(update={name: CHANGED[name]})
        same = mask_params(changed, seed=0) == mask_params(base, seed=0)
        assert same == (name in kind.report_only), name  # eval_draws reuses the mask; every other field does not
    assert mask_params(base, seed=1) != mask_params(base, seed=0)
    assert mask_params(base, seed=0)["version"] == kind.version


def test_discovery_under_a_layout_is_named_and_off_keeps_the_ids_from_before_it():
    for kind in (FitObjective, GateObjective):
        on, off = mask_params(kind(), seed=0), mask_params(kind(layout=None), seed=0)
        assert on["discovery"]["layout"] == {"inside": 2.0, "outside": 4.0, "lone": 1.0, "boxes": {}}
        assert "layout" not in off["discovery"] and on != off
        assert mask_params(kind(layout={"inside": 1, "outside": 4}), seed=0) != on
    with pytest.raises(ValidationError, match="strengths only"):
        parse_discovery({"objective": "gate", "layout": {"boxes": {"2": [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]}}})


def test_a_new_field_at_its_default_leaves_identities_unchanged():
    class WithBudget(FitObjective):  # what adding a knob to the fit objective looks like
        neuron_budget: int | None = None

    assert mask_params(WithBudget(), seed=0) == mask_params(FitObjective(), seed=0)
    assert mask_params(WithBudget(neuron_budget=1000), seed=0) != mask_params(FitObjective(), seed=0)
    assert mask_params(WithBudget(neuron_budget=1000), seed=0)["discovery"]["neuron_budget"] == 1000


def test_legacy_flat_params_read_as_todays_identity():
    flat = {"steps": 2, "batch_size": 2, "threshold": "fraction", "threshold_value": 0.002, "rounds": 1, "rho": 0.0,
            "prior_weight": 0.0, "attention": "cross", "eval_draws": 1, "scope": "word", "objective": "fit",
            "learning_rate": 0.1, "key_step": 0.2, "fit_tolerance": 0.001, "composed": 0}
    fit = FitObjective(steps=2, batch_size=2, rounds=1, layout=None)  # found before discovery had a layout
    assert legacy_mask_identity({"discovery": flat, "seed": 0}) == mask_params(fit, seed=0)
    paper = {**flat, "scope": "prompt", "objective": "score", "threshold_value": 0.01}
    assert legacy_mask_identity({"discovery": paper, "seed": 3}) == mask_params(
        PromptScoreObjective(steps=2, batch_size=2, rounds=1, threshold_value=0.01, eval_draws=9), seed=3
    )
    assert legacy_mask_identity(mask_params(fit, seed=0)) is None  # already today's
    older = {k: v for k, v in flat.items() if k != "key_step"}  # before key_step: another algorithm, not resolved
    assert legacy_mask_identity({"discovery": older, "seed": 0}) is None
    # written once `density` had come with the gate objective: sixteen fields, the gate's read as a gate
    gate = {**flat, "objective": "gate", "density": 0.02}
    assert legacy_mask_identity({"discovery": gate, "seed": 0}) == mask_params(
        GateObjective(steps=2, batch_size=2, rounds=1, density=0.02, learning_rate=0.1, key_step=0.2, layout=None), seed=0
    )
    assert legacy_mask_identity({"discovery": {**flat, "density": 0.5}, "seed": 0}) == mask_params(fit, seed=0)
