"""Concepts in a stock diffusers pipeline: apply_concepts draws what the project's generation draws, and leaves no trace."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from tiny_pipelines import saved

from cones_tasks.concepts import (
    Concept,
    ConceptFileError,
    ConceptModelMismatchError,
    apply_concepts,
    load_concept,
    save_concept,
)
from cones_tasks.neurons.composition import compose
from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.processor import is_attached
from cones_tasks.neurons.space import NeuronSpace

STEPS, GUIDANCE = 4, 5.0


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """One intra-op thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return saved("sd15", tmp_path_factory.mktemp("models") / "tiny-sd15")


@pytest.fixture(scope="module")
def model(folder):
    from cones_tasks.loading import load_diffusion_model

    return load_diffusion_model(folder)


@pytest.fixture(scope="module")
def space(model):
    return NeuronSpace.from_unet(model.unet)


@pytest.fixture(scope="module")
def concepts(space):
    rng = np.random.default_rng(0)

    def mask(fraction):
        return ConceptMask.from_indices(space, rng.choice(space.size, int(fraction * space.size), replace=False))

    return {
        "dog": Concept("my-dog", "dog", mask(0.2), scope="word"),
        "cat": Concept("my-cat", "cat", mask(0.2), scope="word"),
        "mug": Concept("my-mug", "mug", mask(0.1), scope="prompt"),  # the paper's every-token masking
    }


def _stock(folder):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # the project's default sampler
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _items(concepts):
    dog, cat, mug = concepts["dog"], concepts["cat"], concepts["mug"]
    return [
        ("a photo of a dog", [dog]),
        ("a dog and a cat on the beach", [dog, cat]),
        ("a red mug", [mug]),
        ("a cat in the snow", []),  # nothing applied: the base model in the same call
        ("a mug and a cat", [mug, cat]),  # both kinds in one image
    ]


def test_apply_concepts_on_a_stock_pipeline_draws_the_projects_images_and_restores_it(folder, model, space, concepts):
    """Same seeds and masks: the stock StableDiffusionPipeline under apply_concepts and cones' own sample() agree
    to within one level of 255 (the pipeline's "np" output is (x/2 + 0.5) in float, ours rounds (x + 1)·127.5)."""
    from cones_tasks.sampling import sample

    items = _items(concepts)
    prompts, seeds = [p for p, _ in items], [3, 4, 5, 6, 7]
    composed = [compose("union", [(c.mask, c.class_word) for c in chosen if c.scope == "prompt"])[0] for _, chosen in items]
    words = [compose("token", [(c.mask, c.class_word) for c in chosen if c.scope == "word"])[1] for _, chosen in items]
    ours = sample(model, prompts, seeds=seeds, steps=STEPS, guidance_scale=GUIDANCE, space=space, masks=composed,
                  word_masks=words)

    pipe = _stock(folder)
    processors = pipe.unet.attn_processors
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}

    def generators():
        return [torch.Generator().manual_seed(s) for s in seeds]

    with apply_concepts(pipe, list(concepts.values())) as cones:
        assert is_attached(pipe.unet)
        stock = pipe(prompts, generator=generators(), num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                     output_type="np", cross_attention_kwargs=cones.kwargs(prompts, [c for _, c in items])).images
        plain_inside = pipe(prompts, generator=generators(), num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                            output_type="np").images  # a call without the kwargs is the pipeline's own
        assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())  # never written, even inside
    plain = pipe(prompts, generator=generators(), num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="np").images

    stock_u8 = (stock * 255).round().astype(np.int16)
    assert stock_u8.shape == ours.shape == (5, 16, 16, 3)
    assert np.abs(stock_u8 - ours.astype(np.int16)).max() <= 1
    assert np.mean(stock_u8 != ours) < 0.01  # ties at .5 only
    # the concepts changed what they touch, and only that
    moved = np.abs(stock - plain).reshape(5, -1).max(axis=1)
    assert all(moved[i] > 1 / 255 for i in (0, 1, 2, 4)) and moved[3] == 0.0
    assert np.array_equal(plain_inside, plain)
    # left as it was: the same processor objects, the same weights bit for bit
    assert not is_attached(pipe.unet)
    after = pipe.unet.attn_processors
    assert after.keys() == processors.keys() and all(after[k] is processors[k] for k in processors)
    assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())


def test_one_call_batches_combinations_and_images_per_prompt(folder, concepts):
    """num_images_per_prompt repeats each prompt in place; each image keeps its own concepts."""
    pipe = _stock(folder)
    dog, cat = concepts["dog"], concepts["cat"]
    prompts = ["a dog and a cat", "a photo of a dog"]
    with apply_concepts(pipe, [dog, cat]) as cones:
        both = pipe(prompts, num_images_per_prompt=2, num_inference_steps=2, output_type="np",
                    generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3, 4)],
                    cross_attention_kwargs=cones.kwargs(prompts, [[dog, cat], [dog]], images_per_prompt=2)).images
        alone = pipe(prompts[1], num_inference_steps=2, output_type="np", generator=[torch.Generator().manual_seed(3)],
                     cross_attention_kwargs=cones.kwargs(prompts[1], [[dog]])).images
        with pytest.raises(ValueError, match="under classifier-free guidance"):
            pipe(prompts, num_images_per_prompt=2, num_inference_steps=1, output_type="np",
                 cross_attention_kwargs=cones.kwargs(prompts, [[dog, cat], [dog]]))  # built for 2 images, called with 4
    np.testing.assert_allclose(both[2], alone[0], atol=1e-6)


