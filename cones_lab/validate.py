"""Measuring the paper's claims on the toy world, per composition strategy (Cones §4; docs/research/composition.md).

For each toy subject, discovery runs on its reference renders; the toy judge (rules, not a
model) then reads every generated image back. Every line is reported for each composition
strategy (cones_tasks.neurons.composition), each with the masks its own discovery found:

- single: the class prompt with the subject's mask (hit_masked) vs without (hit_unmasked); a
  hit is an object with the subject's shape, colour and pattern.
- context: "a triangle on snow" with the mask — the subject AND the asked background.
- crosstalk: subject A's mask on class B's prompt (B another shape): how often A's
  colour+pattern shows up anyway (leak, lower is better), and how often B's shape is still drawn.
- multi k: "a triangle and a circle …" with the k subjects' masks composed: all k present, the
  mean per-subject presence, A's look painted on another subject's class, and all present with
  the subjects named in the other order.
- ceilings, no mask: the subjects spelled out ("a striped yellow triangle") — what the base
  model draws when it is told in words. A mask that makes the class word mean the subject can
  hardly beat the words themselves.

Hyper-parameters are chosen on one set of sampling seeds (the mean of single hit and context)
and every number is reported on another, so the report is not tuned on itself.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

from cones_tasks.combinations import subjects_phrase
from cones_lab.pair_pictures import PairSource, judge_accepts, rendered_pictures, self_generated
from cones_tasks.neurons.combination import CombinationParams, combine_concepts
from cones_tasks.neurons.composition import COMPOSITIONS, Composition, compose, composition_for
from cones_tasks.neurons.discovery import discover_concept_neurons, refine_union
from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.layout import Layout
from cones_tasks.neurons.objectives import (
    DISCOVERY_FOR,
    DiscoveryParams,
    FitObjective,
    PromptScoreObjective,
    WordScoreObjective,
)
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.neurons.word_scope import WordMask
from cones_tasks.sampling import sample
from cones_tasks.toyworld.captions import class_prompt
from cones_tasks.toyworld.subjects import check_scene_objects, context_prompts, reference_renders, scene_photos
from cones_tasks.toyworld.world import BACKGROUNDS

__all__ = [
    "DEFAULT_CANDIDATES", "Generate", "PriorImages", "ValidateParams", "context_line", "crosstalk_line",
    "discover_subjects", "discovery_references", "line_seeds", "mask_lines", "multi_line", "single_line", "validate_toy",
]

# The sweep `cones toy validate` chooses from by default: each strategy's recommendation (the core's
# DISCOVERY_FOR, what earlier runs of this sweep chose: docs/research/composition.md) and its nearest rivals.
# (union: runs 2–4 chose 10 % over 3 % on the first model; one candidate here, so it is reported as chosen then.)
DEFAULT_CANDIDATES: tuple[DiscoveryParams, ...] = (
    DISCOVERY_FOR["union"],
    DISCOVERY_FOR["token"],
    FitObjective(learning_rate=0.05, key_step=1.0),
    WordScoreObjective(threshold_value=0.1, rounds=30, steps=8, batch_size=4),
)


class ValidateParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    images_per_line: int = Field(100, ge=1, description="images judged per reported line")
    select_images_per_line: int = Field(48, ge=1, description="images per candidate when choosing hyper-parameters")
    sample_steps: int = Field(25, ge=1)
    guidance_scale: float = Field(3.0, ge=1.0)
    reference_images: int = Field(6, ge=1, description="renders of each subject handed to discovery")
    scene_references: int = Field(
        0, ge=0, description="scope 'word' only: also hand discovery this many captioned renders of the subject beside "
        "another object (toyworld.subjects.scene_references): photos where the subject shares the frame",
    )
    scene_objects: tuple[int, ...] = Field(
        (2,), min_length=1, description="objects in each scene photo, cycled (2-4): (2, 3, 4) names the subject at every "
        "place of two-, three- and four-object captions, the places combinations of up to four name it",
    )
    discovery_seed: int = 0
    select_seed: int = Field(1, description="sampling seeds for choosing hyper-parameters")
    report_seed: int = Field(2, description="sampling seeds for the reported numbers (must differ from select_seed)")
    multi_sizes: tuple[int, ...] = (2, 3, 4)
    batch_size: int = Field(128, ge=1, description="images per sampling batch (one UNet forward, per-sample masks)")
    prior_images: int = Field(8, ge=1, description="base-model images of each class prompt, for candidates with prior_weight > 0")
    union_refine: PromptScoreObjective | None = Field(
        None, description="when set, also report multi_refined: every union after these joint discovery rounds"
    )
    strategies: tuple[Composition, ...] = Field(COMPOSITIONS, min_length=1, description="composition strategies to report")
    ceilings: bool = Field(True, description="also report the spelled-out ceilings (no mask)")
    reversed_order: bool = Field(True, description="also report each combination named in the other order")
    combination: CombinationParams | None = Field(
        None, description="token strategy: before pairs are judged, a combination step per pair (cones_tasks.neurons."
        "combination) re-learns both members' masks on pictures of the pair; None: pairs use each subject's own mask",
    )
    combination_pictures: PairSource = Field(
        "composite", description="where the combination step's pictures of a pair come from (cones_lab.pair_pictures): "
        "'composite' (halves of the subjects' own scene photos), 'self' (the pair sampled, judged, kept) or 'together' "
        "(rendered together: photos of the two together, which a user may not have)",
    )
    combination_images: int = Field(12, ge=1, description="pictures of each pair handed to the combination step")
    layout: Layout | None = Field(
        Layout(), description="attention control at generation, as the pipeline's default (GenerationGrid.layout): each "
        "subject's class word read more strongly in its own region (cones_tasks.neurons.layout); None: off",
    )
    prompt_modes: tuple[Literal["class", "context"], ...] = Field(
        ("context",), min_length=1,
        description="how discovery conditions the references, each tried with every candidate: 'class' is the "
        "paper's class prompt ('a triangle'); 'context' adds each reference's background ('a triangle on snow'), "
        "so the background is explained by the words and not absorbed into the mask",
    )

    @field_validator("scene_objects")
    @classmethod
    def _scene_objects(cls, counts: tuple[int, ...]) -> tuple[int, ...]:
        check_scene_objects(counts)  # refused when the params are made, not when discovery renders the photos
        return counts


def validate_toy(
    model,
    subjects: Sequence,
    judge: Callable[[np.ndarray], Any],
    *,
    candidates: Sequence[DiscoveryParams] = DEFAULT_CANDIDATES,
    params: ValidateParams = ValidateParams(),
    progress: bool = True,
) -> dict[str, Any]:
    """For each strategy: discovery for every subject × candidate of that strategy, pick the best, report every line.

    model: cones_tasks.loading.DiffusionModel (the toy model). subjects: toy subjects
    (`.id`, `.shape`, `.color`, `.pattern`; cones_tasks.toyworld.subjects). judge: image ->
    Judgement (`.has(shape=, color=, pattern=)`, `.background`, `.unreadable`). A strategy
    with one candidate and one prompt mode is reported without a selection run.
    """
    if params.select_seed == params.report_seed:
        raise ValueError("select_seed and report_seed must differ: numbers reported on the seeds they were tuned on are optimistic")
    if len(subjects) < 2:
        raise ValueError("validate_toy needs at least 2 subjects (cross-talk and unions compare subjects)")
    by_strategy = {s: [c for c in candidates if composition_for(c) == s] for s in params.strategies}
    if missing := [s for s, c in by_strategy.items() if not c]:
        raise ValueError(f"no DiscoveryParams candidate for strategies {missing} (scope 'word' is token, 'prompt' is union)")
    started = time.perf_counter()
    references = {s.id: reference_renders(s, n=params.reference_images, seed=params.discovery_seed) for s in subjects}
    sampler = _Sampler(model, judge, params, progress)
    priors = PriorImages(model, params)
    n, seed = params.images_per_line, params.report_seed
    sizes = [k for k in params.multi_sizes if k <= len(subjects)]  # unions no bigger than the subject set
    space = NeuronSpace.from_unet(model.unet, attention="cross")
    unmasked = _single(sampler, subjects, None, space, "union", n=n, seed=seed)

    # compare imports this module (its lines are validate's), so its SD-1.5 storage function comes in here
    from cones_lab.compare import sd15_bytes_per_concept

    strategies = {}
    for strategy, options in by_strategy.items():
        found = _choose(model, sampler, priors, subjects, references, strategy, options, params)
        chosen, mode, masks, space, selection, discovery_s = found
        combined, combination = {}, {}
        if strategy == "token" and params.combination is not None and 2 in sizes:
            combined, combination = combination_masks(model, judge, subjects, masks, params)
        lines = mask_lines(model, judge, subjects, masks, space, strategy, params, seed=seed, n=n, progress=progress,
                           combined=combined)
        lines["single"]["hit_unmasked"] = unmasked
        if combination:
            lines["combination"] = combination
        strategies[strategy] = {
            "chosen_params": chosen.model_dump(),
            "chosen_prompts": mode,
            "selection": selection,
            **lines,
            **(_refined_multi(sampler, model, subjects, references, masks, space, params, sizes, mode) if strategy == "union" else {}),
            "neuron_fraction": float(np.mean([m.fraction for m in masks.values()])),
            "bytes_per_concept": float(np.mean([len(m.to_bytes()) for m in masks.values()])),
            # the same concepts' density at Stable Diffusion 1.5's 19.2 M K/V weights, serialised by the store
            "sd15_bytes_per_concept": float(np.mean([sd15_bytes_per_concept("cones", fraction=m.fraction) for m in masks.values()])),
            "discovery_s_per_subject": discovery_s / len(subjects),
        }
    result = {
        "subjects": [s.id for s in subjects],
        "strategies": strategies,
        "images_per_line": n,
        "sample_steps": params.sample_steps,
        "guidance_scale": params.guidance_scale,
        "seeds": {"discovery": params.discovery_seed, "select": params.select_seed, "report": params.report_seed},
    }
    if params.ceilings:
        result["ceilings"] = {
            "single": _single(sampler, subjects, None, space, "union", n=n, seed=seed, spelled_out=True),
            "multi": {str(k): _multi(sampler, subjects, None, space, "union", k=k, n=n, seed=seed)["all_present"] for k in sizes},
        }
    result["time_s"] = time.perf_counter() - started
    return result


def _prior_weight(params: DiscoveryParams) -> float:
    """λ of the prior-preservation term: only the paper's prompt-scoped objective has one."""
    return params.prior_weight if isinstance(params, PromptScoreObjective) else 0.0


