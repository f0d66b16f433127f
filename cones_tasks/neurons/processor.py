"""Concept neurons applied inside diffusers attention: the Cones attention processor (docs/discovery.md).

Cones (§3.1) shuts neurons, scalar weights of the attention layers' K/V projections. diffusers'
hook for per-call behaviour inside attention is the attention processor, fed per call through
`cross_attention_kwargs` (CustomDiffusionAttnProcessor and IPAdapterAttnProcessor work this way),
so that is where masks act here, and they act inside any stock pipeline:

- `attached(unet)` wraps every attention module's processor in a `ConesAttnProcessor` and, on
  exit, puts the very same processor objects back. Attachments nest and are counted per UNet, so
  threads sharing one UNet may each hold one: the wrappers stay until the last holder leaves.
- What a call applies travels with the call: `unet(..., cross_attention_kwargs={"cones": batch})`
  with a `ConceptBatch`, never in the module, so two threads generating different subjects on
  one UNet cannot see each other's masks. A call without it runs the pipeline's own processor
  unchanged.
- The wrapped processor still computes attention (SDPA, xformers, sliced...); for a call that
  masks a layer, only the K/V projections it calls are replaced, by the masked ones. Nothing
  writes a weight: masked K/V are computed with a masked copy of the weights (bit for bit what
  a hand-zeroed model computes) plus sparse row edits (word-scoped masks,
  cones_tasks.neurons.word_scope); gradients flow to the weights and to the edit values, which
  is how word-scoped discovery learns its edit (cones_tasks.neurons.word_discovery).

Per-sample masks make fan-out over many subject combinations cheap: one UNet forward over a
batch in which element i uses masks[i % G]. K/V of cross-attention act only on the T text
tokens, so a per-sample masked projection costs B·T·D_text·D_out multiply-adds per layer, ~1 %
of an SD-1.5 UNet forward.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cones_tasks.neurons.space import NeuronSpace

__all__ = ["ConceptBatch", "ConesAttnProcessor", "RowEdits", "attached", "conditional_offset", "is_attached", "per_sample",
           "shut"]

KWARG = "cones"  # the cross_attention_kwargs key a ConceptBatch travels under


@dataclass(frozen=True)
class RowEdits:
    """Additive updates of some (prompt, text token) rows of the K/V projections' outputs.

    Word-scoped masks (cones_tasks.neurons.word_scope) act through these: row n of the update is
    added to output [batch[n], rows[n], :] of every layer named in `values` ([N, out] each).
    `batch_size` is the number of prompts they were built for (None: any batch, indices as given).
    A forward of that many elements is edited as given; a forward of twice as many is a
    classifier-free-guidance batch [unconditional..., conditional...] as diffusers' pipelines build
    it, and only its conditional half is edited (the unconditional prompt names no subject). Any
    other batch size is refused rather than edited at the wrong elements.
    """

    batch: torch.Tensor  # [N] int64
    rows: torch.Tensor  # [N] int64
    values: dict[str, torch.Tensor]  # K/V parameter name -> [N, out]
    batch_size: int | None = None

    def offset(self, forward_batch: int) -> int:
        """Index of the first conditional element in a forward of `forward_batch` elements."""
        return conditional_offset(self.batch_size, forward_batch, "word-scoped masks")


def conditional_offset(built_for: int | None, forward_batch: int, what: str) -> int:
    """Where prompt 0 of a batch built for `built_for` prompts sits in a forward of `forward_batch` elements.

    As many: 0. Twice as many: a classifier-free-guidance batch [unconditional..., conditional...] as diffusers'
    pipelines build it, so `built_for`. Anything else is refused rather than applied at the wrong elements.
    """
    if built_for is None or forward_batch == built_for:
        return 0
    if forward_batch == 2 * built_for:
        return built_for
    raise ValueError(
        f"{what} were built for {built_for} prompts, but the UNet was called with a batch of {forward_batch} "
        f"(expected {built_for}, or {2 * built_for} under classifier-free guidance); build the concept batch for the "
        "prompts the pipeline is called with (one entry per image)"
    )


@dataclass(eq=False)
class ConceptBatch:
    """What one UNet call applies: every-token masks per batch element and word-scoped row edits.

    masks: element i of the forward uses masks[i % len(masks)] (None: no mask; empty: none at all).
    The `i % G` mapping makes classifier-free guidance work unchanged: pipelines double the batch
    as [uncond_0..uncond_{G-1}, cond_0..cond_{G-1}], and both halves of prompt j then use masks[j]
    (the Cones-edited model is the model, conditional or not, Cones §3.2).
    row_edits: added on top (RowEdits), so one forward serves a batch that mixes every-token and
    word-scoped compositions.
    regions: layout attention control (cones_tasks.neurons.layout.RegionBias): its bias is handed
    to every cross-attention layer's own processor as the attention mask, added to any the call had.

    One ConceptBatch may serve every denoising step of a call: it caches each layer's masked weights
    while the weights are unchanged and no gradient is needed.
    """

    space: NeuronSpace
    masks: Sequence[Any] = ()  # ConceptMask | None each
    row_edits: RowEdits | None = None
    regions: Any = None  # layout.RegionBias | None
    _shut: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _device_shut: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _cache: dict[str, tuple[tuple, torch.Tensor]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # a masked [G, out, in] weight stack is kept for later steps only up to this size (per layer):
    # above it, it is rebuilt per forward, transiently, one layer at a time, so memory stays
    # O(G × largest layer) instead of O(G × all K/V weights) (SD-1.5 fp16: 38 MB per mask)
    CACHE_BYTES = 64 << 20

    def __post_init__(self) -> None:
        self.masks = tuple(self.masks)
        for m in self.masks:
            if m is not None:
                m.check(self.space)
        located = [self.space.locate(m.indices) if m is not None else None for m in self.masks]
        for e in self.space.entries:
            parts = [loc[e.name] + g * e.numel for g, loc in enumerate(located) if loc is not None and loc[e.name].size]
            if parts:  # shut positions in the flattened [G, out, in] stack: G masks cost their indices, not G dense masks
                self._shut[e.name] = np.concatenate(parts)
        if self.row_edits is not None:
            unknown = set(self.row_edits.values) - set(self.space.names)
            if unknown:
                raise ValueError(f"row edits name layers outside the neuron space: {sorted(unknown)[:3]}")

    @property
    def empty(self) -> bool:
        """Nothing shut and nothing edited: a call with this batch is the model's own."""
        return not self._shut and (self.row_edits is None or not self.row_edits.values) and self.regions is None

    def layers(self) -> set[str]:
        """K/V parameter names this batch changes."""
        return set(self._shut) | (set(self.row_edits.values) if self.row_edits is not None else set())

    def changes(self, name: str | None) -> bool:
        return name is not None and (name in self._shut or (self.row_edits is not None and name in self.row_edits.values))

    # ------------------------------------------------------------ the masked projection

    def project(self, name: str, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """`linear(x)` with this batch's masks and row edits of layer `name`; x [B, N, in] (or [B, in])."""
        w = self._weights(name, linear.weight)  # [G, out, in]
        groups = w.shape[0]
        if groups == 1:
            out = F.linear(x, w[0], linear.bias)
        else:
            batch = x.shape[0]
            if batch % groups:
                raise ValueError(
                    f"the concept batch holds {groups} masks but the UNet was called with a batch of {batch}: the batch "
                    "must be a multiple of the number of masks (element i uses masks[i % len(masks)])"
                )
            xr = x.reshape(batch // groups, groups, -1, x.shape[-1])  # [R, G, N, in]; element r*G+g uses mask g
            out = torch.einsum("rgni,goi->rgno", xr, w)
            if linear.bias is not None:
                out = out + linear.bias
            out = out.reshape(*x.shape[:-1], w.shape[1])
        return self._edit(name, x, out)

    def _weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if name not in self._shut:
            return weight.unsqueeze(0)  # row edits only: the layer's own weights, no copy
        groups = len(self.masks)
        small = groups * weight.numel() * weight.element_size() <= self.CACHE_BYTES
        if (torch.is_grad_enabled() and weight.requires_grad) or not small:
            return self._build(name, weight)
        key = (weight._version, weight.data_ptr(), weight.dtype, weight.device)
        with self._lock:  # one batch may serve several threads' calls
            hit = self._cache.get(name)
            if hit is None or hit[0] != key:
                with torch.no_grad():
                    hit = (key, self._build(name, weight))
                self._cache[name] = hit
        return hit[1]

    def _build(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        # Computing with the zeroed weights (rather than subtracting x·(W⊙M)ᵀ) makes a mask bit-identical
        # to a hand-zeroed model; index_fill keeps the gradient to W for the weights that are not shut.
        groups = len(self.masks)
        idx = self._device_shut.get(name)
        if idx is None or idx.device != weight.device:
            idx = torch.from_numpy(self._shut[name]).to(weight.device)
            self._device_shut[name] = idx
        stack = weight.unsqueeze(0).expand(groups, *weight.shape).reshape(-1)  # a copy: expand + reshape
        return stack.index_fill(0, idx, 0).view(groups, *weight.shape)

    def _edit(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out [B, T, out] with the row edits added at their (batch element, token) rows."""
        edits = self.row_edits
        if edits is None or name not in edits.values:
            return out
        if x.dim() != 3:
            raise ValueError(
                f"word-scoped masks edit rows of text states [B, T, D], but this projection got {tuple(x.shape)}"
            )
        offset = edits.offset(x.shape[0])
        batch = edits.batch + offset if offset else edits.batch
        # index_put is differentiable in `values`: word-scoped discovery learns them through this
        return out.index_put((batch, edits.rows), edits.values[name].to(out.dtype), accumulate=True)


class _Projection:
    """A K or V projection as the wrapped processor calls it during one masked call."""

    __slots__ = ("batch", "name", "linear")

    def __init__(self, batch: ConceptBatch, name: str, linear: nn.Linear) -> None:
        self.batch, self.name, self.linear = batch, name, linear

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.batch.project(self.name, self.linear, x)

    def __getattr__(self, attr: str) -> Any:  # .weight, .in_features, ...: the real layer's
        return getattr(self.linear, attr)


class _WithMaskedProjections:
    """The Attention module as the wrapped processor sees it in a masked call: to_k / to_v replaced.

    Everything else (heads, to_q, to_out, norms, prepare_attention_mask...) is the module's own, so
    the pipeline's processor computes attention exactly as it would, from masked keys and values.
    """

    __slots__ = ("_attn", "to_k", "to_v")

    def __init__(self, attn: nn.Module, to_k: Any, to_v: Any) -> None:
        self._attn, self.to_k, self.to_v = attn, to_k, to_v

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._attn, attr)


class ConesAttnProcessor:
    """Wraps an attention module's own processor; applies the call's ConceptBatch to its K/V projections.

    key / value: the qualified parameter names of the module's to_k / to_v weights (None for a
    module without them), the names a NeuronSpace keys its layers by.
    """

    def __init__(self, original: Any, key: str | None, value: str | None, attachment: _Attachment) -> None:
        self.original = original
        self.key, self.value = key, value
        self._attachment = attachment

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cones: ConceptBatch | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        batch = cones if cones is not None else self._attachment.default
        if batch is not None and batch.regions is not None and encoder_hidden_states is not None:
            attention_mask = _with_region_bias(batch.regions, hidden_states, encoder_hidden_states, attention_mask)
        if batch is not None and (batch.changes(self.key) or batch.changes(self.value)):
            self._attachment.check(batch)
            attn = _WithMaskedProjections(
                attn,
                _Projection(batch, self.key, attn.to_k) if batch.changes(self.key) else attn.to_k,
                _Projection(batch, self.value, attn.to_v) if batch.changes(self.value) else attn.to_v,
            )
        return self.original(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                             attention_mask=attention_mask, **kwargs)


def _with_region_bias(regions: Any, hidden: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The call's attention mask plus the layout's logit bias [B, positions, tokens] (processors add a float mask)."""
    positions = hidden.shape[2] * hidden.shape[3] if hidden.dim() == 4 else hidden.shape[1]
    bias = regions.bias(text.shape[0], positions, text.shape[1], device=hidden.device, dtype=hidden.dtype)
    if mask is None:
        return bias
    if mask.dtype == torch.bool:  # True: attend
        mask = torch.zeros(mask.shape, dtype=bias.dtype, device=bias.device).masked_fill(~mask, float("-inf"))
    return bias + (mask.unsqueeze(1) if mask.dim() == 2 else mask)


# ---------------------------------------------------------------- attaching to a UNet


@dataclass(eq=False)
class _Attachment:
    unet: weakref.ref
    originals: dict[str, Any]  # attn_processors as they were: restored object for object
    names: frozenset[str]  # K/V parameter names a wrapper covers
    users: int = 0
    default: ConceptBatch | None = None  # per_sample / shut: applied to calls that bring no batch
    checked: weakref.WeakSet = field(default_factory=weakref.WeakSet)

    def check(self, batch: ConceptBatch) -> None:
        if batch in self.checked:
            return
        missing = batch.layers() - self.names
        if missing:
            raise ValueError(
                f"the concept batch changes K/V layers this UNet does not have ({sorted(missing)[:3]}): it was built "
                "for another architecture; build it from NeuronSpace.from_unet(unet)"
            )
        with _ATTACH_LOCK:
            self.checked.add(batch)


_ATTACH_LOCK = threading.Lock()
_ATTACHED: weakref.WeakKeyDictionary[nn.Module, _Attachment] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def attached(unet: nn.Module) -> Iterator[_Attachment]:
    """Within the block every attention module of `unet` runs a ConesAttnProcessor around its own processor.

    On exit of the last holder the processors that were there are put back, the same objects.
    """
    with _ATTACH_LOCK:
        att = _ATTACHED.get(unet)
        if att is None:
            att = _attach(unet)
            _ATTACHED[unet] = att
        att.users += 1
    try:
        yield att
    finally:
        with _ATTACH_LOCK:
            att.users -= 1
            if att.users == 0:
                del _ATTACHED[unet]
                unet.set_attn_processor(dict(att.originals))  # a copy: set_attn_processor pops from it


def is_attached(unet: nn.Module) -> bool:
    """True while some block holds Cones processors on `unet`."""
    with _ATTACH_LOCK:
        return unet in _ATTACHED


def _attach(unet: nn.Module) -> _Attachment:
    _refuse_fused_projections(unet)
    if not hasattr(unet, "set_attn_processor"):
        raise TypeError(f"{type(unet).__name__} has no attention processors (set_attn_processor); pass a diffusers UNet")
    originals = dict(unet.attn_processors)
    # parameter names by identity, never by parsing module names (docs/discovery.md)
    param_names = {id(p): n for n, p in unet.named_parameters()}
    modules = {f"{name}.processor": m for name, m in unet.named_modules() if hasattr(m, "set_processor")}
    att = _Attachment(weakref.ref(unet), originals, frozenset())
    wrapped, names = {}, set()
    for key, original in originals.items():
        module = modules[key]
        kv = []
        for proj in (getattr(module, "to_k", None), getattr(module, "to_v", None)):
            kv.append(param_names.get(id(proj.weight)) if isinstance(proj, nn.Linear) else None)
        names.update(n for n in kv if n is not None)
        wrapped[key] = ConesAttnProcessor(original, kv[0], kv[1], att)
    att.names = frozenset(names)
    unet.set_attn_processor(wrapped)
    return att


def _refuse_fused_projections(unet: nn.Module) -> None:
    # fuse_qkv_projections() routes K/V through a fused `to_kv`/`to_qkv` that processors call instead of
    # to_k/to_v: masking would silently do nothing.
    for name, module in unet.named_modules():
        if getattr(module, "fused_projections", False):
            raise RuntimeError(
                f"{name} uses fused QKV projections, which bypass to_k/to_v; call unet.unfuse_qkv_projections() "
                "before applying concept neurons"
            )


# ---------------------------------------------------------------- for code that calls the UNet itself


@contextlib.contextmanager
def per_sample(
    unet: nn.Module, space: NeuronSpace, masks: Sequence[Any], *, row_edits: RowEdits | None = None
) -> Iterator[None]:
    """Within the block, every UNet forward that brings no ConceptBatch of its own applies this one.

    For code that calls the UNet without `cross_attention_kwargs` (benchmarks, tests, experiments).
    The batch is held by the UNet for the block, so it is for one thread at a time; concurrent
    callers pass theirs per call (`cross_attention_kwargs={"cones": ConceptBatch(...)}`).
    Element i uses masks[i % len(masks)] (None: no mask); `row_edits` on top (RowEdits).
    """
    if len(masks) == 0:
        raise ValueError("per_sample needs at least one mask (use None for 'no mask')")
    space.modules(unet)  # layout check: MaskModelMismatchError names the fix
    batch = ConceptBatch(space, masks, row_edits)
    if batch.empty:
        _refuse_fused_projections(unet)
        yield  # nothing shut: leave the UNet's own processors alone
        return
    with attached(unet) as att:
        if att.default is not None:
            raise RuntimeError(
                "a concept mask is already applied to this UNet: nested shut/per_sample blocks would not combine; "
                "apply one block with the union of the masks (ConceptMask.union)"
            )
        att.default = batch
        try:
            yield
        finally:
            att.default = None


@contextlib.contextmanager
def shut(unet: nn.Module, space: NeuronSpace, mask: Any) -> Iterator[None]:
    """Within the block, every forward of `unet` sees `mask`'s neurons zeroed (Cones §3.1 "shut").

    Outputs equal those of a copy of the UNet whose weights were zeroed by hand; the UNet's own
    weights are never written.
    """
    with per_sample(unet, space, [mask]):
        yield
