"""Dense K/V fine-tuning (Custom Diffusion's recipe) on a tiny real UNet: base weights untouched, the concept
round-trips through safetensors, the update is what the model is sampled with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from neuron_fixtures import fixed_loss, tiny_model

from cones_lab.baselines.dense_kv import KVDelta, added, finetune_kv
from cones_lab.baselines.training import FineTuneParams, references
from cones_tasks.neurons.discovery import concept_loss
from cones_tasks.neurons.noising import noised_batch, training_scheduler
from cones_tasks.neurons.space import MaskModelMismatchError, NeuronSpace


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def test_finetune_leaves_the_base_model_bit_identical_and_learns_the_subject():
    model = tiny_model(0)
    model.unet.requires_grad_(True)  # a caller's flags come back as they were, whatever they were
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    images = _images()
    base_loss = fixed_loss(model, images, "a photo of a dog")
    result = finetune_kv(model, images, "a photo of a dog", FineTuneParams(steps=60, batch_size=4, learning_rate=1e-2))
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items())
    assert all(p.requires_grad for p in model.unet.parameters()) and all(p.grad is None for p in model.unet.parameters())
    space = NeuronSpace.from_unet(model.unet)
    delta = result.concept
    assert set(delta.deltas) == set(space.names)  # every cross-attention K/V matrix, dense
    assert sum(int((d != 0).sum()) for d in delta.deltas.values()) > 0.9 * space.size
    assert result.report["steps"] == 60 and result.report["time_s"] > 0 and result.report["trained_parameters"] == space.size
    with added(model.unet, space, delta):
        tuned_loss = fixed_loss(model, images, "a photo of a dog")
    assert tuned_loss < 0.9 * base_loss, (base_loss, tuned_loss)  # the fine-tune fits the subject's images
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items())


def test_added_is_w_plus_delta_inside_and_exactly_w_after_even_on_error():
    model = tiny_model(1)
    space = NeuronSpace.from_unet(model.unet)
    modules = space.modules(model.unet)
    gen = torch.Generator().manual_seed(0)
    delta = KVDelta(space.fingerprint, {e.name: 1e-3 * torch.randn(e.shape, generator=gen) for e in space.entries})
    before = {name: m.weight.clone() for name, m in modules.items()}
    with pytest.raises(RuntimeError, match="boom"):
        with added(model.unet, space, delta):
            for name, m in modules.items():
                assert torch.equal(m.weight, before[name] + delta.deltas[name])
            raise RuntimeError("boom")
    # W + ΔW − ΔW is not W in floats; the originals are copied back
    assert all(torch.equal(m.weight, before[name]) for name, m in modules.items())


def test_concept_round_trips_through_safetensors_and_refuses_another_model():
    model = tiny_model(0)
    result = finetune_kv(model, _images(), "a photo of a dog", FineTuneParams(steps=3, batch_size=2))
    space = NeuronSpace.from_unet(model.unet)
    blob = result.concept.to_safetensors()
    back = KVDelta.from_safetensors(blob, space=space)
    assert back.space_fingerprint == result.concept.space_fingerprint
    assert set(back.deltas) == set(result.concept.deltas)
    assert all(torch.equal(back.deltas[n], result.concept.deltas[n]) for n in back.deltas)
    # fp32 per weight plus a small header: dense storage, as Custom Diffusion's
    assert 4 * space.size < len(blob) < 4 * space.size + 4096
    other = NeuronSpace.from_unet(tiny_model(7).unet)  # same architecture, other weights
    with pytest.raises(MaskModelMismatchError):
        KVDelta.from_safetensors(blob, space=other)


def test_summed_deltas_add_elementwise_and_refuse_other_models():
    space = NeuronSpace.from_unet(tiny_model(0).unet)
    a = KVDelta(space.fingerprint, {e.name: torch.full(e.shape, 1.0) for e in space.entries})
    b = KVDelta(space.fingerprint, {e.name: torch.full(e.shape, 2.5) for e in space.entries})
    total = KVDelta.total([a, b, b])
    assert all(torch.equal(t, torch.full(t.shape, 6.0)) for t in total.deltas.values())
    with pytest.raises(MaskModelMismatchError):
        a + KVDelta("0" * 64, dict(b.deltas))


def test_prior_preservation_needs_prior_images_and_uses_them():
    model = tiny_model(0)
    params = FineTuneParams(steps=4, batch_size=2, prior_weight=1.0)
    with pytest.raises(ValueError, match="prior images"):
        finetune_kv(model, _images(), "a photo of a dog", params)
    with_prior = finetune_kv(model, _images(), "a photo of a dog", params, prior_images=_images(seed=1), prior_prompt="a dog")
    without = finetune_kv(model, _images(), "a photo of a dog", params.model_copy(update={"prior_weight": 0.0}))
    # the prior term is part of the loss: the curves differ from the first step on
    assert with_prior.report["loss_curve"][0] != without.report["loss_curve"][0]
