"""Concept masks: sets of shut neurons, their algebra, and applying them (docs/discovery.md).

A `ConceptMask` is a sorted set of global neuron indices of one `NeuronSpace`
(never a dense float tensor: the public notebook's defect). Applying a mask
never writes the model's weights: `shut` and `per_sample` temporarily replace
the forward of the K/V `nn.Linear`s with one that computes the layer with the
shut weights zeroed, and restore it on exit (even on error), so the weights are
bit for bit what they were (the notebook overwrote them and never restored).

`per_sample` is what makes fan-out over many subject combinations cheap: one
UNet forward over a batch in which element i uses masks[i % G]. K/V of
cross-attention act only on the T text tokens, so the per-sample masked
projection costs B·T·D_text·D_out multiply-adds per layer — ~1% of an SD-1.5
UNet forward.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cones_tasks.neurons.space import MaskModelMismatchError, NeuronSpace

__all__ = ["ConceptMask", "MaskModelMismatchError", "RowEdits", "is_masked", "per_sample", "shut"]


@dataclass(frozen=True, eq=False)
class ConceptMask:
    """A set of shut neurons: sorted unique int64 global indices of one neuron space."""

    space_fingerprint: str
    size: int
    indices: np.ndarray

    def __post_init__(self) -> None:
        idx = np.asarray(self.indices)
        if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"mask indices must be a 1-D integer array, got shape {idx.shape} dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=True)
        if idx.size:
            if idx[0] < 0 or idx[-1] >= self.size:
                raise ValueError(f"mask indices must lie in [0, {self.size}); got [{idx.min()}, {idx.max()}]")
            if np.any(np.diff(idx) <= 0):
                raise ValueError("mask indices must be sorted and unique; build masks with ConceptMask.from_indices")
        idx.setflags(write=False)  # frozen means frozen: no caller can edit a stored mask in place
        object.__setattr__(self, "indices", idx)

    # ------------------------------------------------------------ construction

    @classmethod
    def from_indices(cls, space: NeuronSpace, indices: np.ndarray | Sequence[int]) -> ConceptMask:
        """Mask of `space` from any int indices (sorted and de-duplicated here)."""
        return cls(space.fingerprint, space.size, np.unique(np.asarray(indices, dtype=np.int64)))

    @classmethod
    def empty(cls, space: NeuronSpace) -> ConceptMask:
        return cls(space.fingerprint, space.size, np.empty(0, dtype=np.int64))

    # ------------------------------------------------------------ properties

    @property
    def count(self) -> int:
        return int(self.indices.size)

    @property
    def fraction(self) -> float:
        return self.count / self.size if self.size else 0.0

    @property
    def content_hash(self) -> str:
        """sha256 of (fingerprint, size, indices): equal masks hash alike (content-keyed writes)."""
        h = hashlib.sha256(self.space_fingerprint.encode())
        h.update(np.int64(self.size).tobytes())
        h.update(self.indices.tobytes())
        return h.hexdigest()

    def per_layer(self, space: NeuronSpace) -> dict[str, int]:
        """{K/V parameter name: number of shut neurons in it}."""
        self.check(space)
        return space.counts_per_layer(self.indices)

    def check(self, space: NeuronSpace) -> None:
        """Raise MaskModelMismatchError unless this mask was found on `space`'s model."""
        if self.space_fingerprint != space.fingerprint or self.size != space.size:
            raise MaskModelMismatchError(
                f"mask was found on model {self.space_fingerprint[:12]} (space of {self.size} neurons) but is applied to "
                f"model {space.fingerprint[:12]} ({space.size} neurons, attention={space.attention!r}); "
                "run discovery on this model, or load the model the mask was found on"
            )

    # ------------------------------------------------------------ set algebra

    def _same_space(self, other: ConceptMask) -> None:
        if not isinstance(other, ConceptMask):
            raise TypeError(f"expected a ConceptMask, got {type(other).__name__}")
        if other.space_fingerprint != self.space_fingerprint or other.size != self.size:
            raise MaskModelMismatchError(
                f"cannot combine masks of different models ({self.space_fingerprint[:12]} vs {other.space_fingerprint[:12]})"
            )

    def _with(self, indices: np.ndarray) -> ConceptMask:
        return ConceptMask(self.space_fingerprint, self.size, indices)

    def union(self, *others: ConceptMask) -> ConceptMask:
        """Neurons shut by any mask: the multi-subject composition (Cones §3.3)."""
        idx = self.indices
        for other in others:
            self._same_space(other)
            idx = np.union1d(idx, other.indices)
        return self._with(idx)

    def intersection(self, *others: ConceptMask) -> ConceptMask:
        idx = self.indices
        for other in others:
            self._same_space(other)
            idx = np.intersect1d(idx, other.indices, assume_unique=True)
        return self._with(idx)

    def difference(self, other: ConceptMask) -> ConceptMask:
        self._same_space(other)
        return self._with(np.setdiff1d(self.indices, other.indices, assume_unique=True))

    __or__ = union
    __and__ = intersection
    __sub__ = difference

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConceptMask):
            return NotImplemented
        return (
            self.space_fingerprint == other.space_fingerprint
            and self.size == other.size
            and np.array_equal(self.indices, other.indices)
        )

    def __hash__(self) -> int:
        return hash(self.content_hash)

    def __repr__(self) -> str:
        return f"ConceptMask(model={self.space_fingerprint[:12]}, count={self.count}, size={self.size})"

    # ------------------------------------------------------------ storage

    def to_bytes(self) -> bytes:
        """Indices + universe via the storage codec (the fingerprint is stored beside it, e.g. a catalog column)."""
        from cones_tasks.codec import encode_indices

        return encode_indices(self.indices, self.size)

    @classmethod
    def from_bytes(cls, blob: bytes, *, space_fingerprint: str) -> ConceptMask:
        from cones_tasks.codec import decode_indices, decoded_universe

        return cls(space_fingerprint, decoded_universe(blob), decode_indices(blob))


