"""Pickle weights load only on an opt-in that exists: the loaders' refusals name it, and it works."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import torch
from typer.testing import CliRunner

from cones_cli.app import app
from cones_tasks.config import ClipRef, CustomizeConfig, ModelRef, ScoreConfig, with_trusted_pickle
from cones_tasks.loading import ModelLoadError, _check_weights, load_clip_scorer
from cones_tasks.toyworld.assets import toy_clip_weights
from cones_tasks.toyworld.train_clip import TOY_CLIP_NAME


@pytest.fixture
def pickled_clip(tmp_path):
    """The shipped toy CLIP re-saved as a pickle (.pt), its architecture config beside it."""
    from safetensors.torch import load_file

    shutil.copy(toy_clip_weights().parent / f"{TOY_CLIP_NAME}.json", tmp_path)
    torch.save(load_file(toy_clip_weights()), tmp_path / "model.pt")
    return tmp_path / "model.pt"


def _refusals(tmp_path, pickled_clip) -> list[str]:
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "diffusion_pytorch_model.bin").write_bytes(b"")
    messages = []
    for attempt in (lambda: _check_weights(unet, "unet", trust_pickle=False), lambda: load_clip_scorer(TOY_CLIP_NAME, pickled_clip)):
        with pytest.raises(ModelLoadError) as info:
            attempt()
        messages.append(str(info.value))
    return messages


def test_every_opt_in_a_refusal_names_exists(tmp_path, pickled_clip):
    runner = CliRunner()
    helps = {flow: runner.invoke(app, ["run", flow, "--help"], env={"COLUMNS": "200"}).output for flow in ("customize", "discover", "generate", "score")}
    for message in _refusals(tmp_path, pickled_clip):
        flags = set(re.findall(r"--[a-z][a-z-]+", message))
        assert "--trust-pickle" in flags, message
        for flag in flags - {"--config"}:
            missing = [flow for flow, text in helps.items() if flag not in text]
            assert not missing, f"{message!r} names {flag}, which `cones run {missing[0]}` lacks"
        assert "ModelRef" in message and "ClipRef" in message
    assert "trust_pickle" in ModelRef.model_fields and "trust_pickle" in ClipRef.model_fields


def test_a_trusting_clip_ref_loads_pickle_weights(pickled_clip):
    from flows._runtime import _load_clip

    refused = ClipRef(model_name=TOY_CLIP_NAME, weights_path=str(pickled_clip))
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        _load_clip(refused, os.getpid())
    scorer, _ = _load_clip(refused.model_copy(update={"trust_pickle": True}), os.getpid())
    reference = load_clip_scorer(TOY_CLIP_NAME, toy_clip_weights())
    texts = ["a red circle", "a blue square"]
    assert torch.equal(scorer.embed_texts(texts), reference.embed_texts(texts))


def test_the_cli_flag_trusts_every_model_in_the_config():
    clip = {"model_name": TOY_CLIP_NAME, "weights_path": "/w/model.pt"}
    config = CustomizeConfig.model_validate(
        {
            "catalog": "/c", "model": {"path": "/m"}, "scoring": {"clip": clip},
            "subjects": [{"subject_id": "dog", "class_word": "dog", "uri": "/x"}],
        }
    )
    trusted = with_trusted_pickle(config)
    assert (config.model.trust_pickle, config.scoring.clip.trust_pickle) == (False, False)
    assert (trusted.model.trust_pickle, trusted.scoring.clip.trust_pickle) == (True, True)
    assert trusted.model_copy(update={"model": config.model, "scoring": config.scoring}) == config
    score = with_trusted_pickle(ScoreConfig.model_validate({"catalog": "/c", "scoring": {"clip": clip}}))
    assert score.scoring.clip.trust_pickle
