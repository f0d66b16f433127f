"""The diffusion loss Cones scores neurons with, in the model's own parametrisation (Cones §3.1).

The public notebook noised latents with an LMS scheduler's `add_noise` and
never called `scale_model_input`, so the UNet saw inputs from a distribution it
was not trained on. Here the forward process is always the DDPM one the model
was trained with, rebuilt from the model's scheduler config (as diffusers'
training scripts do), and the target follows `prediction_type`
(epsilon, v_prediction or sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from cones_tasks.pixels import to_model_range

__all__ = ["NoisedBatch", "images_to_model_inputs", "model_resolution", "noised_batch", "training_scheduler"]


def training_scheduler(scheduler) -> DDPMScheduler:
    """The DDPM forward process of `scheduler`'s config (betas, T, prediction type), whatever sampler it is."""
    return DDPMScheduler.from_config(scheduler.config)


def model_resolution(model) -> int:
    """Pixel resolution the UNet was trained at: sample_size × the VAE's downsampling factor."""
    size = model.unet.config.sample_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    vae = getattr(model, "vae", None)
    if vae is not None:
        size *= 2 ** (len(vae.config.block_out_channels) - 1)
    return int(size)


def images_to_model_inputs(model, images: np.ndarray, *, generator: torch.Generator) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> the UNet's clean inputs x0 [N, C, h, w] (fp32, on the UNet's device).

    Pixel-space models take [-1, 1] images; latent models take
    (vae.encode(x).sample - shift) * scaling_factor. Images are center-cropped
    and resized to the model's resolution when they differ.
    """
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, 3]; got {arr.dtype} {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("no images: discovery needs at least one image of the subject")
    unet = model.unet
    device = next(unet.parameters()).device
    x = to_model_range(arr)  # [N, 3, H, W] in [-1, 1]
    x = _fit(x, model_resolution(model))
    vae = getattr(model, "vae", None)
    if vae is None:
        if unet.config.in_channels != 3:
            raise ValueError(
                f"the UNet takes {unet.config.in_channels} channels but the model has no VAE: "
                "load the model with its vae to discover on latents"
            )
        return x.to(device)
    vae_dtype = next(vae.parameters()).dtype
    with torch.no_grad():
        dist = vae.encode(x.to(device, vae_dtype)).latent_dist
        # sample on CPU with the caller's generator: same latents on every device
        eps = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(device)
        latents = dist.mean.float() + dist.std.float() * eps
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def _fit(x: torch.Tensor, resolution: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if (h, w) == (resolution, resolution):
        return x
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)


@dataclass(frozen=True)
class NoisedBatch:
    noisy: torch.Tensor  # x_t [B, C, h, w]
    timesteps: torch.Tensor  # [B] int64
    target: torch.Tensor  # what the UNet should predict [B, C, h, w]


def noised_batch(scheduler: DDPMScheduler, x0: torch.Tensor, *, generator: torch.Generator) -> NoisedBatch:
    """x_t = add_noise(x0, ε, t) at uniform random t, with the target of the scheduler's prediction type.

    Noise and timesteps are drawn on CPU from `generator` (deterministic on every device).
    """
    batch = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator).to(x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    elif kind == "sample":
        target = x0
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}; expected epsilon, v_prediction or sample")
    return NoisedBatch(noisy, t, target)