def discover_subjects(model, subjects, candidate: DiscoveryParams, params: ValidateParams, mode: str = "context", *,
                      priors: PriorImages | None = None) -> dict[str, ConceptMask]:
    """{subject id: mask}: each subject discovered with `candidate` as validation does it (discovery_references in
    prompt `mode`, scene photos for word-scoped candidates, params.discovery_seed). `priors` gives the base model's
    images for a candidate with a prior-preservation weight."""
    masks = {}
    for s in subjects:
        images, prompts, boxes = discovery_references(s, params, mode, scenes=candidate.scope == "word")
        masks[s.id] = discover_concept_neurons(
            model, images, prompts, candidate, seed=params.discovery_seed, progress=False, class_word=s.shape, boxes=boxes,
            prior_images=priors.of(s.shape) if priors is not None and _prior_weight(candidate) > 0 else None,
            prior_prompt=_class_prompt(s.shape),
        ).mask
    return masks


def _choose(model, sampler, priors, subjects, references, strategy, options, params):
    """(chosen params, prompt mode, masks, space, selection table, discovery seconds of the chosen) for one strategy."""
    runs = list(itertools.product(options, params.prompt_modes))
    selection, best = [], None
    for candidate, mode in runs:
        space = NeuronSpace.from_unet(model.unet, attention=candidate.attention)
        t0 = time.perf_counter()
        masks = discover_subjects(model, subjects, candidate, params, mode, priors=priors)
        spent = time.perf_counter() - t0
        if len(runs) == 1:  # nothing to choose between: no selection images
            return candidate, mode, masks, space, [], spent
        hit = _single(sampler, subjects, masks, space, strategy, n=params.select_images_per_line, seed=params.select_seed)
        context = _context(sampler, subjects, masks, space, strategy, n=params.select_images_per_line, seed=params.select_seed)["context"]
        fraction = float(np.mean([m.fraction for m in masks.values()]))
        selection.append({"params": candidate.model_dump(), "prompts": mode, "hit_masked": hit, "context": context,
                          "neuron_fraction": fraction})
        # The paper's claim is the subject *in new contexts*: a mask that draws the subject but
        # overrides the background asked for is worth less. Among ties, fewer neurons.
        key = ((hit + context) / 2, -fraction)
        if best is None or key > best[0]:
            best = (key, candidate, mode, masks, space, spent)
    _, candidate, mode, masks, space, spent = best
    return candidate, mode, masks, space, selection, spent


