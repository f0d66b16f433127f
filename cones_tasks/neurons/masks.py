"""Concept masks: sets of shut neurons and their algebra (docs/discovery.md).

A `ConceptMask` is a sorted set of global neuron indices of one `NeuronSpace`
(never a dense float tensor: the public notebook's defect). Applying a mask
never writes the model's weights (the notebook overwrote them and never restored):
the Cones attention processor computes the masked K/V per call
(cones_tasks.neurons.processor; `shut` and `per_sample` are re-exported here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cones_tasks.codec import decode_indices, decoded_universe, encode_indices
from cones_tasks.neurons.space import MaskModelMismatchError, NeuronSpace

__all__ = ["ConceptMask", "MaskModelMismatchError", "RowEdits", "is_attached", "per_sample", "shut"]


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
        return encode_indices(self.indices, self.size)

    @classmethod
    def from_bytes(cls, blob: bytes, *, space_fingerprint: str) -> ConceptMask:
        return cls(space_fingerprint, decoded_universe(blob), decode_indices(blob))


# ---------------------------------------------------------------- applying masks

# Applying a mask is the attention processor's work (cones_tasks.neurons.processor); these names are
# part of this module's public API, where callers have always found them.
from cones_tasks.neurons.processor import RowEdits, is_attached, per_sample, shut  # noqa: E402
