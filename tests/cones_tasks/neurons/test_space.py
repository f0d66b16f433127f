"""NeuronSpace: found by module type, laid out by parameter name, fingerprinted by weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cones_tasks.neurons.masks import ConceptMask, shut
from cones_tasks.neurons.space import MaskModelMismatchError, NeuronSpace

from neuron_fixtures import TEXT_DIM, tiny_unet


def test_cross_space_holds_exactly_the_cross_attention_kv_weights(unet):
    space = NeuronSpace.from_unet(unet)
    # 4 cross-attention modules (down 1, mid 1, up 2), each with to_k and to_v of [C, TEXT_DIM].
    assert len(space.entries) == 8
    assert all(e.cross and e.shape[1] == TEXT_DIM for e in space.entries)
    assert all(e.name.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for e in space.entries)
    assert space.size == 2 * TEXT_DIM * (8 + 16 + 8 + 8)
    # contiguous layout, in named_parameters order
    assert [e.offset for e in space.entries] == list(np.cumsum([0] + [e.numel for e in space.entries[:-1]]))
    names = [n for n, _ in unet.named_parameters()]
    assert [names.index(e.name) for e in space.entries] == sorted(names.index(e.name) for e in space.entries)


def test_self_and_both_spaces(unet):
    cross = NeuronSpace.from_unet(unet, attention="cross")
    self_ = NeuronSpace.from_unet(unet, attention="self")
    both = NeuronSpace.from_unet(unet, attention="both")
    assert not any(e.cross for e in self_.entries) and len(self_.entries) == 8
    assert all(e.shape[0] == e.shape[1] for e in self_.entries)  # self-attention K/V: [C, C]
    assert both.size == cross.size + self_.size
    assert set(both.names) == set(cross.names) | set(self_.names)
    assert len({cross.fingerprint, self_.fingerprint, both.fingerprint}) == 3


def test_found_by_type_not_by_name(unet):
    # Renaming-insensitive: wrap the UNet in a module with different attribute names.
    wrapper = torch.nn.ModuleDict({"renamed_blocks": unet})
    space = NeuronSpace.from_unet(wrapper)
    assert space.size == NeuronSpace.from_unet(unet).size
    assert all(e.name.startswith("renamed_blocks.") for e in space.entries)


def test_locate_splits_global_indices_per_parameter(unet):
    space = NeuronSpace.from_unet(unet)
    e1, e2 = space.entries[1], space.entries[5]
    idx = np.array([0, e1.offset + 3, e1.offset + e1.numel - 1, e2.offset, space.size - 1])
    loc = space.locate(idx)
    assert list(loc) == list(space.names)
    assert loc[space.entries[0].name].tolist() == [0]
    assert loc[e1.name].tolist() == [3, e1.numel - 1]
    assert loc[e2.name].tolist() == [0]
    assert loc[space.entries[-1].name].tolist() == [space.entries[-1].numel - 1]
    assert sum(v.size for v in loc.values()) == idx.size
    with pytest.raises(IndexError):
        space.locate(np.array([space.size]))


def test_fingerprint_tracks_weights_layout_hash_does_not(unet):
    space = NeuronSpace.from_unet(unet)
    assert NeuronSpace.from_unet(tiny_unet(0)).fingerprint == space.fingerprint  # same seed, same weights
    other = NeuronSpace.from_unet(tiny_unet(1))
    assert other.fingerprint != space.fingerprint
    assert other.layout_hash == space.layout_hash
    # fp16 load of the same checkpoint: same fingerprint
    assert NeuronSpace.from_unet(tiny_unet(0).half()).fingerprint == space.fingerprint


def test_mask_from_one_model_refuses_another(unet):
    space = NeuronSpace.from_unet(unet)
    mask = ConceptMask.from_indices(space, [1, 2, 3])
    other_unet = tiny_unet(1)
    other = NeuronSpace.from_unet(other_unet)
    with pytest.raises(MaskModelMismatchError, match="run discovery on this model"):
        with shut(other_unet, other, mask):
            pass
    with pytest.raises(MaskModelMismatchError):
        mask.per_layer(NeuronSpace.from_unet(unet, attention="both"))
    with pytest.raises(MaskModelMismatchError):
        space.check_unet(other_unet)
    space.check_unet(unet)


def test_unet_without_cross_attention_is_a_clear_error():
    from diffusers import UNet2DModel

    plain = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                        norm_num_groups=4, attention_head_dim=4)
    with pytest.raises(ValueError, match="no cross-attention"):
        NeuronSpace.from_unet(plain)
    assert NeuronSpace.from_unet(plain, attention="self").size > 0


@pytest.mark.slow
def test_sd15_shaped_unet_has_the_papers_neuron_count():
    """SD-1.5's published UNet config: 16 cross-attention modules, 19,169,280 K/V weights (issue #4)."""
    from cones_lab.benchmarks import preset_unet

    unet, _ = preset_unet("sd15")
    space = NeuronSpace.from_unet(unet)
    assert len(space.entries) == 32 and space.size == 19_169_280
    assert NeuronSpace.from_unet(unet, attention="both").size == 43_950_080
