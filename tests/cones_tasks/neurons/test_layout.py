"""Layout attention control on the shipped toy model: regions, the logit bias, and what attention it makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

from cones_tasks.neurons.layout import Layout, RegionBias, grid_boxes, word_regions
from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.processor import KWARG, ConceptBatch, attached
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.neurons.word_scope import WordMask, word_row_edits
from cones_tasks.neurons.words import ClassWordNotInPromptError
from cones_tasks.toyworld.assets import TOY_MODEL_DIR


@pytest.fixture(scope="module")
def model():
    from cones_tasks.loading import load_diffusion_model

    return load_diffusion_model(TOY_MODEL_DIR)


@pytest.fixture(scope="module")
def space(model):
    return NeuronSpace.from_unet(model.unet)


def test_grid_cells_go_in_reading_order():
    assert grid_boxes(1) == [(0.0, 0.0, 1.0, 1.0)]
    assert grid_boxes(2) == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]  # side by side
    assert grid_boxes(3) == [(0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5), (0.0, 0.5, 0.5, 1.0)]
    assert grid_boxes(4)[3] == (0.5, 0.5, 1.0, 1.0)
    assert len(grid_boxes(5)) == 5 and grid_boxes(5)[3] == (0.0, 0.5, 1 / 3, 1.0)  # three columns, two rows
    with pytest.raises(ValueError, match="at least one subject"):
        grid_boxes(0)


def test_explicit_boxes_are_checked_and_replace_the_grid():
    layout = Layout(boxes={2: [(0, 0, 1, 0.5), (0, 0.5, 1, 1)]})  # stacked instead of side by side
    assert layout.regions(2) == [(0, 0, 1, 0.5), (0, 0.5, 1, 1)] and layout.regions(3) == grid_boxes(3)
    with pytest.raises(ValueError, match="for 2 subjects list 1 boxes"):
        Layout(boxes={2: [(0, 0, 1, 1)]})
    with pytest.raises(ValueError, match="not inside the image"):
        Layout(boxes={1: [(0.5, 0, 0.2, 1)]})
    with pytest.raises(ValueError):
        Layout(inside=-1.0)


def test_the_bias_raises_a_words_region_lowers_the_rest_and_spares_the_unconditional_half():
    regions = RegionBias(batch=torch.tensor([0, 1]), rows=torch.tensor([2, 5]),
                         boxes=torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]]), inside=torch.tensor([2.0, 2.0]),
                         outside=4.0, batch_size=2)
    bias = regions.bias(4, 16, 8, device="cpu", dtype=torch.float32)  # guidance batch: [uncond 0, 1, cond 0, 1], 4×4 grid
    assert bias.shape == (4, 16, 8)
    assert not bias[:2].any()  # the unconditional half names no subject
    left = torch.tensor([(p % 4) < 2 for p in range(16)])
    assert torch.equal(bias[2, :, 2], torch.where(left, 2.0, -4.0))
    assert torch.equal(bias[3, :, 5], torch.where(~left, 2.0, -4.0))
    others = torch.ones(8, dtype=torch.bool)
    others[[2, 5]] = False
    assert not bias[2:, :, others].any()  # rows of no subject are untouched
    assert regions.bias(2, 16, 8, device="cpu", dtype=torch.float32)[0, 0, 2] == 2.0  # without guidance: as given
    with pytest.raises(ValueError, match="layout regions were built for 2 prompts.*batch of 3"):
        regions.bias(3, 16, 8, device="cpu", dtype=torch.float32)
    wide = RegionBias(batch=torch.tensor([0]), rows=torch.tensor([1]), boxes=torch.tensor([[0.0, 0.0, 1.0, 0.5]]),
                      inside=torch.tensor([1.0]), outside=1.0, batch_size=1, aspect=0.5)
    top = wide.bias(1, 8, 3, device="cpu", dtype=torch.float32)[0, :, 1]  # a 2×4 grid: the top row is inside
    assert torch.equal(top, torch.tensor([1.0] * 4 + [-1.0] * 4))
    with pytest.raises(ValueError, match="cannot lay 7 attention positions"):
        wide.bias(1, 7, 3, device="cpu", dtype=torch.float32)


def test_regions_follow_the_order_the_prompt_names_its_subjects(model):
    prompts = ["a circle and a square on snow", "a triangle"]
    layout = Layout(inside=1.0, outside=3.0, lone=0.5)
    listed_backwards = word_regions(model, prompts, [["square", "circle"], ["triangle"]], layout)
    assert listed_backwards.inside.tolist() == [1.0, 1.0, 0.5]  # a lone subject gets `lone`
    # "circle" is row 2 and named first: the left half; "square" (row 5) the right; the lone triangle the whole image
    by_row = {(int(b), int(r)): tuple(box.tolist()) for b, r, box in zip(listed_backwards.batch, listed_backwards.rows,
                                                                          listed_backwards.boxes)}
    assert by_row == {(0, 2): (0.0, 0.0, 0.5, 1.0), (0, 5): (0.5, 0.0, 1.0, 1.0), (1, 2): (0.0, 0.0, 1.0, 1.0)}
    assert word_regions(model, prompts, [["circle", "square"], []], Layout(inside=0.0, outside=0.0, lone=0.0)) is None
    with pytest.raises(ClassWordNotInPromptError):
        word_regions(model, ["a circle"], [["square"]], layout)


def _capturing_probabilities(unet):
    """AttnProcessor (which forms attention probabilities explicitly) on every layer; returns the cross-attention
    probabilities of each forward, captured from the modules' own get_attention_scores."""
    unet.set_attn_processor(AttnProcessor())
    seen: list[torch.Tensor] = []
    for module in unet.modules():
        if isinstance(module, Attention) and module.is_cross_attention:
            own = module.get_attention_scores

            def capture(q, k, mask=None, _own=own):
                probs = _own(q, k, mask)
                seen.append(probs)
                return probs

            module.get_attention_scores = capture
    return seen


