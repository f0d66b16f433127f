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
