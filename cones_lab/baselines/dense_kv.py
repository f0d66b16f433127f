"""Dense K/V fine-tuning: Custom Diffusion's recipe (Kumari et al., CVPR 2023) as a baseline for Cones.

The trained parameters are exactly the K/V weights Cones selects neurons from (a NeuronSpace of
the same `attention` kind), trained densely with AdamW on the subject's references under their
class prompts (training.fit). The caller's UNet is never written while training: the K/V weights
enter the forward as `functional_call` overrides (discovery.concept_loss), as in discovery.

A concept is its ΔW per K/V matrix (`KVDelta`, fp32 [out, in] each). Custom Diffusion's own
multi-concept modes are a joint fine-tune on the union of the concepts' images and a merge of the
separately trained updates; here the merge is the plain sum of the deltas (`KVDelta.__add__`).
Serialised with safetensors, keyed by the fully qualified parameter names, with the base model's
neuron-space fingerprint in the metadata so a delta refuses a model it was not trained on.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cones_lab.baselines.training import FineTuneParams, References, TrainedConcept, fit, references
from cones_tasks.neurons.discovery import concept_loss, frozen_unet
from cones_tasks.neurons.space import MaskModelMismatchError, NeuronSpace

__all__ = ["KVDelta", "added", "finetune_kv", "finetune_kv_on", "safetensors_metadata"]

FORMAT = "cones-baseline-kv-delta-v1"


@dataclass(frozen=True)
class KVDelta:
    """What a fine-tuned concept adds to a base model's K/V weights: ΔW per parameter name, fp32 [out, in]."""

    space_fingerprint: str  # NeuronSpace.fingerprint of the base model it was trained on
    deltas: dict[str, torch.Tensor]

    def __add__(self, other: KVDelta) -> KVDelta:
        """The sum of two concepts' updates (the merge mode of multi-subject generation)."""
        if other.space_fingerprint != self.space_fingerprint:
            raise MaskModelMismatchError("these deltas were trained on different base models; they cannot be summed")
        names = list(self.deltas) + [n for n in other.deltas if n not in self.deltas]
        zero = torch.zeros(())
        return KVDelta(self.space_fingerprint, {n: self.deltas.get(n, zero) + other.deltas.get(n, zero) for n in names})

    @classmethod
    def total(cls, deltas: Sequence[KVDelta]) -> KVDelta:
        out = deltas[0]
        for d in deltas[1:]:
            out = out + d
        return out

    def check(self, space: NeuronSpace) -> None:
        """Raise MaskModelMismatchError unless this delta was trained on `space`'s model, with its shapes."""
        if self.space_fingerprint != space.fingerprint:
            raise MaskModelMismatchError(
                f"this concept was trained on the model {self.space_fingerprint[:12]}, not on {space.fingerprint[:12]}: "
                "a dense update only means something on the weights it was trained from"
            )
        for name, delta in self.deltas.items():
            if tuple(delta.shape) != space.entry(name).shape:
                raise MaskModelMismatchError(f"{name}: delta {tuple(delta.shape)} vs weight {space.entry(name).shape}")

    def to_safetensors(self) -> bytes:
        """safetensors bytes: one fp32 tensor per K/V parameter name, the base fingerprint in the metadata."""
        from safetensors.torch import save

        tensors = {n: d.detach().float().contiguous().cpu() for n, d in self.deltas.items()}
        return save(tensors, metadata={"format": FORMAT, "space_fingerprint": self.space_fingerprint})

    @classmethod
    def from_safetensors(cls, blob: bytes, *, space: NeuronSpace) -> KVDelta:
        """Read `to_safetensors`' bytes back, refusing a base model other than `space`'s."""
        from safetensors.torch import load

        meta = safetensors_metadata(blob)
        if meta.get("format") != FORMAT:
            raise ValueError(f"not a dense K/V concept (format {meta.get('format')!r}, expected {FORMAT!r})")
        delta = cls(meta["space_fingerprint"], load(blob))
        delta.check(space)
        return delta


def safetensors_metadata(blob: bytes) -> dict[str, str]:
    """The `__metadata__` of safetensors bytes (the format: u64 little-endian header length, then JSON)."""
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + length]).get("__metadata__", {})


@contextlib.contextmanager
def added(unet: nn.Module, space: NeuronSpace, delta: KVDelta | None) -> Iterator[None]:
    """Within the block, `unet`'s K/V weights are W + ΔW; on exit (even on error) exact copies of W are put back.

    W + ΔW − ΔW is not W in floating point, so the originals are saved and copied back: the base
    weights are bit for bit what they were. None: no change.
    """
    if delta is None:
        yield
        return
    delta.check(space)
    modules = space.modules(unet)
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, d in delta.deltas.items():
                weight = modules[name].weight
                saved[name] = weight.detach().clone()
                weight.add_(d.to(weight.device, weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                modules[name].weight.copy_(original)


def finetune_kv(
    model,
    images: np.ndarray,
    prompts: str | Sequence[str],
    params: FineTuneParams = FineTuneParams(),
    *,
    prior_images: np.ndarray | None = None,
    prior_prompt: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> TrainedConcept:
    """Custom Diffusion on one subject: uint8 images [N, H, W, 3], one class prompt or one per image -> KVDelta.

    model: anything with `.unet`, `.scheduler`, `.encode_prompts` and optionally `.vae`
    (cones_tasks.loading.DiffusionModel), as for discovery.
    """
    gen = torch.Generator().manual_seed(seed)
    data = references(model, images, prompts, prior_images=prior_images if params.prior_weight > 0 else None,
                      prior_prompt=prior_prompt, generator=gen)
    return finetune_kv_on(model, data, params, generator=gen, progress=progress)


def finetune_kv_on(
    model, data: References, params: FineTuneParams, *, steps: int | None = None, generator: torch.Generator,
    progress: bool = False,
) -> TrainedConcept:
    """finetune_kv on prepared References (several subjects' References.concat for a joint fine-tune)."""
    unet = model.unet
    space = NeuronSpace.from_unet(unet, attention=params.attention)
    modules = space.modules(unet)
    base = {e.name: modules[e.name].weight.detach().float() for e in space.entries}
    # The weights themselves are the AdamW leaves, as in Custom Diffusion (weight decay pulls W, not ΔW).
    theta = {name: w.clone().requires_grad_(True) for name, w in base.items()}
    dtype = next(unet.parameters()).dtype

    def loss(batch, cond):
        return concept_loss(unet, batch, cond, {name: t.to(dtype) for name, t in theta.items()})

    with frozen_unet(unet):
        report = fit(model, data, params, loss, list(theta.values()), steps=steps, generator=generator, progress=progress,
                     desc="dense K/V")
    delta = KVDelta(space.fingerprint, {name: (theta[name].detach() - base[name]).cpu() for name in theta})
    report |= {"trained_parameters": space.size, "space_fingerprint": space.fingerprint}
    return TrainedConcept(delta, report)