def combination_masks(model, judge: Callable[[np.ndarray], Any], subjects: Sequence, masks: dict[str, ConceptMask],
                      params: ValidateParams) -> tuple[dict, dict[str, Any]]:
    """({frozenset of a pair's ids: {subject id: mask}}, report): the combination step (params.combination) for
    every pair of `subjects`, on params.combination_images pictures of the pair from params.combination_pictures.

    'self' samples 4 × that many candidates per pair on seeds no line uses and keeps those the judge accepts
    (both subjects, the asked background); a pair none of whose candidates pass keeps its members' own masks.
    """
    combined, seconds, fractions, counts = {}, [], [], []
    n = params.combination_images
    for pair in itertools.combinations(subjects, 2):
        if params.combination_pictures == "self":
            (images, prompts, named), _, _ = self_generated(
                pair, n, model=model, masks=masks, accept=judge_accepts(judge), candidates=4 * n,
                seeds=line_seeds(params.discovery_seed + 7, 90, 4 * n), steps=params.sample_steps,
                guidance_scale=params.guidance_scale,
            )
        else:
            images, prompts, named = rendered_pictures(params.combination_pictures, pair, n,
                                                       scene_photos=params.scene_references,
                                                       reference_images=params.reference_images, seed=params.discovery_seed)
        counts.append(len(images))
        if not len(images):
            continue
        t0 = time.perf_counter()
        result = combine_concepts(model, images, prompts, [WordMask(masks[s.id], s.shape) for s in pair],
                                  params.combination, named=named, seed=params.discovery_seed)
        seconds.append(time.perf_counter() - t0)
        fractions.extend(m.fraction for m in result.masks)
        combined[frozenset(s.id for s in pair)] = {s.id: m for s, m in zip(pair, result.masks)}
    report = {
        "params": params.combination.model_dump(), "pictures": params.combination_pictures,
        "pairs": len(combined), "images_per_pair": float(np.mean(counts)) if counts else 0.0,
        "seconds_per_pair": float(np.mean(seconds)) if seconds else 0.0,
        "neuron_fraction": float(np.mean(fractions)) if fractions else None,
    }
    return combined, report


