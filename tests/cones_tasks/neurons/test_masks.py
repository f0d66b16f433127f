"""ConceptMask algebra, storage, and applying masks without touching the weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from neuron_fixtures import TEXT_DIM, TOKENS

from cones_tasks.neurons.masks import ConceptMask, is_attached, per_sample, shut
from cones_tasks.neurons.space import MaskModelMismatchError, NeuronSpace


def _inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 8, 8, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    text = torch.randn(batch, TOKENS, TEXT_DIM, generator=g)
    return x, t, text


def _random_mask(space: NeuronSpace, fraction: float, seed: int) -> ConceptMask:
    rng = np.random.default_rng(seed)
    return ConceptMask.from_indices(space, rng.choice(space.size, int(fraction * space.size), replace=False))


def test_set_operations(unet):
    space = NeuronSpace.from_unet(unet)
    a = ConceptMask.from_indices(space, [5, 1, 3, 3])
    b = ConceptMask.from_indices(space, [3, 4, 5, 9])
    assert a.indices.tolist() == [1, 3, 5] and a.count == 3
    assert (a | b).indices.tolist() == [1, 3, 4, 5, 9]
    assert (a & b).indices.tolist() == [3, 5]
    assert (a - b).indices.tolist() == [1]
    assert a.union(b, ConceptMask.from_indices(space, [0])).indices.tolist() == [0, 1, 3, 4, 5, 9]
    assert a.fraction == pytest.approx(3 / space.size)
    assert a == ConceptMask.from_indices(space, [1, 3, 5]) and hash(a) == hash(ConceptMask.from_indices(space, [1, 3, 5]))
    assert ConceptMask.empty(space).count == 0
    other = ConceptMask("f" * 64, space.size, np.array([1]))
    with pytest.raises(MaskModelMismatchError):
        a | other
    with pytest.raises(ValueError, match="sorted and unique"):
        ConceptMask(space.fingerprint, space.size, np.array([3, 1]))
    with pytest.raises(ValueError, match=r"lie in \[0"):
        ConceptMask(space.fingerprint, space.size, np.array([space.size]))
    with pytest.raises(ValueError):  # frozen: indices are read-only
        a.indices[0] = 7


def test_per_layer_counts(unet):
    space = NeuronSpace.from_unet(unet)
    e = space.entries[2]
    mask = ConceptMask.from_indices(space, [e.offset, e.offset + 1, space.size - 1])
    counts = mask.per_layer(space)
    assert counts[e.name] == 2 and counts[space.entries[-1].name] == 1 and sum(counts.values()) == 3


def test_bytes_round_trip(unet):
    space = NeuronSpace.from_unet(unet)
    for mask in (_random_mask(space, 0.1, 0), ConceptMask.empty(space), ConceptMask.from_indices(space, np.arange(space.size))):
        blob = mask.to_bytes()
        assert ConceptMask.from_bytes(blob, space_fingerprint=space.fingerprint) == mask
    assert len(_random_mask(space, 0.01, 1).to_bytes()) < 64  # sparse indices, not a dense tensor


def test_shut_equals_hand_zeroed_weights_and_restores_bit_for_bit(unet):
    space = NeuronSpace.from_unet(unet, attention="both")
    mask = _random_mask(space, 0.2, 0)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    processors = unet.attn_processors
    zeroed = copy.deepcopy(unet)
    with torch.no_grad():
        params = dict(zeroed.named_parameters())
        for name, local in space.locate(mask.indices).items():
            params[name].view(-1)[torch.from_numpy(local)] = 0.0
    x, t, text = _inputs(2)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=text).sample
        expected = zeroed(x, t, encoder_hidden_states=text).sample
        with shut(unet, space, mask):
            masked = unet(x, t, encoder_hidden_states=text).sample
            # the weights are never written, even inside the block
            assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
        after = unet(x, t, encoder_hidden_states=text).sample
    assert torch.equal(masked, expected)
    assert not torch.allclose(masked, plain)
    assert torch.equal(after, plain)
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert not is_attached(unet) and unet.attn_processors == processors  # the UNet's own processors, the same objects


def test_shut_removes_hooks_on_error(unet):
    space = NeuronSpace.from_unet(unet)
    processors = unet.attn_processors
    with pytest.raises(RuntimeError, match="boom"):
        with shut(unet, space, _random_mask(space, 0.1, 0)):
            raise RuntimeError("boom")
    assert not is_attached(unet) and unet.attn_processors == processors


@pytest.mark.parametrize("attention", ["cross", "both"])
def test_per_sample_batch_equals_one_at_a_time(unet, attention):
    space = NeuronSpace.from_unet(unet, attention=attention)
    masks = [_random_mask(space, 0.05, 1), None, _random_mask(space, 0.3, 2)]
    # CFG-style doubled batch: element i uses masks[i % 3]
    x, t, text = _inputs(2 * len(masks))
    with torch.no_grad():
        with per_sample(unet, space, masks):
            batched = unet(x, t, encoder_hidden_states=text).sample
        for i in range(x.shape[0]):
            mask = masks[i % len(masks)]
            ctx = shut(unet, space, mask) if mask is not None else torch.no_grad()
            with ctx:
                single = unet(x[i : i + 1], t[i : i + 1], encoder_hidden_states=text[i : i + 1]).sample
            torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-5, atol=1e-5)
        # the masks actually changed the masked elements
        plain = unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(batched[1], plain[1], rtol=1e-5, atol=1e-5)  # masks[1] is None: untouched
    assert not torch.allclose(batched[0], plain[0], rtol=1e-3, atol=1e-3)


def test_per_sample_rejects_batch_not_multiple_of_masks(unet):
    space = NeuronSpace.from_unet(unet)
    x, t, text = _inputs(3)
    with per_sample(unet, space, [_random_mask(space, 0.1, 0), _random_mask(space, 0.1, 1)]):
        with pytest.raises(ValueError, match="multiple of the number of masks"):
            unet(x, t, encoder_hidden_states=text)


def test_fused_projections_are_refused(unet):
    space = NeuronSpace.from_unet(unet)
    unet.fuse_qkv_projections()
    with pytest.raises(RuntimeError, match="unfuse_qkv_projections"):
        with shut(unet, space, _random_mask(space, 0.1, 0)):
            pass


def test_nested_masks_are_refused_not_silently_overridden(unet):
    space = NeuronSpace.from_unet(unet)
    a, b = _random_mask(space, 0.1, 0), _random_mask(space, 0.1, 1)
    with shut(unet, space, a):
        with pytest.raises(RuntimeError, match="union"):
            with shut(unet, space, b):
                pass
        assert is_attached(unet)  # the outer block is still in force
    assert not is_attached(unet)


def test_uncached_path_and_gradients_match_hand_zeroed(unet, monkeypatch):
    from cones_tasks.neurons import processor as processor_module

    monkeypatch.setattr(processor_module.ConceptBatch, "CACHE_BYTES", 0)  # rebuild the masked stack every forward
    space = NeuronSpace.from_unet(unet)
    mask = _random_mask(space, 0.2, 3)
    x, t, text = _inputs(2)
    zeroed = copy.deepcopy(unet)
    zparams = dict(zeroed.named_parameters())
    with torch.no_grad():
        for name, local in space.locate(mask.indices).items():
            zparams[name].view(-1)[torch.from_numpy(local)] = 0.0
    with shut(unet, space, mask):
        unet(x, t, encoder_hidden_states=text).sample.square().mean().backward()
    zeroed(x, t, encoder_hidden_states=text).sample.square().mean().backward()
    params = dict(unet.named_parameters())
    for name, local in space.locate(mask.indices).items():
        grad = params[name].grad.reshape(-1)
        assert torch.all(grad[torch.from_numpy(local)] == 0)  # a shut weight does not affect the output
        keep = torch.ones_like(grad, dtype=torch.bool)
        keep[torch.from_numpy(local)] = False
        torch.testing.assert_close(grad[keep], zparams[name].grad.reshape(-1)[keep])
    with torch.no_grad():
        masks = [mask, None]
        x4, t4, text4 = _inputs(4, seed=1)
        with per_sample(unet, space, masks):
            batched = unet(x4, t4, encoder_hidden_states=text4).sample
        with shut(unet, space, mask):
            single = unet(x4[2:3], t4[2:3], encoder_hidden_states=text4[2:3]).sample
    torch.testing.assert_close(batched[2:3], single, rtol=1e-5, atol=1e-5)