def test_attention_follows_the_layout_and_nothing_else_changes(model, space):
    from cones_tasks.loading import load_diffusion_model

    fresh = load_diffusion_model(TOY_MODEL_DIR)  # its processors are replaced: not the shared fixture's
    unet = fresh.unet
    seen = _capturing_probabilities(unet)
    prompts = ["a circle and a square"]
    text = fresh.encode_prompts([""] + prompts)  # a guidance batch: [unconditional, conditional]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    mask = ConceptMask.from_indices(space, np.arange(0, space.size, 97))
    words = [[WordMask(mask, "circle"), WordMask(mask, "square")]]
    edits = word_row_edits(fresh, space, prompts, words)
    regions = word_regions(fresh, prompts, [["circle", "square"]], Layout(inside=2.0, outside=1e4))
    with torch.no_grad(), attached(unet):
        plain = unet(x, t, text, cross_attention_kwargs={KWARG: ConceptBatch(space, [None], edits)}).sample
        without = [p.clone() for p in seen]
        seen.clear()
        held = unet(x, t, text, cross_attention_kwargs={KWARG: ConceptBatch(space, [None], edits, regions)}).sample
    heads = without[0].shape[0] // 2
    for layer, (before, after) in enumerate(zip(without, seen)):
        positions = before.shape[1]
        side = int(positions**0.5)
        left = torch.tensor([(p % side) < side // 2 for p in range(positions)])
        cond_before, cond_after = before[heads:], after[heads:]
        assert torch.equal(before[:heads], after[:heads])  # the unconditional half is the model's own
        assert cond_after[:, ~left, 2].max() < 1e-6 and cond_after[:, left, 5].max() < 1e-6  # each word kept out
        if layer == 0:  # the first layer sees the same queries with and without: its word is read more in its region
            assert (cond_after[:, left, 2] > cond_before[:, left, 2]).all()
            assert (cond_after[:, ~left, 5] > cond_before[:, ~left, 5]).all()
    assert len(seen) == len(without) == 7  # every cross-attention layer: two down, the mid block, four up
    assert not torch.equal(plain, held)
