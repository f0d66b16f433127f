"""The neuron space of a diffusion UNet (docs/discovery.md).

Cones (§3.1) calls every scalar weight of the K and V projections of the
UNet's attention layers a "neuron". A `NeuronSpace` lays those weights out as
one flat index range [0, size): each maskable parameter gets a contiguous
slice, in `named_parameters()` order, keyed by its fully qualified name, so a
mask is a set of global int indices that round-trips through the catalog.

Parameters are found by module type (diffusers `Attention` and its
`is_cross_attention` flag, then `.to_k` / `.to_v`), never by parsing names or
by SD-1.x layer counts, so the same code covers the toy UNet, SD-1.5 and SDXL.

`fingerprint` hashes names, shapes and the weights themselves: a mask found on
one checkpoint refuses a different checkpoint with the same architecture
(`MaskModelMismatchError`), the defect of storing bare indices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

__all__ = ["AttentionKind", "MaskModelMismatchError", "NeuronSpace", "SpaceEntry", "attention_modules"]

AttentionKind = Literal["cross", "self", "both"]
_FINGERPRINT_VERSION = b"cones-neuron-space-v1"


class MaskModelMismatchError(ValueError):
    """A mask (or another space's data) was applied to a model it was not found on."""


@dataclass(frozen=True)
class SpaceEntry:
    """One maskable K/V weight matrix: global indices [offset, offset + numel)."""

    name: str  # fully qualified `named_parameters()` name, e.g. "...attn2.to_k.weight"
    shape: tuple[int, ...]  # [out_features, in_features]
    offset: int
    numel: int
    cross: bool  # True for cross-attention (K/V act on text tokens)

    @property
    def module_name(self) -> str:
        """The owning nn.Linear's qualified name (the parameter's parent)."""
        return self.name.rsplit(".", 1)[0]


def _attention_types() -> tuple[type, ...]:
    # Imported lazily: nothing heavy at import time (STYLE.md, Configuration).
    from diffusers.models.attention_processor import Attention

    types: list[type] = [Attention]
    try:  # newer diffusers attention classes share this mixin
        from diffusers.models.attention import AttentionModuleMixin

        types.append(AttentionModuleMixin)
    except ImportError:  # pragma: no cover - older diffusers
        pass
    return tuple(types)


def attention_modules(unet: nn.Module, *, attention: AttentionKind = "cross") -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every attention module of the requested kind, by module type."""
    if attention not in ("cross", "self", "both"):
        raise ValueError(f"attention must be 'cross', 'self' or 'both', got {attention!r}")
    types = _attention_types()
    found = []
    for name, module in unet.named_modules():
        if not isinstance(module, types):
            continue
        if not (isinstance(getattr(module, "to_k", None), nn.Linear) and isinstance(getattr(module, "to_v", None), nn.Linear)):
            continue
        cross = bool(getattr(module, "is_cross_attention", False))
        if attention == "both" or (attention == "cross") == cross:
            found.append((name, module))
    return found


@dataclass(frozen=True)
class NeuronSpace:
    """Flat layout of a UNet's maskable K/V weights plus a model fingerprint."""

    entries: tuple[SpaceEntry, ...]
    attention: AttentionKind
    fingerprint: str  # names + shapes + weights (fp16-rounded); hex

    @classmethod
    def from_unet(cls, unet: nn.Module, *, attention: AttentionKind = "cross") -> NeuronSpace:
        """Find the K/V weights of `unet`'s attention modules of kind `attention`.

        Raises ValueError when the model has no such attention module (e.g.
        asking for "cross" on an unconditional UNet).
        """
        modules = attention_modules(unet, attention=attention)
        wanted: dict[int, bool] = {}  # id(weight) -> cross
        for _, module in modules:
            cross = bool(getattr(module, "is_cross_attention", False))
            wanted[id(module.to_k.weight)] = cross
            wanted[id(module.to_v.weight)] = cross
        if not wanted:
            raise ValueError(
                f"{type(unet).__name__} has no {attention}-attention modules with to_k/to_v projections; "
                "pick attention='self' or 'both', or pass a UNet with attention blocks"
            )
        entries: list[SpaceEntry] = []
        weights: list[torch.Tensor] = []
        offset = 0
        # named_parameters order is the model's definition order: stable across loads of one architecture.
        for name, param in unet.named_parameters():
            if id(param) not in wanted:
                continue
            entries.append(SpaceEntry(name, tuple(param.shape), offset, param.numel(), wanted.pop(id(param))))
            weights.append(param)
            offset += param.numel()
        return cls(tuple(entries), attention, _fingerprint(entries, weights))

    # ------------------------------------------------------------ layout

    @property
    def size(self) -> int:
        """Total number of neurons (scalar K/V weights) in the space."""
        last = self.entries[-1]
        return last.offset + last.numel

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    @property
    def layout_hash(self) -> str:
        """Hash of names and shapes only: equal for two checkpoints of one architecture."""
        h = hashlib.sha256(_FINGERPRINT_VERSION)
        _update_layout(h, self.entries)
        return h.hexdigest()

    def entry(self, name: str) -> SpaceEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"{name!r} is not a parameter of this neuron space")

    def locate(self, global_indices: np.ndarray) -> dict[str, np.ndarray]:
        """Split sorted global indices into {parameter name: local flat indices (int64)}.

        Every entry appears (possibly with an empty array), in layout order.
        """
        idx = np.asarray(global_indices, dtype=np.int64)
        if idx.size and (idx[0] < 0 or idx[-1] >= self.size):
            raise IndexError(f"indices must lie in [0, {self.size}); got [{idx[0]}, {idx[-1]}]")
        offsets = np.array([e.offset for e in self.entries] + [self.size], dtype=np.int64)
        cuts = np.searchsorted(idx, offsets)
        return {e.name: idx[cuts[i] : cuts[i + 1]] - e.offset for i, e in enumerate(self.entries)}

    def counts_per_layer(self, global_indices: np.ndarray) -> dict[str, int]:
        """{parameter name: number of indices falling in it}."""
        return {name: int(local.size) for name, local in self.locate(global_indices).items()}

    def modules(self, unet: nn.Module) -> dict[str, nn.Linear]:
        """{parameter name: the nn.Linear owning it} in `unet`, checking names and shapes.

        Raises MaskModelMismatchError when `unet` does not have this space's layout.
        """
        found: dict[str, nn.Linear] = {}
        for e in self.entries:
            try:
                module = unet.get_submodule(e.module_name)
            except AttributeError:
                module = None
            if not isinstance(module, nn.Linear) or tuple(module.weight.shape) != e.shape:
                raise MaskModelMismatchError(
                    f"this UNet has no {e.shape} linear layer {e.module_name!r}: the neuron space was built on a "
                    "different architecture; rebuild it with NeuronSpace.from_unet(unet)"
                )
            found[e.name] = module
        return found

    def check_unet(self, unet: nn.Module) -> None:
        """Raise MaskModelMismatchError unless `unet` is the model this space was built on (full fingerprint)."""
        other = NeuronSpace.from_unet(unet, attention=self.attention)
        if other.fingerprint != self.fingerprint:
            raise MaskModelMismatchError(
                f"UNet fingerprint {other.fingerprint[:12]} differs from the neuron space's {self.fingerprint[:12]}: "
                "the weights or layout changed since the space was built"
            )

    def flat_weights(self, unet: nn.Module) -> torch.Tensor:
        """All maskable weights of `unet` as one detached fp32 vector [size] (global index order)."""
        mods = self.modules(unet)
        return torch.cat([mods[e.name].weight.detach().float().reshape(-1).cpu() for e in self.entries])


def _update_layout(h: hashlib._Hash, entries) -> None:
    for e in entries:
        h.update(e.name.encode())
        h.update(b"\0")
        h.update(np.asarray(e.shape, dtype=np.int64).tobytes())


def _fingerprint(entries: list[SpaceEntry], weights: list[torch.Tensor]) -> str:
    """sha256 over names, shapes and the K/V weights rounded to fp16.

    Rounding to fp16 makes one checkpoint loaded as fp32 or fp16 hash alike
    (fp32 -> fp16 is the same rounding a fp16 load does), and halves the bytes
    hashed: ~38 MB for SD-1.5's 19.2 M cross-attention weights. Only the K/V
    weights are hashed (cheap), which is what a mask's meaning depends on.
    """
    h = hashlib.sha256(_FINGERPRINT_VERSION)
    _update_layout(h, entries)
    with torch.no_grad():
        for w in weights:
            h.update(w.detach().to(torch.float16).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
