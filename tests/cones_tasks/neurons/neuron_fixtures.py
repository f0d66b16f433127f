"""Test helpers (imported by conftest and tests): tiny real diffusers UNets and a seeded text-embedding table (no hub access, CPU)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from cones_lab.benchmarks import preset_unet

TEXT_DIM = 16
TOKENS = 4


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """The diffusers-test-sized conditional UNet (4 cross- and 4 self-attention modules): the benches' "tiny" preset."""
    unet, tokens = preset_unet("tiny", seed=seed)
    assert tokens == TOKENS and unet.config.cross_attention_dim == TEXT_DIM
    return unet.eval()


@dataclass
class TinyModel:
    """DiffusionModel-like: unet + scheduler + encode_prompts (a fixed random embedding per prompt)."""

    unet: UNet2DConditionModel
    scheduler: DDPMScheduler
    vae: object | None = None
    seed: int = 0
    _table: dict[str, torch.Tensor] = field(default_factory=dict)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        out = []
        for p in prompts:
            if p not in self._table:
                digest = int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "little")
                g = torch.Generator().manual_seed(digest ^ self.seed)
                self._table[p] = torch.randn(TOKENS, TEXT_DIM, generator=g)
            out.append(self._table[p])
        return torch.stack(out)  # [B, T, D]


def tiny_model(seed: int = 0, *, prediction_type: str = "epsilon") -> TinyModel:
    return TinyModel(tiny_unet(seed), DDPMScheduler(num_train_timesteps=100, prediction_type=prediction_type), seed=seed)


def fixed_loss(model, images, prompt: str, *, draws: int = 8) -> float:
    """The subject's denoising loss on fixed (t, ε) draws (seed 123), with the model's current weights: the
    yardstick of "it learned the subject" for any method that changes the weights in place (a context manager)."""
    from cones_tasks.neurons.discovery import concept_loss
    from cones_tasks.neurons.noising import images_to_model_inputs, noised_batch, training_scheduler

    gen = torch.Generator().manual_seed(123)
    x0 = images_to_model_inputs(model, images, generator=gen).repeat_interleave(draws, 0)
    with torch.no_grad():
        cond = model.encode_prompts([prompt])
        batch = noised_batch(training_scheduler(model.scheduler), x0, generator=gen)
        return float(concept_loss(model.unet, batch, cond, {}))