def test_threads_sharing_one_unet_do_not_see_each_others_concepts(model, space, concepts):
    """No model lock: each call's concepts travel in its own kwargs, so concurrent generation equals serial."""
    from cones_tasks.sampling import sample

    jobs = {
        "dog": ("a photo of a dog", [], [compose("token", [(concepts["dog"].mask, "dog")])[1]]),
        "mug": ("a red mug", [concepts["mug"].mask], None),
        "none": ("a photo of a dog", [None], None),
    }

    def run(name):
        prompt, masks, words = jobs[name]
        return sample(model, [prompt] * 2, seeds=[1, 2], steps=6, guidance_scale=GUIDANCE, space=space,
                      masks=masks * 2 if masks else None, word_masks=words * 2 if words else None)

    serial = {name: run(name) for name in jobs}
    results: dict[str, list] = {name: [] for name in jobs}
    barrier = threading.Barrier(len(jobs))

    def worker(name):
        barrier.wait()
        for _ in range(3):
            results[name].append(run(name))

    threads = [threading.Thread(target=worker, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in jobs:
        assert all(np.array_equal(r, serial[name]) for r in results[name]), name
    assert not np.array_equal(serial["dog"], serial["none"])
    assert not is_attached(model.unet)


def test_a_concept_file_round_trips_and_refuses_another_model(tmp_path, folder, model, space, concepts):
    from cones_tasks.codec import decode_indices

    path = save_concept(concepts["dog"], tmp_path / "dog.safetensors")
    pipe = _stock(folder)
    loaded = load_concept(path, model=pipe)
    assert loaded == concepts["dog"]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # the file: the store's codec, the class word, the fingerprint
        meta = f.metadata()
        blob = f.get_tensor("indices").numpy().tobytes()
        assert blob == concepts["dog"].mask.to_bytes() and np.array_equal(decode_indices(blob), concepts["dog"].mask.indices)
    assert (meta["class_word"], meta["model_fingerprint"], meta["scope"]) == ("dog", space.fingerprint, "word")

    other = saved("sd15", tmp_path / "other-sd15", seed=1)  # same architecture, other weights
    from diffusers import StableDiffusionPipeline

    other_pipe = StableDiffusionPipeline.from_pretrained(other, local_files_only=True)
    other_fp = NeuronSpace.from_unet(other_pipe.unet).fingerprint
    with pytest.raises(ConceptModelMismatchError) as refused:
        load_concept(path, model=other_pipe)
    assert space.fingerprint in str(refused.value) and other_fp in str(refused.value)
    with pytest.raises(ConceptModelMismatchError, match=other_fp):
        with apply_concepts(other_pipe, [concepts["dog"]]):
            pass
    assert not is_attached(other_pipe.unet)
    (tmp_path / "not-a-concept.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConceptFileError, match="cones concept export"):
        load_concept(tmp_path / "not-a-concept.safetensors", model=pipe)


def test_a_prompt_must_name_a_word_scoped_concepts_class_word(folder, concepts):
    from cones_tasks.neurons.words import ClassWordNotInPromptError

    pipe = _stock(folder)
    with apply_concepts(pipe, [concepts["dog"]]) as cones:
        with pytest.raises(ClassWordNotInPromptError, match="'dog' 0 times"):
            cones.kwargs(["a cat on the beach"])
        with pytest.raises(ValueError, match="not applied in this block"):
            cones.kwargs(["a cat"], [[concepts["cat"]]])


def test_a_layout_acts_the_same_in_a_stock_pipeline_as_in_the_projects_sampling(folder, model, space, concepts):
    """Attention control travels in the call like the concepts: the stock pipeline and sample() agree with it on,
    and it changes the images it is given for (every prompt names a word-scoped subject here)."""
    from cones_tasks.neurons.layout import Layout
    from cones_tasks.sampling import sample

    dog, cat = concepts["dog"], concepts["cat"]
    prompts, seeds, chosen = ["a dog and a cat on the beach", "a photo of a dog"], [3, 4], [[cat, dog], [dog]]
    words = [compose("token", [(c.mask, c.class_word) for c in cs])[1] for cs in chosen]
    layout = Layout(inside=2.0, outside=4.0)
    ours = sample(model, prompts, seeds=seeds, steps=STEPS, guidance_scale=GUIDANCE, space=space, word_masks=words,
                  layout=layout)
    free = sample(model, prompts, seeds=seeds, steps=STEPS, guidance_scale=GUIDANCE, space=space, word_masks=words)
    pipe = _stock(folder)
    with apply_concepts(pipe, [dog, cat]) as cones:
        stock = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], num_inference_steps=STEPS,
                     guidance_scale=GUIDANCE, output_type="np",
                     cross_attention_kwargs=cones.kwargs(prompts, chosen, layout=layout)).images
    stock_u8 = (stock * 255).round().astype(np.int16)
    assert np.abs(stock_u8 - ours.astype(np.int16)).max() <= 1
    assert all(np.abs(ours[i].astype(np.int16) - free[i]).max() > 1 for i in range(2))
