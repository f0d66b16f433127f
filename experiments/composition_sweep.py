"""Word-scoped discovery settings against each other, on the six toy subjects (docs/research/composition.md).

    python experiments/composition_sweep.py '{"learning_rate": 0.1, "key_step": 0.2}' [--n 24] [--device cuda]

For each discovery objective given (JSON, on top of that objective's defaults), discovers every
toy subject's word-scoped mask, then judges, on the selection seeds (never the report seeds of
`cones toy validate`): the class prompt ("a circle"), context ("a circle on snow" / "on night"),
and every ordered pair of subjects under "a A and a B" with token composition. Prints one JSON
line per setting: mean single, context, pair both-present, per-position presence, neuron
fraction, and the per-pair table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np

from cones_tasks.combinations import subjects_phrase
from cones_tasks.loading import load_diffusion_model
from cones_tasks.neurons.composition import compose
from cones_tasks.neurons.discovery import discover_concept_neurons
from cones_tasks.neurons.objectives import parse_discovery
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.sampling import sample
from cones_tasks.toyworld.assets import TOY_MODEL_DIR
from cones_tasks.toyworld.captions import class_prompt
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.subjects import (
    TOY_SUBJECTS,
    context_prompts,
    reference_renders,
)


def run(model, overrides: dict, *, n: int, seed0: int) -> dict:
    params = parse_discovery(overrides)
    space = NeuronSpace.from_unet(model.unet)
    started = time.perf_counter()
    masks = {}
    for s in TOY_SUBJECTS:
        prompts = context_prompts(s, 6)
        masks[s.id] = discover_concept_neurons(model, reference_renders(s, n=6), prompts, params, class_word=s.shape,
                                               progress=False).mask
    discovery_s = time.perf_counter() - started
    seeds = [seed0 + i for i in range(n)]

    def judged(prompt: str, subjects) -> list:
        mask, words = compose("token", [(masks[s.id], s.shape) for s in subjects])
        images = sample(model, [prompt] * n, seeds=seeds, steps=20, guidance_scale=3.0, space=space,
                        masks=[mask] * n, word_masks=[words] * n)
        return [judge(im) for im in images]

    single = {s.id: np.mean([v.shows(s) for v in judged(class_prompt(s.shape), [s])]) for s in TOY_SUBJECTS}
    context = {
        s.id: np.mean([v.shows(s) and v.background == bg for bg in ("snow", "night")
                       for v in judged(f"{class_prompt(s.shape)} on {bg}", [s])])
        for s in TOY_SUBJECTS
    }
    pairs = {}
    for a, b in itertools.permutations(TOY_SUBJECTS, 2):
        verdicts = judged(subjects_phrase([a.shape, b.shape]), [a, b])
        pairs[f"{a.id}+{b.id}"] = [float(np.mean([v.shows(a) and v.shows(b) for v in verdicts])),
                                   float(np.mean([v.shows(a) for v in verdicts])),
                                   float(np.mean([v.shows(b) for v in verdicts]))]
    return {
        "overrides": overrides, "n": n, "single": float(np.mean(list(single.values()))),
        "context": float(np.mean(list(context.values()))), "pair_both": float(np.mean([p[0] for p in pairs.values()])),
        "pair_first": float(np.mean([p[1] for p in pairs.values()])), "pair_second": float(np.mean([p[2] for p in pairs.values()])),
        "fraction": float(np.mean([m.fraction for m in masks.values()])), "discovery_s": discovery_s,
        "single_per_subject": {k: float(v) for k, v in single.items()}, "pairs": pairs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="+", help="discovery objectives as JSON objects (docs/config.md), one setting each")
    parser.add_argument("--n", type=int, default=24, help="images per line")
    parser.add_argument("--seed0", type=int, default=1000, help="first sampling seed (selection seeds)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model = load_diffusion_model(TOY_MODEL_DIR, device=args.device)
    for text in args.overrides:
        print(json.dumps(run(model, json.loads(text), n=args.n, seed0=args.seed0)), flush=True)


if __name__ == "__main__":
    main()