# ---------------------------------------------------------------- lines


def _class_prompt(shape: str) -> str:
    return class_prompt(shape)


def _reference_prompts(subject, mode: str, n: int) -> str | list[str]:
    """Discovery's conditioning for `subject`'s n references (ValidateParams.prompt_modes)."""
    if mode == "class":
        return _class_prompt(subject.shape)
    return context_prompts(subject, n)


def discovery_references(subject, params: ValidateParams, mode: str = "context", *, scenes: bool = True
                         ) -> tuple[np.ndarray, str | list[str], list]:
    """What discovery is handed for `subject`: its params.reference_images renders, their conditioning
    (prompt `mode`, ValidateParams.prompt_modes), the subject's box in each (None: alone) and, when `scenes`,
    params.scene_references captioned scene photos (word-scoped discovery only: validate passes
    scenes=candidate.scope == 'word')."""
    images = reference_renders(subject, n=params.reference_images, seed=params.discovery_seed)
    prompts = _reference_prompts(subject, mode, params.reference_images)
    boxes = [None] * len(images)
    if scenes and params.scene_references:
        images, prompts, boxes = _with_scenes(subject, images, prompts, params)
    return images, prompts, boxes


def mask_lines(model, judge: Callable[[np.ndarray], Any], subjects: Sequence, masks: dict[str, ConceptMask],
               space: NeuronSpace, strategy: Composition, params: ValidateParams, *, seed: int, n: int,
               progress: bool = False, combined: dict | None = None,
               lines: Sequence[str] = ("single", "context", "crosstalk", "multi")) -> dict[str, Any]:
    """validate_toy's lines for one set of masks ({subject id: mask} of `space`) composed by `strategy`: single hit,
    context, crosstalk and multi for each k in params.multi_sizes, on sampling seeds `seed`, n images per line.
    combined: frozenset of subject ids -> {subject id: mask}, the masks a combination step gave its members
    (multi lines only; combinations not in it use the subjects' own masks). lines: which lines to judge."""
    sampler = _Sampler(model, judge, params, progress)
    sizes = [k for k in params.multi_sizes if k <= len(subjects)]
    line = dict(n=n, seed=seed)
    found: dict[str, Any] = {}
    if "single" in lines:
        found["single"] = {"hit_masked": _single(sampler, subjects, masks, space, strategy, **line)}
    if "context" in lines:
        found.update(_context(sampler, subjects, masks, space, strategy, **line))
    if "crosstalk" in lines:
        found.update(_crosstalk(sampler, subjects, masks, space, strategy, **line))
    if "multi" in lines:
        found.update(_multi_lines(sampler, subjects, masks, space, strategy, sizes, params, combined=combined, **line))
    return found