# ---------------------------------------------------------------- applying masks


@dataclass(frozen=True)
class RowEdits:
    """Additive updates of some (batch element, text token) rows of the K/V projections' outputs.

    Word-scoped masks (cones_tasks.neurons.word_scope) act through these: row n of the update is
    added to output [batch[n], rows[n], :] of every layer named in `values` ([N, out] each).
    `batch_size`, when set, is the UNet batch they were built for; a forward of another batch
    size is refused rather than edited at the wrong elements.
    """

    batch: torch.Tensor  # [N] int64
    rows: torch.Tensor  # [N] int64
    values: dict[str, torch.Tensor]  # K/V parameter name -> [N, out]
    batch_size: int | None = None


@contextlib.contextmanager
def shut(unet: nn.Module, space: NeuronSpace, mask: ConceptMask) -> Iterator[None]:
    """Within the block, every forward of `unet` sees `mask`'s neurons zeroed (Cones §3.1 "shut").

    Outputs equal those of a copy of the UNet whose weights were zeroed by hand;
    the UNet's own weights are never written.
    """
    with per_sample(unet, space, [mask]):
        yield


@contextlib.contextmanager
def per_sample(
    unet: nn.Module, space: NeuronSpace, masks: Sequence[ConceptMask | None], *, row_edits: RowEdits | None = None
) -> Iterator[None]:
    """Within the block, batch element i of every UNet forward uses masks[i % len(masks)] (None: no mask).

    `row_edits` are added on top (word-scoped masks), so one forward serves a batch that mixes
    every-token and word-scoped compositions.

    The batch of each forward must be a multiple of G = len(masks). The `i % G`
    mapping is chosen so classifier-free guidance works unchanged: pipelines
    double the batch as [uncond_0..uncond_{G-1}, cond_0..cond_{G-1}], and both
    halves of prompt j then use masks[j].

    Assumes the K/V projections see the UNet's batch as their leading dim
    (true of diffusers' 2-D UNets; not of video UNets that fold frames into it).
    """
    if len(masks) == 0:
        raise ValueError("per_sample needs at least one mask (use None for 'no mask')")
    for m in masks:
        if m is not None:
            m.check(space)
    modules = space.modules(unet)
    _refuse_fused_projections(unet, space)
    edited = set(row_edits.values) if row_edits is not None else set()
    if all(m is None or m.count == 0 for m in masks) and not edited:
        yield  # nothing shut: leave the UNet's fast path alone
        return
    located = [space.locate(m.indices) if m is not None else None for m in masks]
    installed: list[nn.Linear] = []
    try:
        for e in space.entries:
            shuts = any(loc is not None and loc[e.name].size for loc in located)
            if not shuts and e.name not in edited:
                continue
            module = modules[e.name]
            # shut positions in the flattened [G, out, in] stack: sparse, so G masks cost their indices, not G dense masks
            flat = np.concatenate(
                [loc[e.name] + g * e.numel for g, loc in enumerate(located) if loc is not None and loc[e.name].size]
                or [np.empty(0, dtype=np.int64)]
            )
            edit = None
            if e.name in edited:
                edit = (row_edits.batch, row_edits.rows, row_edits.values[e.name], row_edits.batch_size)
            groups = len(masks) if shuts else 1
            _install(module, _MaskedLinear(module, groups, torch.from_numpy(flat).to(module.weight.device), edit))
            installed.append(module)
        yield
    finally:
        for module in installed:
            _uninstall(module)


_MARK = "_cones_masked_forward"


