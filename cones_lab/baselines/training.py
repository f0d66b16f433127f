"""What both baselines optimise: the diffusion loss of a subject's references under their prompts.

Custom Diffusion (Kumari et al., CVPR 2023, §3.1) trains the K/V weights on the ordinary
denoising loss of the subject's images under a caption, plus — with prior preservation — the
same loss on the base model's own images of the class prompt. Cones' concept-implanting loss is
the same loss (Cones §3.1, cones_tasks.neurons.discovery.concept_loss), so here the baselines and
Cones see the same images, prompts and forward process (the model's own DDPM schedule and
prediction type, cones_tasks.neurons.noising).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from cones_tasks.neurons.noising import images_to_model_inputs, noised_batch, training_scheduler

__all__ = ["FineTuneParams", "References", "TrainedConcept", "fit", "references"]


class FineTuneParams(BaseModel):
    """Knobs of one dense K/V fine-tune (Custom Diffusion's recipe); LoRA adds its rank (baselines.lora.LoraParams)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(
        200, ge=1, description="optimiser steps for one subject; a joint fine-tune of k subjects takes k × steps, so each "
        "subject's images are visited as often as alone (Custom Diffusion doubles its 250 steps for two concepts)",
    )
    batch_size: int = Field(6, ge=1, description="reference images per step")
    learning_rate: float = Field(
        2e-3, gt=0.0, description="AdamW step size (Custom Diffusion: 1e-5 × batch size on SD-1.5; the toy model's is "
        "chosen on the selection seeds, docs/baselines.md)",
    )
    weight_decay: float = Field(1e-2, ge=0.0, description="AdamW's decoupled weight decay (Custom Diffusion's 1e-2)")
    prior_weight: float = Field(
        0.0, ge=0.0, description="λ of the prior-preservation term: the same loss on the base model's own images of the "
        "class prompt (0: off)",
    )
    attention: Literal["cross", "self", "both"] = Field(
        "cross", description="which attention layers' K/V are trained: 'cross' is Custom Diffusion's and Cones' default"
    )


@dataclass(frozen=True)
class References:
    """A subject's training data as the UNet sees it."""

    x0: torch.Tensor  # clean inputs [N, C, h, w], fp32
    cond: torch.Tensor  # one text encoding per image [N, T, D], UNet dtype
    prior_x0: torch.Tensor | None = None  # the base model's class images [M, C, h, w]
    prior_cond: torch.Tensor | None = None  # their prompt [1, T, D]

    @classmethod
    def concat(cls, parts: Sequence[References]) -> References:
        """The union of several subjects' data (a joint multi-subject fine-tune); priors concatenated too."""
        priors = [p for p in parts if p.prior_x0 is not None]
        return cls(
            torch.cat([p.x0 for p in parts]), torch.cat([p.cond for p in parts]),
            torch.cat([p.prior_x0 for p in priors]) if priors else None,
            # one prior prompt per prior image when the subjects' classes differ
            torch.cat([p.prior_cond.expand(len(p.prior_x0), -1, -1) for p in priors]) if priors else None,
        )


def references(
    model, images: np.ndarray, prompts: str | Sequence[str], *, prior_images: np.ndarray | None = None,
    prior_prompt: str | None = None, generator: torch.Generator,
) -> References:
    """uint8 images [N, H, W, 3] and one prompt (or one per image) -> References on the UNet's device.

    prior_images (with prior_prompt, the prompt they were sampled for) are needed only when a
    fine-tune's prior_weight > 0.
    """
    first = next(model.unet.parameters())
    x0 = images_to_model_inputs(model, images, generator=generator)
    texts = [prompts] * len(x0) if isinstance(prompts, str) else list(prompts)
    if len(texts) != len(x0):
        raise ValueError(f"got {len(texts)} prompts for {len(x0)} images; pass one prompt, or one per image")
    with torch.no_grad():
        cond = model.encode_prompts(texts).to(first.device, first.dtype)
        prior_x0 = prior_cond = None
        if prior_images is not None:
            if prior_prompt is None:
                raise ValueError("prior_images need prior_prompt: the class prompt they were sampled for (e.g. 'a dog')")
            prior_x0 = images_to_model_inputs(model, prior_images, generator=generator)
            prior_cond = model.encode_prompts([prior_prompt]).to(first.device, first.dtype)
    return References(x0, cond, prior_x0, prior_cond)


@dataclass(frozen=True)
class TrainedConcept:
    """A baseline's result: the concept (a KVDelta or LoraFactors) and what it cost."""

    concept: Any
    report: dict[str, Any]


def fit(
    model,
    data: References,
    params: FineTuneParams,
    loss: Callable[[Any, torch.Tensor], torch.Tensor],
    trainable: Sequence[torch.Tensor],
    *,
    steps: int | None = None,
    generator: torch.Generator,
    progress: bool = False,
    desc: str = "fine-tune",
) -> dict[str, Any]:
    """AdamW on `trainable` for `steps` (default params.steps) steps of the subject loss (+ λ × prior loss).

    loss(batch, cond) -> scalar: the diffusion loss of a NoisedBatch under text `cond` [B, T, D],
    with whatever weights the baseline trains. Returns the report: steps, wall seconds, the loss curve.
    """
    if params.prior_weight > 0 and data.prior_x0 is None:
        raise ValueError(
            "prior_weight > 0 needs prior images: sample a few images of the class prompt with the base model "
            "(cones_tasks.sampling.sample) and pass them as prior_images, or set prior_weight=0"
        )
    steps = params.steps if steps is None else steps
    scheduler = training_scheduler(model.scheduler)
    optimizer = torch.optim.AdamW(list(trainable), lr=params.learning_rate, weight_decay=params.weight_decay)
    started = time.perf_counter()
    curve: list[float] = []
    order: list[int] = []
    n = data.x0.shape[0]
    for _ in tqdm(range(steps), desc=desc, disable=not progress):
        idx = []
        while len(idx) < params.batch_size:
            if not order:  # epoch-style: every image once before any repeats
                order = torch.randperm(n, generator=generator).tolist()
            idx.append(order.pop())
        idx_t = torch.tensor(idx)
        value = loss(noised_batch(scheduler, data.x0[idx_t], generator=generator), data.cond[idx_t])
        if params.prior_weight > 0:
            pidx = torch.randint(0, data.prior_x0.shape[0], (len(idx),), generator=generator)
            pcond = data.prior_cond[pidx] if data.prior_cond.shape[0] > 1 else data.prior_cond.expand(len(idx), -1, -1)
            value = value + params.prior_weight * loss(noised_batch(scheduler, data.prior_x0[pidx], generator=generator), pcond)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        curve.append(float(value.detach()))
    return {"steps": steps, "time_s": time.perf_counter() - started, "loss_curve": curve, "images": n,
            "params": params.model_dump()}