def _with_scenes(subject, images, prompts, params: ValidateParams):
    """The references plus captioned renders of the subject beside another object (ValidateParams.scene_references),
    and the subject's box in each (None in its photos alone)."""
    scenes, captions, boxes = scene_photos(subject, n=params.scene_references, seed=params.discovery_seed,
                                           objects=params.scene_objects)
    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    return np.concatenate([images, scenes]), prompts + captions, [None] * len(images) + boxes


def _spread(items: Sequence, n: int) -> list:
    """n items, cycling through `items` so each gets n // len(items) or one more."""
    return [items[i % len(items)] for i in range(n)]


def _spelled_out(subject) -> str:
    """The subject in words, no mask: "a striped yellow triangle" (the ceiling lines)."""
    return f"a {subject.pattern} {subject.color} {subject.shape}"


def _applied(strategy, masks, combo) -> tuple[ConceptMask | None, list]:
    """(every-token mask, word masks) of one image of `combo` (subjects, in prompt order) under `strategy`."""
    if masks is None:
        return None, []
    return compose(strategy, [(masks[s.id], s.shape) for s in combo])


# A line asks its prompts and reads the judge's verdicts; *how* an image is made is the method's: a
# Generate gets the prompts, per image the subjects whose concepts it is made with (in prompt order,
# () for none) and the line's tag, and returns one verdict per prompt. Cones composes masks
# (_generator below); the fine-tuning baselines (cones_lab.compare) add weight updates.
Generate = Callable[[list[str], list[tuple], int], list]


