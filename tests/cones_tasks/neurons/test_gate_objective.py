"""The `gate` objective: a shut gate on every K/V weight, its cost held at a density (docs/research/sparsity.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cones_tasks.neurons.discovery import discover_concept_neurons
from cones_tasks.neurons.objectives import GateObjective
from cones_tasks.toyworld.assets import TOY_MODEL_DIR


@pytest.fixture(scope="module")
def model():
    from cones_tasks.loading import load_diffusion_model

    return load_diffusion_model(TOY_MODEL_DIR)


@pytest.fixture(scope="module")
def references():
    from cones_tasks.toyworld.subjects import TOY_SUBJECTS, reference_backgrounds, reference_renders

    s = TOY_SUBJECTS[0]  # striped-yellow-triangle
    return reference_renders(s, n=4), [f"a {s.shape} on {bg}" for bg in reference_backgrounds(4)], s.shape


@pytest.fixture(scope="module")
def gate_run(model, references):
    images, prompts, word = references
    params = GateObjective(density=0.02, learning_rate=0.05, key_step=1.0, steps=10, rounds=3, batch_size=4)
    before = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    result = discover_concept_neurons(model, images, prompts, params, class_word=word, seed=0, progress=False)
    return params, result, before


def test_gate_never_shuts_more_than_its_density_and_shuts_something(gate_run):
    params, result, _ = gate_run
    assert 0 < result.mask.fraction <= params.density
    # the cost followed the shut fraction: it ended near the density, not at 0 or at everything
    curve = result.report["shut_fraction_curve"]
    assert curve[0] < curve[-1] and max(curve[-5:]) < 3 * params.density, curve


def test_gate_is_deterministic_and_leaves_the_unet_alone(model, references, gate_run):
    params, result, before = gate_run
    for name, p in model.unet.named_parameters():
        assert torch.equal(p, before[name]), name
    images, prompts, word = references
    again = discover_concept_neurons(model, images, prompts, params, class_word=word, seed=0, progress=False)
    np.testing.assert_array_equal(again.mask.indices, result.mask.indices)


def test_gate_needs_the_word_scope():
    with pytest.raises(ValueError, match="objective 'gate'.*needs scope 'word'"):
        GateObjective(scope="prompt")


def test_discovery_under_the_layout_holds_the_word_where_each_photo_has_the_subject(model, references, gate_run):
    params, held, _ = gate_run  # the default layout: every photo here is of the subject alone (lone)
    images, prompts, word = references
    run = lambda p, boxes=None: discover_concept_neurons(model, images, prompts, p, class_word=word, boxes=boxes, seed=0,
                                                          progress=False).mask.indices
    free = run(params.model_copy(update={"layout": None}))
    assert not np.array_equal(free, held.mask.indices)  # the hold reaches discovery's forward
    zero = params.model_copy(update={"layout": params.layout.model_copy(update={"inside": 0.0, "outside": 0.0, "lone": 0.0})})
    np.testing.assert_array_equal(run(zero), free)  # strengths of 0 hold nothing: the same neurons as no layout
    # a box per photo (the subject's half) holds the word there instead of over the whole image
    halves = [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0), None, (0.0, 0.0, 0.5, 1.0)]
    assert not np.array_equal(run(params, halves), held.mask.indices)
    with pytest.raises(ValueError, match="got 4 images but 3 boxes: give one per image"):
        run(params, halves[:3])
    with pytest.raises(ValueError, match=r"the box of image 1 \(0.5, 0.0, 0.2, 1.0\) is not inside the image"):
        run(params, [None, (0.5, 0.0, 0.2, 1.0), None, None])
