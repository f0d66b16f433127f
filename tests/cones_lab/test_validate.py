"""validate_toy end to end on the shipped toy model (tiny sizes: structure and bookkeeping, not the claims)."""

from __future__ import annotations

import numpy as np
import pytest

from cones_tasks.neurons.objectives import FitObjective, PromptScoreObjective
from cones_tasks.neurons.space import NeuronSpace
from cones_lab.validate import ValidateParams, _misses, _spread, validate_toy
from cones_tasks.toyworld.assets import TOY_MODEL_DIR

TOY_MODEL = TOY_MODEL_DIR  # shipped with the package: a missing model is a failure, not a skip


def test_spread_cycles_evenly():
    assert _spread(["a", "b", "c"], 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_misses_say_why_a_named_subject_is_not_shown():
    from cones_tasks.toyworld.judge import judge
    from cones_tasks.toyworld.render import place_objects, render
    from cones_tasks.toyworld.subjects import ToySubject
    from cones_tasks.toyworld.world import Scene

    a, b = ToySubject("triangle", "yellow", "striped"), ToySubject("circle", "blue", "dotted")
    rng = np.random.default_rng(0)
    drawn = [
        [("triangle", "yellow", "striped"), ("circle", "blue", "dotted")],  # both shown
        [("triangle", "yellow", "striped"), ("circle", "yellow", "striped")],  # b wears a's look
        [("triangle", "yellow", "striped")],  # b absent
        [("triangle", "yellow", "striped"), ("circle", "red", "plain")],  # b's own look lost
    ]
    verdicts = [judge(render(Scene("snow", place_objects(rng, objects, order="left-to-right")))) for objects in drawn]
    assert [v.shows(a) for v in verdicts] == [True] * 4  # the judge reads what was drawn
    misses = _misses(verdicts, [(a, b)] * 4)
    assert misses == {"absent": 1 / 8, "borrowed_look": 1 / 8, "own_look_lost": 1 / 8, "unreadable": 0.0}


def test_validate_toy_reports_every_line_per_strategy():
    from cones_tasks.loading import load_diffusion_model
    from cones_tasks.toyworld.judge import judge
    from cones_tasks.toyworld.subjects import TOY_SUBJECTS

    model = load_diffusion_model(TOY_MODEL)
    paper = dict(steps=2, batch_size=2, rounds=1, eval_draws=0)
    union = [
        PromptScoreObjective(**paper, threshold_value=0.01),
        PromptScoreObjective(**paper, threshold="top_k", threshold_value=5),
        PromptScoreObjective(**paper, threshold_value=0.01, prior_weight=1.0),
    ]
    token = [FitObjective(steps=2, batch_size=2, rounds=1)]
    refine = PromptScoreObjective(**{**paper, "steps": 1}, threshold="top_k", threshold_value=4)
    params = ValidateParams(images_per_line=4, select_images_per_line=2, sample_steps=2, reference_images=2, multi_sizes=(2, 3),
                            prior_images=2, union_refine=refine, prompt_modes=("class", "context"))
    subjects = TOY_SUBJECTS[:2]
    out = validate_toy(model, subjects, judge, candidates=[*union, *token], params=params, progress=False)
    assert set(out["strategies"]) == {"union", "token"}
    paper_run = out["strategies"]["union"]
    tried = [(s["params"], s["prompts"]) for s in paper_run["selection"]]
    assert tried == [(c.model_dump(), mode) for c in union for mode in ("class", "context")]
    assert (paper_run["chosen_params"], paper_run["chosen_prompts"]) in tried
    assert 0 < paper_run["multi_refined_added_neurons"] <= 4  # refine_union adds at most its top-k budget to the union
    size = NeuronSpace.from_unet(model.unet).size
    expected = {"fraction": round(0.01 * size) / size, "top_k": 5 / size}[paper_run["chosen_params"]["threshold"]]
    assert paper_run["neuron_fraction"] == pytest.approx(expected)  # (the prior candidate also shuts 1 %)
    word_run = out["strategies"]["token"]
    assert word_run["chosen_params"]["scope"] == "word" and len(word_run["selection"]) == 2  # one candidate × 2 modes
    assert "multi_refined" not in word_run  # refining a union is the paper strategy's line
    for run in (paper_run, word_run):
        assert set(run["multi"]) == set(run["multi_detail"]) == {"2"}  # 3 > number of subjects: no line
        line = run["multi_detail"]["2"]
        assert set(line) == {"all_present", "per_subject", "per_position", "look_on_other", "misses", "reversed"}
        assert sum(line["misses"].values()) == pytest.approx(1 - line["per_subject"])  # every mention not shown, once
        assert line["all_present"] <= line["per_subject"] == pytest.approx(sum(line["per_position"]) / 2)
        assert line["all_present"] <= min(line["per_position"])  # both present implies each present
        rates = [run["single"]["hit_masked"], run["single"]["hit_unmasked"], run["context"], run["crosstalk"],
                 *(v for k, v in line.items() if k not in ("per_position", "misses")), *line["misses"].values()]
        assert all(0.0 <= r <= 1.0 for r in rates)
        assert 0 < run["bytes_per_concept"] < 4 * size * run["neuron_fraction"] + 16  # sparse indices, not a dense tensor
    assert set(out["ceilings"]) == {"single", "multi"} and set(out["ceilings"]["multi"]) == {"2"}
    with pytest.raises(ValueError, match="must differ"):
        validate_toy(model, subjects, judge, params=params.model_copy(update={"report_seed": params.select_seed}))
    with pytest.raises(ValueError, match="no DiscoveryParams candidate for strategies"):
        validate_toy(model, subjects, judge, candidates=union, params=params)


def test_validate_runs_the_combination_step_for_every_pair_it_judges():
    """With ValidateParams.combination set, each pair is judged with the masks its combination step learned."""
    from cones_tasks.loading import load_diffusion_model
    from cones_tasks.neurons.combination import CombinationParams
    from cones_tasks.neurons.objectives import GateObjective
    from cones_tasks.toyworld.judge import judge
    from cones_tasks.toyworld.subjects import TOY_SUBJECTS

    model = load_diffusion_model(TOY_MODEL)
    gate = GateObjective(steps=4, rounds=1, batch_size=2, density=0.01)
    base = dict(images_per_line=3, sample_steps=2, reference_images=2, scene_references=2, multi_sizes=(2,),
                strategies=("token",), ceilings=False, reversed_order=False)
    subjects = TOY_SUBJECTS[:3]
    for pictures in ("together", "composite"):
        params = ValidateParams(**base, combination=CombinationParams(steps=2, batch_size=2), combination_pictures=pictures,
                                combination_images=4)
        run = validate_toy(model, subjects, judge, candidates=[gate], params=params, progress=False)["strategies"]["token"]
        step = run["combination"]
        assert step["pairs"] == 3 and step["images_per_pair"] == 4 and step["pictures"] == pictures  # every pair of 3
        assert 0 <= step["neuron_fraction"] <= 0.01 and step["seconds_per_pair"] > 0  # each member's cap holds
    plain = validate_toy(model, subjects, judge, candidates=[gate], params=ValidateParams(**base), progress=False)
    assert "combination" not in plain["strategies"]["token"]


def test_cli_validate_with_a_candidates_file(tmp_path):
    import json

    from typer.testing import CliRunner

    from cones_cli.app import app

    (tmp_path / "c.json").write_text(json.dumps([{"scope": "prompt", "objective": "score", "steps": 1, "batch_size": 2,
                                                  "rounds": 1, "threshold": "top_k", "threshold_value": 3, "eval_draws": 0}]))
    args = ["toy", "validate", "--subjects", "2", "--n", "2", "--select-n", "2", "--steps", "1", "--candidates",
            str(tmp_path / "c.json"), "--strategy", "union", "--prompts", "context", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    paper = data["strategies"]["union"]
    assert {"single", "context", "crosstalk", "multi", "neuron_fraction", "bytes_per_concept"} <= set(paper)
    assert paper["chosen_params"]["threshold_value"] == 3 and paper["chosen_prompts"] == "context"
    bad = CliRunner().invoke(app, [*args[:-3], "--prompts", "scene", "--json"])
    assert bad.exit_code == 2 and "unknown prompt mode" in bad.output
    bad = CliRunner().invoke(app, [*args[:-5], "--strategy", "mix", "--json"])
    assert bad.exit_code == 2 and "unknown strategy" in bad.output
    bad = CliRunner().invoke(app, [*args[:-1], "--scene-objects", "2,5", "--json"])
    assert bad.exit_code == 2 and "--scene-objects" in bad.output and "not a list of object counts" in bad.output
    bad = CliRunner().invoke(app, [*args[:-1], "--layout", '{"inside": -1}', "--json"])
    assert bad.exit_code == 2 and "--layout" in bad.output and "is not a layout" in bad.output


def test_cli_validate_quick_runs_its_lines_on_a_short_discovery(tmp_path):
    """The fast twin of the slow test below: `validate --quick` as a user runs it (token composition, scene photos,
    multi 2, 3 and 4 beside their ceilings, the flat output), with a 2-step discovery passed as its candidate instead of the 800-step default."""
    import json

    from typer.testing import CliRunner

    from cones_cli.app import app

    short = {"objective": "fit", "steps": 2, "rounds": 1, "batch_size": 2}  # fit: 2 steps shut some neurons
    (tmp_path / "c.json").write_text(json.dumps([short]))
    args = ["toy", "validate", "--quick", "--subjects", "3", "--n", "2", "--steps", "1", "--scene-references", "2",
            "--candidates", str(tmp_path / "c.json"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["strategy"] == "token" and data["selection"] == [] and data["scene_references"] == 2
    assert data["layout"] == {"inside": 4.0, "outside": 4.0, "lone": 1.0, "boxes": {}}  # the pipeline's attention control, by default
    assert {k: data["chosen_params"][k] for k in short} == short  # the candidate given, not the recommended one
    assert data["chosen_params"]["scope"] == "word"
    assert set(data["single"]) == {"hit_masked", "hit_unmasked"} and set(data["multi"]) == {"2", "3"}  # 3 subjects: no 4
    assert data["details"]["images_per_line"] == 2 and data["details"]["sample_steps"] == 1
    rates = [*data["single"].values(), data["context"], data["crosstalk"], *data["multi"].values()]
    # each rate is a share of 2 judged images, and multi 2 is all_present of its detail
    assert all(r in (0.0, 0.5, 1.0) for r in rates), rates
    assert data["multi"]["2"] == data["multi_detail"]["2"]["all_present"]
    assert 0 < data["neuron_fraction"] < 1 and data["bytes_per_concept"] > 0
    # the spelled-out ceilings of the same lines (no mask), so multi k reads against what the model can draw
    assert set(data["ceilings"]["multi"]) == {"2", "3"} and data["ceilings"]["single"] in (0.0, 0.5, 1.0)


def test_cli_validate_quick_reports_the_combination_step(tmp_path):
    """`validate --quick --combination ...`: every pair's step ran, and its report sits beside the lines it changed."""
    import json

    from typer.testing import CliRunner

    from cones_cli.app import app

    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"objective": "gate", "steps": 2, "rounds": 1, "batch_size": 2}]))
    args = ["toy", "validate", "--quick", "--subjects", "3", "--n", "2", "--steps", "1", "--scene-references", "2",
            "--candidates", str(path), "--combination", '{"steps": 2, "batch_size": 2}', "--combination-pictures", "composite",
            "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["combination"]["pairs"] == 3 and data["combination"]["pictures"] == "composite"
    assert data["combination"]["params"]["steps"] == 2 and set(data["multi"]) == {"2", "3"}
    bad = CliRunner().invoke(app, [*args[:-2], "--combination-pictures", "photos", "--json"])
    assert bad.exit_code == 2 and "photos" in " ".join(bad.output.split()), bad.output  # names the value refused


@pytest.mark.slow
def test_cli_validate_quick_prints_the_recommended_strategy_flat():
    import json

    from typer.testing import CliRunner

    from cones_cli.app import app

    result = CliRunner().invoke(app, ["toy", "validate", "--quick", "--subjects", "2", "--n", "2", "--steps", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["strategy"] == "token" and data["selection"] == []  # the recommended setting only
    assert set(data["single"]) == {"hit_masked", "hit_unmasked"} and set(data["multi"]) == {"2"}
    assert {"context", "crosstalk"} <= set(data) and set(data["ceilings"]["multi"]) == {"2"}