def single_line(generate: Generate, subjects: Sequence, *, n: int, spelled_out: bool = False) -> float:
    """Hit rate of the class prompt ("a triangle") with each subject's concept: the subject's shape, colour and
    pattern drawn. spelled_out: the subject in words and no concept (the ceiling)."""
    chosen = _spread(list(subjects), n)
    prompts = [_spelled_out(s) if spelled_out else _class_prompt(s.shape) for s in chosen]
    verdicts = generate(prompts, [() if spelled_out else (s,) for s in chosen], 1)
    return float(np.mean([v.shows(s) for v, s in zip(verdicts, chosen)]))


def context_line(generate: Generate, subjects: Sequence, *, n: int) -> dict[str, float]:
    """"a triangle on snow" with the subject's concept: the subject AND the asked background."""
    pairs = _spread(list(itertools.product(subjects, BACKGROUNDS)), n)
    prompts = [f"{_class_prompt(s.shape)} on {bg}" for s, bg in pairs]
    verdicts = generate(prompts, [(s,) for s, _ in pairs], 2)
    hits = [v.shows(s) and v.background == bg for v, (s, bg) in zip(verdicts, pairs)]
    backgrounds = [not v.unreadable and v.background == bg for v, (_, bg) in zip(verdicts, pairs)]
    return {"context": float(np.mean(hits)), "context_background_kept": float(np.mean(backgrounds))}


def crosstalk_line(generate: Generate, subjects: Sequence, *, n: int) -> dict[str, float]:
    """Subject A's concept under class B's prompt (B another shape): how often A's colour+pattern shows up
    anyway (leak, lower is better), and how often B's shape is still drawn."""
    pairs = [(a, b) for a in subjects for b in subjects if b.shape != a.shape]
    if not pairs:
        return {"crosstalk": float("nan"), "crosstalk_class_kept": float("nan")}
    pairs = _spread(pairs, n)
    verdicts = generate([_class_prompt(b.shape) for _, b in pairs], [(a,) for a, _ in pairs], 3)
    leak = [not v.unreadable and v.has(color=a.color, pattern=a.pattern) for v, (a, _) in zip(verdicts, pairs)]
    kept = [not v.unreadable and v.has(shape=b.shape) for v, (_, b) in zip(verdicts, pairs)]
    return {"crosstalk": float(np.mean(leak)), "crosstalk_class_kept": float(np.mean(kept))}


def multi_line(generate: Generate, subjects: Sequence, *, k: int, n: int, reverse: bool = False,
               spelled_out: bool = False) -> dict[str, float]:
    """k subjects in one prompt ("a triangle and a circle"), named in `subjects` order (or reversed), with the
    k subjects' concepts: all present, mean per-subject presence, A's look painted on another subject's class.
    spelled_out: the subjects in words and no concept (the ceiling)."""
    combos = _spread(list(itertools.combinations(subjects, k)), n)
    named = [tuple(reversed(c)) if reverse else c for c in combos]
    if spelled_out:
        prompts = [" and ".join(_spelled_out(s) for s in combo) for combo in named]
    else:
        prompts = [subjects_phrase([s.shape for s in combo]) for combo in named]
    verdicts = generate(prompts, [() if spelled_out else combo for combo in named], 10 + k + (50 if reverse else 0))
    present = [[v.shows(s) for s in combo] for v, combo in zip(verdicts, named)]
    looks = [
        not v.unreadable and v.has(shape=b.shape, color=a.color, pattern=a.pattern)
        for v, combo in zip(verdicts, named) for a in combo for b in combo if a.shape != b.shape
    ]
    return {
        "all_present": float(np.mean([all(p) for p in present])),
        "per_subject": float(np.mean([x for p in present for x in p])),
        # presence of the subject named first, second, ...: which side of a combination loses
        "per_position": [float(np.mean([p[i] for p in present])) for i in range(k)],
        "look_on_other": float(np.mean(looks)) if looks else float("nan"),
        "misses": _misses(verdicts, named),
    }


