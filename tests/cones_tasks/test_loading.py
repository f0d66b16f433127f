"""Model loading from diffusers folders and open_clip weights, and each error it names (issue #2 item 7)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cones_tasks.loading import ModelLoadError, load_clip_scorer, load_diffusion_model
from cones_tasks.toyworld.architecture import build_scheduler, build_text_encoder, build_unet
from cones_tasks.toyworld.assets import toy_clip_weights
from cones_tasks.toyworld.train_clip import TOY_CLIP_NAME
from cones_tasks.toyworld.train_model import write_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    write_pipeline(out, build_unet(seed=0), build_text_encoder(seed=0), build_scheduler())
    return out


@pytest.fixture
def copy_of(model_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(model_dir, target)
    return target


def test_loads_a_diffusers_folder_and_encodes_prompts(model_dir):
    model = load_diffusion_model(model_dir)
    assert model.vae is None and model.resolution == 16
    states = model.encode_prompts(["a red circle", "a striped blue square on night"])
    assert states.shape == (2, model.tokenizer.model_max_length, model.unet.config.cross_attention_dim)
    assert not any(p.requires_grad for p in model.unet.parameters())


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_diffusion_model(tmp_path / "nope")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_diffusion_model(tmp_path)


def test_missing_component_folder(copy_of):
    shutil.rmtree(copy_of / "text_encoder")
    with pytest.raises(ModelLoadError, match="text_encoder.*missing"):
        load_diffusion_model(copy_of)


def test_component_not_listed(copy_of):
    index = json.loads((copy_of / "model_index.json").read_text())
    del index["scheduler"]
    (copy_of / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="required component 'scheduler'"):
        load_diffusion_model(copy_of)


def test_pickle_weights_refused_unless_trusted(copy_of):
    unet = build_unet(seed=0)
    shutil.rmtree(copy_of / "unet")
    unet.save_pretrained(copy_of / "unet", safe_serialization=False)
    with pytest.raises(ModelLoadError, match="pickle.*trust_pickle"):
        load_diffusion_model(copy_of)
    model = load_diffusion_model(copy_of, trust_pickle=True)
    assert torch.equal(model.unet.conv_in.weight, unet.conv_in.weight)


def test_shape_mismatch_with_config(copy_of):
    config = json.loads((copy_of / "unet" / "config.json").read_text())
    config["cross_attention_dim"] = 32
    (copy_of / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="do not match its config"):
        load_diffusion_model(copy_of)


def test_foreign_library_in_model_index_is_refused(copy_of):
    index = json.loads((copy_of / "model_index.json").read_text())
    index["scheduler"] = ["os", "system"]
    (copy_of / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="only"):
        load_diffusion_model(copy_of)


def test_shipped_toy_clip_loads_and_scores():
    scorer = load_clip_scorer(TOY_CLIP_NAME, toy_clip_weights())
    from cones_tasks.toyworld.render import random_scene, render

    rng = np.random.default_rng(0)
    scenes = [random_scene(rng, 1) for _ in range(16)]
    images = scorer.embed_images(np.stack([render(s) for s in scenes]))
    texts = scorer.embed_texts([f"a {s.objects[0].color} {s.objects[0].shape}" for s in scenes])
    assert images.shape == texts.shape == (16, 64)
    similarity = images @ texts.T
    # each image is closer to its own caption than the average other caption
    assert (similarity.diag() > similarity.mean(1)).float().mean() >= 0.8


def test_clip_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="do not exist"):
        load_clip_scorer(TOY_CLIP_NAME, tmp_path / "missing.safetensors")
    pickle = tmp_path / "model.pt"
    torch.save({}, pickle)
    with pytest.raises(ModelLoadError, match="pickle"):
        load_clip_scorer(TOY_CLIP_NAME, pickle)
    weights = tmp_path / "w.safetensors"
    shutil.copy(toy_clip_weights(), weights)
    with pytest.raises(ModelLoadError, match="does not know the model"):
        load_clip_scorer("no-such-arch", weights)
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_clip_scorer("RN50", weights)
