"""Composition strategies: how several subjects' concept neurons act together in one image.

- `union` (Cones §3.3): shut the union of the subjects' masks at every text token. Always
  measured as the paper's baseline.
- `token`: each subject's word-scoped mask acts at its own class word's rows only
  (cones_tasks.neurons.word_scope), so two subjects never compete for the same text states.

Masks must be discovered for the strategy that applies them: `union` takes masks found at
every token (`objective: score, scope: prompt`), `token` masks found at the word (scope 'word':
`objective: fit`, the default, or `score`); cones_tasks.neurons.objectives.DISCOVERY_FOR names
validation's choice for each.
Measured on the toy model, docs/research/composition.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.word_scope import WordMask

__all__ = ["COMPOSITIONS", "Composition", "check_composition", "compose", "composition_for"]

Composition = Literal["union", "token"]
COMPOSITIONS: tuple[Composition, ...] = ("union", "token")
_SCOPE = {"union": "prompt", "token": "word"}
_DISCOVERY_HINT = {"union": "{objective: score, scope: prompt}", "token": "{objective: fit} (the default)"}


def composition_for(params) -> Composition:
    """The strategy that applies masks discovered with `params` (any objective of DiscoveryParams)."""
    return "token" if params.scope == "word" else "union"


def check_composition(composition: str, params) -> None:
    """Raise ValueError unless masks found with `params` are meant for `composition`."""
    if composition not in _SCOPE:
        raise ValueError(f"unknown composition {composition!r}; choose one of {list(COMPOSITIONS)}")
    if params.scope != _SCOPE[composition]:
        raise ValueError(
            f"composition {composition!r} applies masks discovered with scope {_SCOPE[composition]!r}, but the discovery "
            f"parameters say scope {params.scope!r}: set discovery to {_DISCOVERY_HINT[composition]}, or use composition "
            f"{composition_for(params)!r}"
        )


def compose(composition: Composition, subjects: Sequence[tuple[ConceptMask, str]]) -> tuple[ConceptMask | None, list[WordMask]]:
    """What one image of these subjects (mask, class word) is sampled with: (every-token mask, word masks)."""
    if not subjects:
        return None, []
    if composition == "union":
        masks = [m for m, _ in subjects]
        return masks[0].union(*masks[1:]), []
    if composition == "token":
        return None, [WordMask(mask, word) for mask, word in subjects]
    raise ValueError(f"unknown composition {composition!r}; choose one of {list(COMPOSITIONS)}")
