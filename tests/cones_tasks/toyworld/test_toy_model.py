"""The shipped toy model follows its prompts (issue #3)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cones_tasks.loading import load_diffusion_model
from cones_tasks.sampling import sample
from cones_tasks.toyworld.assets import TOY_MODEL_DIR
from cones_tasks.toyworld.train_model import caption_gap


def test_shipped_model_loads_through_the_generic_loader_and_the_caption_matters():
    model = load_diffusion_model(TOY_MODEL_DIR)
    assert model.vae is None and model.resolution == 16
    # denoising error with a wrong caption vs the right one, on fresh renders and fixed noise
    gap = caption_gap(model.unet, model.encode_prompts, model.scheduler, seed=123, n=96)
    assert gap > 0.15, f"the toy model barely uses its caption (gap {gap:.3f})"


def test_sampling_is_seeded_and_batch_independent():
    model = load_diffusion_model(TOY_MODEL_DIR)
    prompts = ["a red circle on snow", "a blue square", "a triangle on night"]
    together = sample(model, prompts, seeds=[1, 2, 3], steps=8)
    alone = sample(model, prompts[1:2], seeds=[2], steps=8)
    assert together.shape == (3, 16, 16, 3) and together.dtype.name == "uint8"
    assert (abs(together[1].astype(int) - alone[0].astype(int)) <= 1).all()
    assert (sample(model, prompts, seeds=[1, 2, 3], steps=8) == together).all()


def test_training_stops_resumes_and_logs_its_segments(tmp_path):
    """A few steps at batch 8: stop at a step, resume to the end; the log says how to replay it."""
    import json

    from cones_tasks.loading import load_diffusion_model
    from cones_tasks.toyworld.train_model import TrainModelParams, train_toy_model

    params = TrainModelParams(steps=3, batch_size=8, warmup=1, checkpoint_every=100, stop_at=2)
    first = train_toy_model(tmp_path, params, progress=False)
    assert first["steps_done"] == 2 and [s[:2] for s in first["segments"]] == [[0, 2]]
    with pytest.raises(ValueError, match="not past"):
        train_toy_model(tmp_path, replace(params, resume=True), progress=False)
    log = train_toy_model(tmp_path, replace(params, resume=True, stop_at=None), progress=False)
    assert log["steps_done"] == 3 and [s[:2] for s in log["segments"]] == [[0, 2], [2, 3]] and len(log["losses"]) == 3
    assert log["segments"][1][2]["steps"] == 3 and log["segments"][1][2]["data_stream"] == "per-step"
    assert "resume" not in log["segments"][1][2]  # what replays the segment, not how it was run
    assert json.loads((tmp_path / "training_log.json").read_text())["segments"] == log["segments"]
    assert (tmp_path / "loss_curve.png").stat().st_size > 0
    assert "_name_or_path" not in json.loads((tmp_path / "unet" / "config.json").read_text())  # no local path ships
    model = load_diffusion_model(tmp_path)  # the generic loader, like any diffusers folder
    assert model.unet.config.sample_size == 16


def _replay_lines(makefile: str, target: str) -> list[list[str]]:
    """The `cones toy train-model` commands of one Makefile target, split like a shell would."""
    import shlex

    recipe = makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
    return [shlex.split(line)[1:] for line in recipe.splitlines()[1:] if "train-model" in line]


def _flag(args: list[str], name: str, default=None):
    return args[args.index(name) + 1] if name in args else default


def test_make_toy_model_replays_every_segment_of_the_shipped_log():
    """`make toy-model` is how the shipped weights are reproduced: its lines must be the log's segments."""
    import json
    from pathlib import Path

    from cones_tasks.toyworld.render import SMALL_CROWD_RADIUS
    from cones_tasks.toyworld.train_model import TrainModelParams, parse_crowd_radius, parse_object_counts

    makefile = (Path(__file__).parents[3] / "Makefile").read_text()
    segments = json.loads((TOY_MODEL_DIR / "training_log.json").read_text())["segments"]
    lines = _replay_lines(makefile, "toy-model")
    defaults = TrainModelParams()  # what a flag left out of a Makefile line means
    assert len(lines) == len(segments)
    for args, (first, last, params) in zip(lines, segments):
        assert ("--resume" in args) == (first > 0)
        assert int(_flag(args, "--stop-at", _flag(args, "--steps"))) == last
        assert int(_flag(args, "--steps")) == params["steps"]
        assert int(_flag(args, "--batch-size", defaults.batch_size)) == params["batch_size"]
        assert _flag(args, "--object-order", defaults.object_order) == params["object_order"]
        counts = _flag(args, "--object-counts")
        logged = params["object_counts"]
        assert (parse_object_counts(counts) if counts else None) == ({int(k): v for k, v in logged.items()} if logged else None)
        radius = _flag(args, "--crowd-radius")
        # a log written before the crowd radius was a parameter trained on the small one
        assert (parse_crowd_radius(radius) if radius else defaults.crowd_radius) == tuple(params.get("crowd_radius", SMALL_CROWD_RADIUS))
