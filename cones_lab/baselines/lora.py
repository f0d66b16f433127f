"""LoRA on the K/V projections Cones selects from (Hu et al., 2021), as a baseline for Cones.

Each K/V `nn.Linear` W [out, in] gets a trainable pair A [r, in], B [out, r] and computes
W·x + (α/r)·B·A·x; B starts at zero, so training starts from the base model. The projections
are the ones a NeuronSpace holds (found by module type, cones_tasks.neurons.space), named to
peft by their fully qualified module names, so any diffusers UNet works.

Why peft and not a hand-written adapter: peft's layers are what diffusers' own LoRA training
scripts use (`unet.add_adapter(LoraConfig(...))`), so the baseline is the adapter users know,
with its initialisation and scaling, and the saved factors keep peft's key layout
(`<module>.lora_A.weight`, `<module>.lora_B.weight`). peft wraps modules in place; `lora_adapter`
takes the wrappers out again (peft's `unload`, which restores the original `nn.Linear` objects
without merging), so the caller's UNet keeps its weights bit for bit, its parameter names and its
requires_grad flags.

For sampling a concept becomes a dense ΔW = (α/r)·B·A per projection (`LoraFactors.delta`):
the same image as peft's forward up to float rounding, and one code path (dense_kv.added) for
both baselines' generation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from torch import nn

from cones_lab.baselines.dense_kv import KVDelta, safetensors_metadata
from cones_lab.baselines.training import FineTuneParams, References, TrainedConcept, fit, references
from cones_tasks.neurons.discovery import concept_loss, frozen_unet
from cones_tasks.neurons.space import MaskModelMismatchError, NeuronSpace

__all__ = ["LoraFactors", "LoraParams", "lora_adapter", "train_lora", "train_lora_on"]

FORMAT = "cones-baseline-lora-v1"
_ADAPTER = "cones_baseline"


class LoraParams(FineTuneParams):
    """A dense fine-tune's knobs plus the adapter's rank and scale."""

    rank: int = Field(4, ge=1, description="r: the rank of each K/V projection's update B·A")
    alpha: float | None = Field(None, gt=0.0, description="α: the update is scaled by α / r (None: α = r, scale 1)")
    learning_rate: float = Field(1e-2, gt=0.0, description="AdamW step size on A and B (chosen on the selection seeds)")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW's decoupled weight decay on A and B")


@dataclass(frozen=True)
class LoraFactors:
    """A LoRA concept: per K/V parameter name, down A [r, in] and up B [out, r], fp32; ΔW = (α/r)·B·A."""

    space_fingerprint: str
    rank: int
    alpha: float
    down: dict[str, torch.Tensor]
    up: dict[str, torch.Tensor]

    def delta(self) -> KVDelta:
        """The dense update this adapter adds to each projection's weight."""
        scale = self.alpha / self.rank
        return KVDelta(self.space_fingerprint, {n: scale * (self.up[n].float() @ self.down[n].float()) for n in self.down})

    def to_safetensors(self) -> bytes:
        """safetensors bytes in peft's key layout (`<module>.lora_A.weight` / `.lora_B.weight`), rank, α and the
        base model's fingerprint in the metadata."""
        from safetensors.torch import save

        tensors = {}
        for name in self.down:
            module = name.rsplit(".", 1)[0]
            tensors[f"{module}.lora_A.weight"] = self.down[name].detach().float().contiguous().cpu()
            tensors[f"{module}.lora_B.weight"] = self.up[name].detach().float().contiguous().cpu()
        meta = {"format": FORMAT, "space_fingerprint": self.space_fingerprint, "rank": str(self.rank), "alpha": repr(self.alpha)}
        return save(tensors, metadata=meta)

    @classmethod
    def from_safetensors(cls, blob: bytes, *, space: NeuronSpace) -> LoraFactors:
        """Read `to_safetensors`' bytes back, refusing a base model other than `space`'s."""
        from safetensors.torch import load

        meta = safetensors_metadata(blob)
        if meta.get("format") != FORMAT:
            raise ValueError(f"not a LoRA concept (format {meta.get('format')!r}, expected {FORMAT!r})")
        if meta["space_fingerprint"] != space.fingerprint:
            raise MaskModelMismatchError(
                f"this LoRA was trained on the model {meta['space_fingerprint'][:12]}, not on {space.fingerprint[:12]}"
            )
        tensors = load(blob)
        down, up = {}, {}
        for e in space.entries:
            a, b = tensors.get(f"{e.module_name}.lora_A.weight"), tensors.get(f"{e.module_name}.lora_B.weight")
            if a is None or b is None:
                continue
            if (b.shape[0], a.shape[1]) != e.shape:
                raise MaskModelMismatchError(f"{e.name}: factors {tuple(b.shape)}·{tuple(a.shape)} vs weight {e.shape}")
            down[e.name], up[e.name] = a, b
        return cls(meta["space_fingerprint"], int(meta["rank"]), float(meta["alpha"]), down, up)


