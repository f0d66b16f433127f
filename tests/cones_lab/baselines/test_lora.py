"""LoRA on the K/V projections (peft) on a tiny real UNet: the adapter leaves no trace, the concept round-trips
through safetensors, and the dense ΔW it is sampled with gives peft's own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from neuron_fixtures import TEXT_DIM, TOKENS, fixed_loss, tiny_model

from cones_lab.baselines.dense_kv import added
from cones_lab.baselines.lora import LoraFactors, LoraParams, lora_adapter, train_lora
from cones_tasks.neurons.space import MaskModelMismatchError, NeuronSpace


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


LORA_LOSS_DROP = 0.93  # of the base model's loss on the references, what 60 rank-2 steps must reach (measured 0.87)


def test_training_leaves_the_base_model_bit_identical_names_types_and_flags():
    model = tiny_model(0)
    unet = model.unet
    unet.requires_grad_(True)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    names = [n for n, _ in unet.named_parameters()]
    types = {n: type(m) for n, m in unet.named_modules()}
    base_loss = fixed_loss(model, _images(), "a photo of a dog")
    result = train_lora(model, _images(), "a photo of a dog", LoraParams(steps=60, batch_size=2, rank=2))
    assert [n for n, _ in unet.named_parameters()] == names
    assert {n: type(m) for n, m in unet.named_modules()} == types  # peft's wrappers are gone
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert all(p.requires_grad for p in unet.parameters()) and not hasattr(unet, "peft_config")
    space = NeuronSpace.from_unet(unet)
    factors = result.concept
    assert set(factors.down) == set(space.names) and factors.rank == 2
    assert all(factors.up[n].abs().sum() > 0 for n in factors.up)  # B left zero: it moved
    with added(unet, space, factors.delta()):  # and it learned: the subject's loss with the adapter's update
        trained_loss = fixed_loss(model, _images(), "a photo of a dog")
    assert trained_loss < LORA_LOSS_DROP * base_loss, (base_loss, trained_loss)
    rank_params = sum(2 * (e.shape[0] + e.shape[1]) for e in space.entries)
    assert result.report["trained_parameters"] == rank_params < space.size


def test_dense_delta_gives_peft_own_forward():
    model = tiny_model(0)
    unet = model.unet
    space = NeuronSpace.from_unet(unet)
    factors = train_lora(model, _images(), "a photo of a dog", LoraParams(steps=5, batch_size=2, rank=3, alpha=6.0)).concept
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    text = torch.randn(2, TOKENS, TEXT_DIM, generator=gen)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        base = unet(x, t, encoder_hidden_states=text).sample
        with lora_adapter(unet, space, rank=3, alpha=6.0) as fresh:
            for name, (a, b) in fresh.items():
                a.copy_(factors.down[name])
                b.copy_(factors.up[name])
            through_peft = unet(x, t, encoder_hidden_states=text).sample
        with added(unet, space, factors.delta()):
            through_delta = unet(x, t, encoder_hidden_states=text).sample
    assert (through_peft - base).abs().max() > 1e-4  # the adapter does something
    torch.testing.assert_close(through_delta, through_peft, rtol=1e-4, atol=1e-5)


def test_concept_round_trips_through_safetensors_in_peft_key_layout():
    model = tiny_model(0)
    space = NeuronSpace.from_unet(model.unet)
    factors = train_lora(model, _images(), "a photo of a dog", LoraParams(steps=3, batch_size=2, rank=2)).concept
    blob = factors.to_safetensors()
    from safetensors.torch import load

    keys = set(load(blob))
    assert keys == {f"{e.module_name}.lora_{ab}.weight" for e in space.entries for ab in "AB"}
    back = LoraFactors.from_safetensors(blob, space=space)
    assert (back.rank, back.alpha, back.space_fingerprint) == (factors.rank, factors.alpha, factors.space_fingerprint)
    assert all(torch.equal(back.down[n], factors.down[n]) and torch.equal(back.up[n], factors.up[n]) for n in factors.down)
    with pytest.raises(MaskModelMismatchError):
        LoraFactors.from_safetensors(blob, space=NeuronSpace.from_unet(tiny_model(7).unet))