def _install(module: nn.Linear, masked: _MaskedLinear) -> None:
    # An instance-level `forward` shadows nn.Linear.forward for this module only: module(x) still runs
    # through nn.Module.__call__ (other libraries' hooks keep working) but the unmasked matmul is never
    # computed and thrown away, as a forward hook would. Deleting the attribute restores the class's.
    if _MARK in module.__dict__:
        raise RuntimeError(
            "a concept mask is already applied to this UNet: nested shut/per_sample blocks would not combine; "
            "apply one block with the union of the masks (ConceptMask.union)"
        )
    if "forward" in module.__dict__:
        raise RuntimeError(f"{type(module).__name__}.forward is already patched by another library; cannot apply a mask")
    module.__dict__[_MARK] = True
    module.forward = masked


def _uninstall(module: nn.Linear) -> None:
    module.__dict__.pop("forward", None)
    module.__dict__.pop(_MARK, None)


def is_masked(module: nn.Module) -> bool:
    """True while a shut/per_sample block has replaced this linear's forward."""
    return _MARK in module.__dict__


class _MaskedLinear:
    """forward of a K/V nn.Linear with per-group shut weights zeroed: y_i = x_i·(W ⊙ ¬M_{i mod G})ᵀ + b.

    Computing with the zeroed weights (rather than subtracting x·(W⊙M)ᵀ) makes
    `shut` bit-identical to a hand-zeroed model; gradients still flow to W.
    The masked stack [G, out, in] is cached while W is unchanged and no gradient
    is needed (sampling), if it is small (≤ CACHE_BYTES); otherwise it is rebuilt
    per forward — transient, one layer at a time, so memory stays O(G × largest
    layer) instead of O(G × all K/V weights) (SD-1.5 fp16: 38 MB per mask).
    """

    CACHE_BYTES = 64 << 20

    def __init__(self, module: nn.Linear, groups: int, shut_flat: torch.Tensor, edit=None) -> None:
        self.module = module
        self.groups = groups
        self.shut_flat = shut_flat  # int64 indices into the flattened [G, out, in] stack
        self.edit = edit  # (batch [N], rows [N], values [N, out], expected batch size or None): RowEdits of this layer
        self._cache: tuple[tuple[int, int, torch.dtype], torch.Tensor] | None = None

    def _build(self, weight: torch.Tensor) -> torch.Tensor:
        stack = weight.unsqueeze(0).expand(self.groups, *weight.shape).reshape(-1)  # a copy: expand + reshape
        return stack.index_fill(0, self.shut_flat, 0).view(self.groups, *weight.shape)

    def _weights(self, weight: torch.Tensor) -> torch.Tensor:
        if self.shut_flat.numel() == 0:
            return weight.unsqueeze(0)  # row edits only: the layer's own weights, no copy
        small = self.groups * weight.numel() * weight.element_size() <= self.CACHE_BYTES
        if (torch.is_grad_enabled() and weight.requires_grad) or not small:
            return self._build(weight)
        key = (weight._version, weight.data_ptr(), weight.dtype)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._build(weight))
        return self._cache[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module  # x: [B, N, in] (or [B, in])
        w = self._weights(module.weight)  # [G, out, in]
        groups = w.shape[0]
        if groups == 1:
            return self._edit(x, F.linear(x, w[0], module.bias))
        batch = x.shape[0]
        if batch % groups:
            raise ValueError(
                f"per_sample got {groups} masks but a forward batch of {batch}: the batch must be a multiple of "
                "the number of masks (element i uses masks[i % len(masks)])"
            )
        xr = x.reshape(batch // groups, groups, -1, x.shape[-1])  # [R, G, N, in]; element r*G+g uses mask g
        out = torch.einsum("rgni,goi->rgno", xr, w)
        if module.bias is not None:
            out = out + module.bias
        return self._edit(x, out.reshape(*x.shape[:-1], w.shape[1]))

    def _edit(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out [B, T, out] with the row edits added at their (batch element, token) rows."""
        if self.edit is None:
            return out
        batch, rows, values, expected = self.edit
        if x.dim() != 3 or (expected is not None and x.shape[0] != expected):
            raise ValueError(
                f"word-scoped masks were built for a UNet batch of {expected} prompts' text states [B, T, D], but this "
                f"forward got {tuple(x.shape)}; build the row edits for the batch the UNet is called with"
            )
        return out.index_put((batch, rows), values.to(out.dtype), accumulate=True)


def _refuse_fused_projections(unet: nn.Module, space: NeuronSpace) -> None:
    # fuse_qkv_projections() routes K/V through a fused `to_kv`/`to_qkv`, bypassing our hooks on to_k/to_v:
    # masking would silently do nothing.
    for e in space.entries:
        parent = unet.get_submodule(e.module_name.rsplit(".", 1)[0]) if "." in e.module_name else unet
        if getattr(parent, "fused_projections", False):
            raise RuntimeError(
                f"{e.module_name.rsplit('.', 1)[0]} uses fused QKV projections, which bypass to_k/to_v; "
                "call unet.unfuse_qkv_projections() before applying concept masks"
            )
