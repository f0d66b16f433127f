"""uint8 images ↔ the [-1, 1] float range pixel-space diffusion models work in."""

from __future__ import annotations

import numpy as np
import torch


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] → float [B, 3, H, W] in [-1, 1], on the tensor's device."""
    pixels = images if isinstance(images, torch.Tensor) else torch.from_numpy(images)
    return pixels.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def from_model_range(samples: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] → uint8 [B, H, W, 3]."""
    return samples.float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
