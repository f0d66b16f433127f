"""Seeded, batched sampling with classifier-free guidance and per-image concept neurons.

Images come from the stock diffusers pipeline over the model's components
(DiffusionModel.pipeline), with each image's concepts applied by the Cones attention processor
through `cross_attention_kwargs`: exactly how a user's own pipeline applies them
(cones_tasks.concepts.apply_concepts), so there is one implementation.

Each image's starting noise comes from its own seed, so an image does not depend on which
other prompts share its batch: batched generation over thousands of subject combinations
gives the same images as one-at-a-time (tested).
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from cones_tasks.concepts import concept_batch
from cones_tasks.loading import DiffusionModel
from cones_tasks.neurons.processor import KWARG, attached
from cones_tasks.neurons.words import TOKENIZER_LOCK
from cones_tasks.pixels import from_model_range

SAMPLERS = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}


def initial_noise(model: DiffusionModel, seeds: Sequence[int]) -> torch.Tensor:
    """[B, C, S, S] starting latents, one generator per seed.

    Drawn in fp32 on the CPU and cast, so an image is the same on every device and dtype's rounding
    of one draw (a pipeline's own `generator=` would draw in the UNet's dtype).
    """
    size = model.unet.config.sample_size
    shape = (model.in_channels, size, size)
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(model.device, model.dtype)


def decode(model: DiffusionModel, latents: torch.Tensor) -> np.ndarray:
    """Model output → uint8 [B, H, W, 3] (through the VAE when the model has one)."""
    if model.vae is not None:
        latents = model.vae.decode(latents / model.vae.config.scaling_factor).sample
    return from_model_range(latents)


@torch.no_grad()
def sample(
    model: DiffusionModel,
    prompts: Sequence[str],
    *,
    seeds: Sequence[int],
    steps: int = 25,
    guidance_scale: float = 3.0,
    sampler: Literal["ddim", "dpm"] = "dpm",
    masks: Sequence | None = None,
    space=None,
    word_masks: Sequence[Sequence] | None = None,
    layout=None,
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Generate one image per prompt, uint8 [B, H, W, 3].

    `masks[i]` (a ConceptMask or None) is shut for image i only — one UNet forward serves a
    batch of different subject combinations. Both halves of the guidance batch use it: the
    Cones-edited model is the model, conditional or not (Cones §3.2).

    `word_masks[i]` (WordMasks, cones_tasks.neurons.word_scope; empty for none) are word-scoped
    masks, each shut at its class word's rows of prompt i only (token composition). They act on
    the conditional half alone: the unconditional prompt names no subject. Both kinds can be mixed
    in one batch; an image does not depend on what shares its batch.

    `layout` (cones_tasks.neurons.layout.Layout): attention control at the word masks' class
    words: two or more subjects each drawn in its own region, a lone one read more strongly.

    Guidance follows diffusers' pipelines: a guidance_scale ≤ 1 samples without it.
    DPM-Solver++ is the default: on the toy model at 25 steps it leaves far less residual
    noise than DDIM at 25 or 50 (fewer "unreadable" verdicts from the judge).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
    if masks is not None and (len(masks) != len(prompts) or space is None):
        raise ValueError("masks needs one entry (ConceptMask or None) per prompt and the NeuronSpace they were found in")
    if word_masks is not None and (len(word_masks) != len(prompts) or space is None):
        raise ValueError("word_masks needs one list of WordMasks per prompt and the NeuronSpace they were found in")
    images = []
    with attached(model.unet):  # once for every batch; each batch's concepts travel with its own calls
        for start in tqdm(range(0, len(prompts), batch_size), desc="sample", disable=not progress):
            end = start + batch_size
            batch_masks = None if masks is None else list(masks[start:end])
            batch_words = None if word_masks is None else list(word_masks[start:end])
            images.append(
                _sample_batch(model, list(prompts[start:end]), list(seeds[start:end]), steps, guidance_scale, sampler,
                              batch_masks, space, batch_words, layout)
            )
    return np.concatenate(images) if images else np.zeros((0, model.resolution, model.resolution, 3), np.uint8)


def _sample_batch(model, prompts, seeds, steps, guidance_scale, sampler, masks, space, word_masks=None,
                  layout=None) -> np.ndarray:
    pipe = model.pipeline(SAMPLERS[sampler].from_config(model.scheduler.config))
    concepts = concept_batch(model, space, prompts, masks=masks, word_masks=word_masks, layout=layout)
    side = model.unet.config.sample_size * pipe.vae_scale_factor  # the pipeline's pixels for our latent side
    # The stock pipeline tokenizes inside its call, so the whole call holds the tokenizer lock
    # (neurons/words.py): threads sharing a model generate one call at a time.
    with TOKENIZER_LOCK:
        latents = pipe(
            prompts, height=side, width=side, num_inference_steps=steps, guidance_scale=guidance_scale,
            latents=initial_noise(model, seeds), output_type="latent",
            cross_attention_kwargs=None if concepts is None else {KWARG: concepts}, return_dict=False,
        )[0]
    return decode(model, latents)
