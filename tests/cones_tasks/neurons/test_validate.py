"""validate_toy end to end on the shipped toy model (tiny sizes: structure and bookkeeping, not the claims)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cones_tasks.neurons.discovery import DiscoveryParams
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.neurons.validate import ValidateParams, _spread, validate_toy

TOY_MODEL = Path(__file__).resolve().parents[3] / "assets" / "toy-model"


def test_spread_cycles_evenly():
    assert _spread(["a", "b", "c"], 7) == ["a", "b", "c", "a", "b", "c", "a"]


@pytest.mark.skipif(not (TOY_MODEL / "model_index.json").is_file(), reason="toy model not built (cones toy train)")
def test_validate_toy_reports_every_line():
    from cones_tasks.loading import load_diffusion_model
    from cones_tasks.toyworld.judge import judge
    from cones_tasks.toyworld.subjects import TOY_SUBJECTS

    model = load_diffusion_model(TOY_MODEL)
    candidates = [
        DiscoveryParams(steps=2, batch_size=2, rounds=1, threshold_value=0.01, eval_draws=0),
        DiscoveryParams(steps=2, batch_size=2, rounds=1, threshold="top_k", threshold_value=5, eval_draws=0),
    ]
    candidates.append(DiscoveryParams(steps=2, batch_size=2, rounds=1, threshold_value=0.01, eval_draws=0, prior_weight=1.0))
    refine = DiscoveryParams(steps=1, batch_size=2, rounds=1, threshold="top_k", threshold_value=4, eval_draws=0)
    params = ValidateParams(images_per_line=4, select_images_per_line=2, sample_steps=2, reference_images=2, multi_sizes=(2, 3),
                            prior_images=2, union_refine=refine, prompt_modes=("class", "context"))
    subjects = TOY_SUBJECTS[:2]
    out = validate_toy(model, subjects, judge, candidates=candidates, params=params, progress=False)
    tried = [(s["params"], s["prompts"]) for s in out["selection"]]
    assert tried == [(c.model_dump(), mode) for c in candidates for mode in ("class", "context")]
    assert (out["chosen_params"], out["chosen_prompts"]) in tried
    assert all(0.0 <= s["context"] <= 1.0 for s in out["selection"])
    assert set(out["multi"]) == {"2"}  # 3 > number of subjects: no line
    assert set(out["multi_full_prompt"]) == set(out["multi_refined"]) == {"2"}
    assert 0 < out["multi_refined_added_neurons"] <= 4  # refine_union adds at most its top-k budget to the union
    rates = [out["single"]["hit_masked"], out["single"]["hit_unmasked"], out["single"]["hit_full_prompt"], out["context"],
             out["crosstalk"], out["multi"]["2"], out["multi_full_prompt"]["2"], out["multi_refined"]["2"]]
    assert all(0.0 <= r <= 1.0 for r in rates)
    size = NeuronSpace.from_unet(model.unet).size
    expected = {"fraction": round(0.01 * size) / size, "top_k": 5 / size}[out["chosen_params"]["threshold"]]
    # (the prior-preservation candidate also shuts 1 %: same expected fraction)
    assert out["neuron_fraction"] == pytest.approx(expected)
    assert 0 < out["bytes_per_concept"] < 4 * size * out["neuron_fraction"] + 16  # sparse indices, not a dense tensor
    with pytest.raises(ValueError, match="must differ"):
        validate_toy(model, subjects, judge, params=params.model_copy(update={"report_seed": params.select_seed}))


@pytest.mark.skipif(not (TOY_MODEL / "model_index.json").is_file(), reason="toy model not built (cones toy train)")
def test_cli_validate_with_a_candidates_file(tmp_path):
    import json

    from typer.testing import CliRunner

    from cones_cli import toy_validate  # noqa: F401  (registers `validate` on the toy app)
    from cones_cli.toy import app

    (tmp_path / "c.json").write_text(json.dumps([{"steps": 1, "batch_size": 2, "rounds": 1, "threshold": "top_k",
                                                  "threshold_value": 3, "eval_draws": 0}]))
    args = ["validate", "--subjects", "2", "--n", "2", "--select-n", "2", "--steps", "1", "--candidates",
            str(tmp_path / "c.json"), "--prompts", "context", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert {"single", "context", "crosstalk", "multi", "neuron_fraction", "bytes_per_concept"} <= set(data)
    assert data["chosen_params"]["threshold_value"] == 3 and data["chosen_prompts"] == "context"
    bad = CliRunner().invoke(app, [*args[:-3], "--prompts", "scene", "--json"])
    assert bad.exit_code == 2 and "unknown prompt mode" in bad.output