MISSES = ("absent", "borrowed_look", "own_look_lost", "unreadable")


def _misses(verdicts, named) -> dict[str, float]:
    """Why a named subject is not shown, as shares of all its mentions (with the present ones, they sum to 1).

    absent: no object of its class but the other subjects' own; borrowed_look: its class is drawn wearing
    another member's colour or pattern (one subject's look spread onto the next); own_look_lost: drawn with a
    look no member has (its edit too weak to show); unreadable: the judge could not read the image.
    """
    counts = dict.fromkeys(MISSES, 0)
    mentions = 0
    for verdict, combo in zip(verdicts, named):
        for subject in combo:
            mentions += 1
            if verdict.unreadable:
                counts["unreadable"] += 1
                continue
            if verdict.shows(subject):
                continue
            others = [t for t in combo if t is not subject]
            mine = [o for o in verdict.objects if o.shape == subject.shape
                    and not any((o.color, o.pattern) == (t.color, t.pattern) and t.shape == o.shape for t in others)]
            if not mine:
                counts["absent"] += 1
                continue
            drawn = mine[0]  # the first object of its class that is no other member's
            borrowed = any((drawn.color != subject.color and drawn.color == t.color)
                           or (drawn.pattern != subject.pattern and drawn.pattern == t.pattern) for t in others)
            counts["borrowed_look" if borrowed else "own_look_lost"] += 1
    return {key: count / mentions for key, count in counts.items()} if mentions else dict.fromkeys(MISSES, float("nan"))


def _generator(sampler, masks, space, strategy, seed: int, *, unions: dict | None = None,
               combined: dict | None = None) -> Generate:
    """Cones' Generate: each image's subjects composed under `strategy` (masks None: no mask; `unions`,
    combination -> mask, replaces the plain union of the subjects' masks; `combined`, frozenset of
    subject ids -> {subject id: mask}, gives each member of that combination its combination mask)."""

    def generate(prompts, combos, tag):
        if unions:
            applied = [(unions[c] if c in unions else unions[tuple(reversed(c))], []) for c in combos]
        elif combined:
            applied = [_applied(strategy, combined.get(frozenset(s.id for s in c), masks), c) for c in combos]
        else:
            applied = [_applied(strategy, masks, c) for c in combos]
        return sampler.run(prompts, applied, space, seed=seed, tag=tag)

    return generate


def _single(sampler, subjects, masks, space, strategy, *, n: int, seed: int, spelled_out: bool = False) -> float:
    return single_line(_generator(sampler, masks, space, strategy, seed), subjects, n=n, spelled_out=spelled_out)


def _context(sampler, subjects, masks, space, strategy, *, n: int, seed: int) -> dict[str, float]:
    return context_line(_generator(sampler, masks, space, strategy, seed), subjects, n=n)


def _crosstalk(sampler, subjects, masks, space, strategy, *, n: int, seed: int) -> dict[str, float]:
    """Under `token` the mask needs its word in the prompt, and B's prompt has none, so nothing is shut:
    the line then measures that the mask stays out of other classes' prompts, which is what `token` promises."""
    generate = _generator(sampler, masks, space, strategy, seed)
    if strategy != "union":
        return crosstalk_line(lambda prompts, combos, tag: generate(prompts, [()] * len(combos), tag), subjects, n=n)
    return crosstalk_line(generate, subjects, n=n)


def _multi_lines(sampler, subjects, masks, space, strategy, sizes, params: ValidateParams, *, n: int, seed: int,
                 combined: dict | None = None) -> dict[str, Any]:
    """multi (all present per k) and multi_detail (per subject, A's look on B, the other order)."""
    detail = {}
    for k in sizes:
        line = _multi(sampler, subjects, masks, space, strategy, k=k, n=n, seed=seed, combined=combined)
        if params.reversed_order:
            line["reversed"] = _multi(sampler, subjects, masks, space, strategy, k=k, n=n, seed=seed, reverse=True,
                                      combined=combined)["all_present"]
        detail[str(k)] = line
    return {"multi": {k: v["all_present"] for k, v in detail.items()}, "multi_detail": detail}


