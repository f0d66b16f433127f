"""Does a frozen text encoder bind colours to shapes? A linear probe on its token states (docs/research/toy-model.md).

The toy model fails two-object prompts by binding: on "a yellow triangle and a blue circle" it
draws both colours, then two triangles or swapped colours. Cross-attention can only place "blue"
on the circle if something in the text states pairs them. The probe asks exactly that: from the
state at a shape token of a two-object caption, predict the colour named right before that shape.
A state that carries only its own word sits at chance (1/4). Before a GPU run that costs hours
of CPU, it measures in seconds whether an encoder gives the UNet binding to learn from.

Captions are split by colour pair: the probe is tested on colour combinations it never saw, so it
cannot just memorise whole captions.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from cones_tasks.toyworld.training_batches import word_ids, caption_ids
from cones_tasks.toyworld.world import COLORS, PATTERNS, SHAPES


def _captions() -> list[tuple[str, tuple[str, str]]]:
    """Two-object captions with distinct shapes and colours, bare ("a red circle and a blue square",
    eval-model's pair prompts) and with patterns; each with its two colours in order."""
    rows = []
    for (s1, s2), (c1, c2) in itertools.product(itertools.permutations(SHAPES, 2), itertools.permutations(COLORS, 2)):
        rows.append((f"a {c1} {s1} and a {c2} {s2}", (c1, c2)))
        for p1, p2 in itertools.product(PATTERNS, repeat=2):
            rows.append((f"a {p1} {c1} {s1} and a {p2} {c2} {s2}", (c1, c2)))
    return rows


@torch.no_grad()
def _shape_states(text_encoder, captions: list[str]) -> torch.Tensor:
    """[N, 2, D]: the last hidden state at the first and the second shape token of each caption."""
    ids = caption_ids(captions)
    states = text_encoder(ids).last_hidden_state.float()
    shape_ids = torch.tensor([word_ids()[s] for s in SHAPES])
    where = torch.isin(ids, shape_ids).nonzero()[:, 1].view(len(captions), 2)
    return states[torch.arange(len(captions))[:, None], where]


def probe_binding(text_encoder, *, seed: int = 0, steps: int = 300) -> dict[str, float]:
    """Held-out accuracy of a linear probe that reads, from a shape token's state, the colour bound
    to that shape ("blue" at "circle" in "… and a blue circle"); chance is 0.25.

    Reported per position: the second shape's state follows more words, the first object's
    colour among them, so it is the harder one to keep bound.
    """
    rows = _captions()
    states = _shape_states(text_encoder, [r[0] for r in rows])
    colors = list(COLORS)
    own = torch.tensor([[colors.index(c) for c in r[1]] for r in rows])
    rng = np.random.default_rng(seed)
    pairs = list(itertools.permutations(colors, 2))
    held_out = {pairs[i] for i in rng.permutation(len(pairs))[: len(pairs) // 3]}
    test = torch.tensor([r[1] in held_out for r in rows])
    return {
        "first_shape": _fit_and_score(states[:, 0], own[:, 0], test, seed, steps),
        "second_shape": _fit_and_score(states[:, 1], own[:, 1], test, seed, steps),
        "n_captions": len(rows),
        "chance": 1 / len(colors),
    }


def _fit_and_score(x: torch.Tensor, y: torch.Tensor, test: torch.Tensor, seed: int, steps: int) -> float:
    """Multinomial logistic regression on standardised features, trained on ~test, scored on test."""
    torch.manual_seed(seed)
    mean, std = x[~test].mean(0), x[~test].std(0) + 1e-6
    x = (x - mean) / std
    probe = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(probe(x[~test]), y[~test]).backward()
        opt.step()
    with torch.no_grad():
        return float((probe(x[test]).argmax(-1) == y[test]).float().mean())
