"""SD-2.x and SDXL shapes end to end: discovery, `cones concept export`, load_concept and a two-subject generation.

Tiny randomly initialised pipelines of each family are built and saved locally (tests/tiny_pipelines.py):
SD-2 with a wider text encoder and v-prediction; SDXL with two text encoders, pooled text embeddings and
added time ids, whose class-word rows are found through both tokenizers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_pipelines import saved, subject_images
from typer.testing import CliRunner

from cones_tasks.concepts import apply_concepts, load_concept
from cones_tasks.config import FitObjective, mask_params
from cones_tasks.neurons.discovery import discover_concept_neurons
from cones_tasks.neurons.processor import is_attached
from cones_tasks.neurons.space import NeuronSpace

PARAMS = FitObjective(steps=6, rounds=1, batch_size=2)
SUBJECTS = {"my-dog": ("dog", 0), "my-cat": ("cat", 1)}


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """One intra-op thread (tests/conftest.py)."""


def _stock(family, folder):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_discover_export_load_and_draw_two_subjects(family, tmp_path):
    from catalog import load_catalog
    from cones_cli.app import app
    from cones_tasks.loading import load_diffusion_model
    from cones_tasks.neurons.composition import compose
    from cones_tasks.sampling import sample

    folder = saved(family, tmp_path / f"tiny-{family}")
    model = load_diffusion_model(folder)
    assert model.xl == (family == "sdxl")
    space = NeuronSpace.from_unet(model.unet)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}

    # discovery: word-scoped `fit` (its projection reports how well the shut weights make the edit), on each family's own conditioning
    cat = load_catalog(str(tmp_path / "catalog"))
    cat.write_model(space, source=str(folder))
    for subject, (word, seed) in SUBJECTS.items():
        result = discover_concept_neurons(model, subject_images(4, seed), f"a photo of a {word}", PARAMS, class_word=word,
                                          seed=0, progress=False)
        assert result.mask.count > 0 and result.report["projection_error"] < 0.2
        assert result.report["prediction_type"] == ("v_prediction" if family == "sd2" else "epsilon")
        assert result.report["loss_curve"][-1] < result.report["loss_curve"][0] * 1.5  # finite, not diverging
        cat.write_subject(subject, class_word=word)
        cat.write_mask(subject=subject, mask=result.mask, params=mask_params(PARAMS, seed=0))
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items())

    # export with the CLI, load into the user's stock pipeline of that family
    files = {}
    for subject in SUBJECTS:
        files[subject] = tmp_path / f"{subject}.safetensors"
        done = CliRunner().invoke(app, ["concept", "export", subject, "--catalog", str(tmp_path / "catalog"),
                                        "--out", str(files[subject]), "--json"])
        assert done.exit_code == 0, done.output
        assert json.loads(done.output)["model_fingerprint"] == space.fingerprint
    pipe = _stock(family, folder)
    dog, cat_concept = (load_concept(files[s], model=pipe) for s in SUBJECTS)
    processors = pipe.unet.attn_processors

    # two subjects in one image, and each alone, in one call; the project's own generation draws the same
    prompts = ["a dog and a cat on the beach", "a photo of a dog", "a cat in the snow"]
    chosen = [[dog, cat_concept], [dog], [cat_concept]]
    seeds = [0, 1, 2]
    with apply_concepts(pipe, [dog, cat_concept]) as cones:
        stock = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], num_inference_steps=4,
                     guidance_scale=5.0, output_type="np", cross_attention_kwargs=cones.kwargs(prompts, chosen)).images
    plain = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], num_inference_steps=4,
                 guidance_scale=5.0, output_type="np").images
    words = [compose("token", [(c.mask, c.class_word) for c in concepts])[1] for concepts in chosen]
    ours = sample(model, prompts, seeds=seeds, steps=4, guidance_scale=5.0, space=space, word_masks=words)
    assert np.abs((stock * 255).round() - ours).max() <= 1
    # every image changed by its concepts (on random tiny weights the change is small: 0.003–0.011 here)
    assert np.abs(stock - plain).reshape(3, -1).max(axis=1).min() > 1e-3
    assert not is_attached(pipe.unet) and all(pipe.unet.attn_processors[k] is p for k, p in processors.items())


def test_sdxl_rows_are_found_through_both_tokenizers(tmp_path):
    """SDXL's second tokenizer pads with "!" and numbers its vocabulary differently; the class word's rows agree."""
    from cones_tasks.loading import load_diffusion_model
    from cones_tasks.neurons.words import text_tokenizers, word_rows

    model = load_diffusion_model(saved("sdxl", tmp_path / "tiny-sdxl"))
    first, second = text_tokenizers(model)
    prompt = "a dog and a teddy bear"
    assert first(prompt).input_ids != second(prompt).input_ids  # different ids...
    assert word_rows([first, second], prompt, ["dog", "teddy bear"]) == [(2,), (5, 6)]  # ...the same rows
    states, added = model.conditions([prompt, "a cat"])
    assert states.shape == (2, 12, 64)  # both encoders' penultimate states side by side
    assert added["text_embeds"].shape == (2, 16) and added["time_ids"].tolist()[0] == [16, 16, 0, 0, 16, 16]
    with pytest.raises(ValueError, match="different token rows"):
        word_rows([first, _Prefixed(first)], prompt, ["dog"])


class _Prefixed:
    """A tokenizer that puts one extra token before every prompt: its rows are one later than the model's."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.model_max_length = tokenizer, tokenizer.model_max_length

    def __call__(self, text, **kwargs):
        out = self.tokenizer(text, **kwargs)
        if kwargs.get("add_special_tokens", True):
            out["input_ids"] = [out["input_ids"][0], 3] + out["input_ids"][1:-1]
        return out
