"""Why the union of two subjects' masks draws neither (docs/research/validate-runs.md, run 4).

    python -m experiments.union_failures [MODEL_FOLDER] [--n 24] [--fraction 0.1] [--composed]

Discovers the first four toy subjects' masks the way `cones toy validate --prompts context`
does (10 % of cross-attention K/V, context-matched prompts), then, under each pair's prompt
("a triangle and a square"), samples three ways: the union of both masks (the paper), A's mask
alone, B's mask alone. Each image is read back by the judge:
- `A` / `B`: that subject is drawn (shape, colour and pattern);
- `A shape` / `B shape`: an object of that class is drawn, whatever it looks like;
- `A look on B`: B's class drawn in A's colour and pattern (A's mask painting the other word).
A mask that works only on its own word gives `A` under A-alone with B's class still drawn; a
mask that paints every object gives `A look on B`. Also prints how much the masks overlap.

--composed adds a row for pairs of different classes: each subject discovered again in
two-object scenes under the pair's own prompt (A on the left beside a B-class object of random
look, "a triangle and a square on sand"; B on the right likewise), then their union. It asks
whether discovery in the pair's context makes masks that combine.
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter

import numpy as np

from cones_tasks.combinations import subjects_phrase
from cones_tasks.loading import load_diffusion_model
from cones_tasks.neurons.discovery import discover_concept_neurons
from cones_tasks.neurons.objectives import DISCOVERY_FOR, PromptScoreObjective
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.sampling import sample
from cones_tasks.toyworld.assets import TOY_MODEL_DIR
from cones_tasks.toyworld.captions import class_prompt
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.render import place_objects, random_attributes, render
from cones_tasks.toyworld.subjects import (
    TOY_SUBJECTS,
    context_prompts,
    reference_backgrounds,
    reference_renders,
)
from cones_tasks.toyworld.world import Scene


def tally(images, a, b) -> Counter:
    c: Counter = Counter(images=len(images))
    for image in images:
        v = judge(image)
        if v.unreadable:
            c["unreadable"] += 1
            continue
        c["two objects"] += len(v.objects) == 2
        c["A"] += v.shows(a)
        c["B"] += v.shows(b)
        c["both"] += v.shows(a) and v.shows(b)
        c["A shape"] += v.has(shape=a.shape)
        c["B shape"] += v.has(shape=b.shape)
        c["A look on B"] += a.shape != b.shape and v.shows(a, on=b.shape)
        c["B look on A"] += a.shape != b.shape and v.shows(b, on=a.shape)
    return c


def composed_references(subject, partner_shape: str, *, subject_first: bool, n: int = 6):
    """n renders of `subject` beside a `partner_shape` of random look, left-to-right, and their captions."""
    rng = np.random.default_rng([0, *map(ord, subject.id), *map(ord, partner_shape)])
    images, prompts = [], []
    for background in reference_backgrounds(n):
        _, colour, pattern = random_attributes(rng)
        pair = [(subject.shape, subject.color, subject.pattern), (partner_shape, colour, pattern)]
        pair = pair if subject_first else pair[::-1]
        images.append(render(Scene(background, place_objects(rng, pair, order="left-to-right"))))
        prompts.append(f"{subjects_phrase([shape for shape, _, _ in pair])} on {background}")
    return np.stack(images), prompts


def run4_params(fraction: float = 0.1) -> PromptScoreObjective:
    """Validate run 4's chosen candidate (docs/research/validate-8750steps-context.json, chosen_params) at
    `fraction`: the paper's statistic at every token, which validate still recommends for union composition."""
    return DISCOVERY_FOR["union"].model_copy(update={"threshold_value": fraction})


def discover(model, images, prompts, shape: str, params):
    return discover_concept_neurons(model, images, prompts, params, seed=0, progress=False,
                                    prior_prompt=class_prompt(shape)).mask


def context_masks(model, subjects, params) -> dict:
    """{subject id: mask} discovered as `cones toy validate --prompts context` does: one prompt per reference."""
    return {
        s.id: discover(model, reference_renders(s, n=6, seed=0),
                       context_prompts(s, 6), s.shape, params)
        for s in subjects
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default=str(TOY_MODEL_DIR))
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--composed", action="store_true")
    args = parser.parse_args()
    model = load_diffusion_model(args.model)
    params = run4_params(args.fraction)
    space = NeuronSpace.from_unet(model.unet, attention="cross")
    subjects = TOY_SUBJECTS[:4]
    masks = context_masks(model, subjects, params)
    for a, b in itertools.combinations(subjects, 2):
        ma, mb = masks[a.id], masks[b.id]
        overlap = ma.intersection(mb).count / ma.union(mb).count
        prompt = subjects_phrase([a.shape, b.shape])
        print(f"\n{a.id} + {b.id}: {prompt!r}, Jaccard of the masks {overlap:.2f}")
        seeds = list(range(args.n))
        ways = [("union", ma.union(mb)), ("A alone", ma), ("B alone", mb), ("no mask", None)]
        if args.composed and a.shape != b.shape:
            ca = discover(model, *composed_references(a, b.shape, subject_first=True), a.shape, params)
            cb = discover(model, *composed_references(b, a.shape, subject_first=False), b.shape, params)
            ways.append(("composed union", ca.union(cb)))
        for name, mask in ways:
            images = sample(model, [prompt] * args.n, seeds=seeds, steps=20, guidance_scale=3.0,
                            masks=[mask] * args.n if mask is not None else None, space=space if mask is not None else None)
            print(f"  {name:14s}", dict(tally(images, a, b)))


if __name__ == "__main__":
    main()
