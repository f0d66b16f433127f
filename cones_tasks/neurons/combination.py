"""Combination step: a few joint steps per combination of subjects, all members' gates learned together.

Cones §3.3 (and its "a few steps of joint fine-tuning per combination"): concepts found one subject at a
time compose, but not always well. Under token composition each subject's edit acts at its own class
word's rows; in a two-subject prompt the two words' key edits compete for attention, and one subject's
word wins attention at the other's place and paints it (docs/research/composition.md, "Keys or values").
Edits learned on pictures of one subject never see that competition.

Here the members' shut sets are re-learned jointly on images that show all of them, captioned by their
class words ("a triangle and a circle on snow"): each member keeps its own gates, its own cost per shut
weight and its own density cap, starts from its own mask, and all members' edits enter one forward at
their own words' rows (cones_tasks.neurons.word_discovery.gate_fit). The result is one sparse mask per
member, used in place of the members' own masks whenever that combination is generated; a catalog keys
it by the members' mask ids (docs/research/pairs.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.neurons.word_discovery import GateMember, GateSchedule, gate_fit
from cones_tasks.neurons.word_scope import WordMask, class_phrase_states
from cones_tasks.neurons.words import text_tokenizers, word_rows

__all__ = ["CombinationParams", "CombinationResult", "combine_concepts"]


class CombinationParams(BaseModel):
    """Knobs of one combination step (docs/research/pairs.md). The gates move as in `objective: gate`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(100, ge=1, description="joint gradient steps")
    batch_size: int = Field(6, ge=1, description="combination images per step")
    learning_rate: float = Field(0.05, gt=0.0, description="Adam step on the gates")
    key_step: float = Field(1.0, ge=0.0, description="the key projections' step as a fraction of learning_rate (0: keys stay)")
    value_step: float = Field(1.0, ge=0.0, description="the value projections' step as a fraction of learning_rate (0: values stay)")
    density: float = Field(0.01, gt=0.0, le=1.0, description="each member's cap: the fraction of the K/V weights it may shut")


@dataclass(frozen=True)
class CombinationResult:
    masks: list[ConceptMask]  # one per member, in the members' order
    report: dict[str, Any] = field(repr=False)


def combine_concepts(
    model,
    images: np.ndarray,
    prompts: Sequence[str],
    members: Sequence[WordMask],
    params: CombinationParams = CombinationParams(),
    *,
    named: Sequence[Sequence[int]] | None = None,
    anchors: Sequence[tuple[np.ndarray, Sequence[str]]] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> CombinationResult:
    """The members' masks re-learned jointly on `images` (uint8 [N, H, W, 3]) that show every member.

    prompts: one per image, naming every member by its class word ("a triangle and a circle on snow").
    members: each subject's own word-scoped mask (found by word-scoped discovery) and class word.
    named: per image, the member indices in the order its prompt names them (default: the members'
    order); two members of one class are told apart by which mention is whose.
    anchors: per member, its own photos and prompts (naming its class word), mixed into the steps with
    only that member edited, so the joint step keeps what each mask does alone.
    """
    # imported here: discovery imports the objectives, which this module's callers may not need
    from cones_tasks.neurons.discovery import DiscoveryProblem, frozen_unet
    from cones_tasks.neurons.processor import attached

    if len(members) < 2:
        raise ValueError(f"a combination has at least 2 members, got {len(members)}; a single subject is discovered alone")
    if len(prompts) != len(images):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; give one prompt per image")
    named = [list(range(len(members)))] * len(prompts) if named is None else [list(o) for o in named]
    if len(named) != len(prompts) or any(sorted(o) != list(range(len(members))) for o in named):
        raise ValueError("`named` needs, per prompt, every member index once, in the order the prompt names them")
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    space = NeuronSpace.from_unet(model.unet, attention="cross")
    for wm in members:
        wm.mask.check(space)
        if wm.mask.count > params.density * space.size:
            raise ValueError(
                f"the {wm.class_word!r} member's mask shuts {wm.mask.fraction:.2%} of the K/V weights, above the "
                f"combination's density cap {params.density:.2%}: discover the members with objective 'gate' at that "
                "density (docs/composition.md), or raise the combination's density"
            )
    tokenizers = text_tokenizers(model)
    spans: list[list[tuple[int, ...]]] = [[] for _ in members]
    for prompt, order in zip(prompts, named):
        rows = word_rows(tokenizers, prompt, [members[i].class_word for i in order])
        for i, r in zip(order, rows):
            spans[i].append(r)
    all_images, all_prompts = [np.asarray(images)], list(prompts)
    if anchors is not None:
        if len(anchors) != len(members):
            raise ValueError(f"anchors: give one (images, prompts) per member ({len(members)}), got {len(anchors)}")
        for j, (own_images, own_prompts) in enumerate(anchors):
            if len(own_images) != len(own_prompts):
                raise ValueError(f"anchors of member {j}: {len(own_images)} images but {len(own_prompts)} prompts")
            for prompt in own_prompts:
                (rows,) = word_rows(tokenizers, prompt, [members[j].class_word])
                for i in range(len(members)):
                    spans[i].append(rows if i == j else None)
            all_images.append(np.asarray(own_images))
            all_prompts.extend(own_prompts)
    for wm, s in zip(members, spans):
        if len({len(r) for r in s if r is not None}) != 1:
            raise ValueError(f"class word {wm.class_word!r} tokenizes differently across the combination's prompts")
    problem = DiscoveryProblem.build(model, space, np.concatenate(all_images), all_prompts, None, 0.0, params.batch_size, gen)
    gate_members = [
        GateMember(class_phrase_states(model, wm.class_word).to(problem.device), s, start=wm.mask.indices)
        for wm, s in zip(members, spans)
    ]
    bar = tqdm(total=params.steps, desc="combine", disable=not progress)
    with frozen_unet(model.unet), attached(model.unet):
        schedule = GateSchedule(params.steps, params.learning_rate, params.key_step, params.value_step, params.density)
        shut, report = gate_fit(problem, space, schedule, gate_members, gen, bar)
    bar.close()
    masks = [ConceptMask.from_indices(space, s) for s in shut]
    kept = [len(np.intersect1d(m.indices, wm.mask.indices)) / max(wm.mask.count, 1) for m, wm in zip(masks, members)]
    report.update({
        "images": len(images), "fractions": [m.fraction for m in masks], "kept_of_own_mask": kept,
        "time_s": time.perf_counter() - started, "seed": seed, "params": params.model_dump(),
    })
    return CombinationResult(masks, report)