@contextlib.contextmanager
def lora_adapter(unet: nn.Module, space: NeuronSpace, *, rank: int, alpha: float | None = None,
                 seed: int = 0) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, `space`'s K/V projections carry a fresh peft LoRA adapter; yields {param name: (A, B)}.

    A and B are trainable leaves (A: peft's Kaiming init from torch's RNG, seeded here; B: zeros);
    every other parameter is frozen. On exit the adapter is taken out (peft's unload, no merge):
    the original nn.Linear objects are back, weights untouched, parameter names and flags as before.
    """
    # peft is the optional `baselines` extra: imported only when a LoRA is built, so the rest of the lab loads without it
    try:
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel
    except ImportError as exc:
        raise ImportError("the LoRA baseline needs peft: pip install 'cones[baselines]'") from exc

    space.modules(unet)  # names and shapes must be this space's
    flags = {name: p.requires_grad for name, p in unet.named_parameters()}
    had_config = hasattr(unet, "peft_config")
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=0.0, init_lora_weights=True,
                        target_modules=[e.module_name for e in space.entries])
    rng = torch.random.get_rng_state()
    torch.manual_seed(seed)
    tuner = LoraModel(unet, config, _ADAPTER)
    torch.random.set_rng_state(rng)
    try:
        factors = {}
        for e in space.entries:
            layer = unet.get_submodule(e.module_name)
            factors[e.name] = (layer.lora_A[_ADAPTER].weight, layer.lora_B[_ADAPTER].weight)
        yield factors
    finally:
        tuner.unload()
        if not had_config and hasattr(unet, "peft_config"):
            del unet.peft_config
        for name, p in unet.named_parameters():
            p.requires_grad_(flags[name])


def train_lora(
    model,
    images: np.ndarray,
    prompts: str | Sequence[str],
    params: LoraParams = LoraParams(),
    *,
    prior_images: np.ndarray | None = None,
    prior_prompt: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> TrainedConcept:
    """LoRA on one subject's references (same data and loss as the dense baseline) -> LoraFactors."""
    gen = torch.Generator().manual_seed(seed)
    data = references(model, images, prompts, prior_images=prior_images if params.prior_weight > 0 else None,
                      prior_prompt=prior_prompt, generator=gen)
    return train_lora_on(model, data, params, generator=gen, seed=seed, progress=progress)


def train_lora_on(
    model, data: References, params: LoraParams, *, steps: int | None = None, generator: torch.Generator, seed: int = 0,
    progress: bool = False,
) -> TrainedConcept:
    """train_lora on prepared References (several subjects' References.concat for a joint fine-tune)."""
    unet = model.unet
    space = NeuronSpace.from_unet(unet, attention=params.attention)
    alpha = float(params.alpha if params.alpha is not None else params.rank)

    def loss(batch, cond):
        return concept_loss(unet, batch, cond, {})  # the adapters live in the modules

    with frozen_unet(unet), lora_adapter(unet, space, rank=params.rank, alpha=alpha, seed=seed) as factors:
        leaves = [t for pair in factors.values() for t in pair]
        report = fit(model, data, params, loss, leaves, steps=steps, generator=generator, progress=progress, desc="LoRA")
        concept = LoraFactors(space.fingerprint, params.rank, alpha,
                              {n: a.detach().float().cpu().clone() for n, (a, _) in factors.items()},
                              {n: b.detach().float().cpu().clone() for n, (_, b) in factors.items()})
    report |= {"trained_parameters": sum(t.numel() for t in leaves), "space_fingerprint": space.fingerprint,
               "rank": params.rank, "alpha": alpha}
    return TrainedConcept(concept, report)