def _multi(sampler, subjects, masks, space, strategy, *, k: int, n: int, seed: int, unions: dict | None = None,
           reverse: bool = False, combined: dict | None = None) -> dict[str, float]:
    """masks None: the spelled-out prompt, no mask (the ceiling); `unions` (combination -> mask)
    replaces the plain union of the subjects' masks; `combined` as in mask_lines."""
    generate = _generator(sampler, masks, space, strategy, seed, unions=unions, combined=combined)
    return multi_line(generate, subjects, k=k, n=n, reverse=reverse, spelled_out=masks is None)


def _refined_multi(sampler, model, subjects, references, masks, space, params: ValidateParams, sizes, mode: str) -> dict[str, Any]:
    """multi_refined (union only): the multi line again, each union first refined by a few joint rounds (refine_union)."""
    refine = params.union_refine
    if refine is None:
        return {}
    if refine.attention != space.attention:  # the union lives in the chosen candidate's space
        refine = refine.model_copy(update={"attention": space.attention})
    lines, added = {}, []
    for k in sizes:
        unions = {}
        for combo in itertools.combinations(subjects, k):
            parts = [(references[s.id], _reference_prompts(s, mode, params.reference_images)) for s in combo]
            result = refine_union(model, parts, _applied("union", masks, combo)[0], refine, seed=params.discovery_seed, progress=False)
            unions[combo] = result.mask
            added.append(result.report["added"])
        lines[str(k)] = _multi(sampler, subjects, masks, space, "union", k=k, n=params.images_per_line,
                               seed=params.report_seed, unions=unions)["all_present"]
    return {"multi_refined": lines, "multi_refined_added_neurons": float(np.mean(added)) if added else 0.0}


class PriorImages:
    """The base model's own images of each class prompt (prior preservation), sampled once per shape."""

    def __init__(self, model, params: ValidateParams) -> None:
        self.model, self.params, self._cache = model, params, {}

    def of(self, shape: str) -> np.ndarray:
        if shape not in self._cache:
            seeds = line_seeds(self.params.discovery_seed, 99, self.params.prior_images)
            self._cache[shape] = sample(
                self.model, [_class_prompt(shape)] * len(seeds), seeds=seeds, steps=self.params.sample_steps,
                guidance_scale=self.params.guidance_scale, progress=False,
            )
        return self._cache[shape]


def line_seeds(seed: int, tag: int, n: int) -> list[int]:
    """Sampling seeds of one line: (seed, line tag, index), so no two lines share noise."""
    return [(seed * 1_000 + tag) * 100_000 + i for i in range(n)]


class _Sampler:
    """Samples with per-image masks and judges; seeds are (seed, line tag, index) so lines never share noise."""

    def __init__(self, model, judge, params: ValidateParams, progress: bool) -> None:
        self.model, self.judge, self.params, self.progress = model, judge, params, progress

    def run(self, prompts: list[str], applied: list[tuple[ConceptMask | None, list]], space: NeuronSpace, *, seed: int, tag: int) -> list:
        """applied[i]: (every-token mask or None, word masks) of image i (composition.compose)."""
        seeds = line_seeds(seed, tag, len(prompts))
        masks = [m for m, _ in applied]
        words = [w for _, w in applied]
        use_masks = masks if any(m is not None for m in masks) else None
        use_words = words if any(words) else None
        images = sample(
            self.model, prompts, seeds=seeds, steps=self.params.sample_steps, guidance_scale=self.params.guidance_scale,
            masks=use_masks, word_masks=use_words, space=space if (use_masks or use_words) else None,
            layout=self.params.layout, batch_size=self.params.batch_size, progress=self.progress,
        )
        return [self.judge(im) for im in tqdm(images, desc="judge", disable=not self.progress)]
