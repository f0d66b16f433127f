"""How scene photos are captioned, measured on the demo's pairs (docs/research/composition.md, "Scene captions").

Discovery as `cones demo` runs it: the first four toy subjects, six photos alone on the class phrase
and twelve scene photos on their captions, the library's default discovery (FitObjective). Then every pair,
named in subject-id order as the generation grid names them, under the demo's two templates, at
15 DPM-Solver steps and guidance 3, judged for both subjects; and each subject alone.

    python -m experiments.scene_captions --captions class --seed0 0
    python -m experiments.scene_captions --captions described --seed0 1000
    python -m experiments.scene_captions --discovery-seed 3   # how much one discovery draw varies

`--captions` names the other object of a scene photo by its class word ("a triangle and a
circle on snow") or in full ("a triangle and a dotted blue circle on snow").
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np

from cones_tasks.combinations import class_phrase, subjects_phrase
from cones_tasks.loading import load_diffusion_model
from cones_tasks.neurons.composition import compose
from cones_tasks.neurons.discovery import discover_concept_neurons
from cones_tasks.neurons.objectives import FitObjective
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.sampling import sample
from cones_tasks.toyworld.assets import TOY_MODEL_DIR
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, reference_renders, scene_references

TEMPLATES = ("{subjects}", "{subjects} on night")


def discover(model, subjects, *, captions: str, scenes: int, seed: int = 0) -> dict:
    masks = {}
    for s in subjects:
        images = reference_renders(s, n=6, seed=0)
        prompts = [class_phrase(s.class_word)] * len(images)
        if scenes:
            photos, caps = scene_references(s, n=scenes, seed=0, others=captions)
            images, prompts = np.concatenate([images, photos]), prompts + caps
        masks[s.id] = discover_concept_neurons(
            model, images, prompts, FitObjective(), class_word=s.class_word, seed=seed, progress=False
        ).mask
    return masks


def judge_lines(model, subjects, masks, *, seeds: list[int], steps: int) -> dict:
    named = sorted(subjects, key=lambda s: s.id)  # the generation grid's order
    combos = [list(p) for p in itertools.combinations(named, 2)] + [[s] for s in named]
    items = [(c, t, seed) for c in combos for t in TEMPLATES for seed in seeds]
    space = NeuronSpace.from_unet(model.unet, attention=FitObjective().attention)
    images = sample(
        model, [t.format(subjects=subjects_phrase([s.shape for s in c])) for c, t, _ in items],
        seeds=[seed for *_, seed in items], steps=steps, guidance_scale=3.0,
        word_masks=[compose("token", [(masks[s.id], s.class_word) for s in c])[1] for c, *_ in items], space=space,
    )
    hits: dict[str, list[bool]] = {}
    for (combo, _, _), image in zip(items, images):
        verdict = judge(image)
        hits.setdefault(" + ".join(s.id for s in combo), []).append(all(verdict.shows(s) for s in combo))
    per_line = {k: round(float(np.mean(v)), 3) for k, v in hits.items()}
    pairs = [x for k, v in hits.items() if "+" in k for x in v]
    singles = [x for k, v in hits.items() if "+" not in k for x in v]
    return {"pairs_all_present": round(float(np.mean(pairs)), 3), "pairs_n": len(pairs),
            "pairs_se": round(float(np.std(pairs) / np.sqrt(len(pairs))), 3),
            "singles": round(float(np.mean(singles)), 3), "singles_n": len(singles), "per_combination": per_line}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--captions", choices=["class", "described"], default="class")
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--seed0", type=int, default=0, help="first sampling seed")
    parser.add_argument("--seeds", type=int, default=8, help="sampling seeds per combination and template")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--discovery-seed", type=int, default=0, help="discovery's seed (its batches and noise)")
    args = parser.parse_args()
    model = load_diffusion_model(TOY_MODEL_DIR)
    subjects = TOY_SUBJECTS[:4]
    started = time.perf_counter()
    masks = discover(model, subjects, captions=args.captions, scenes=args.scenes, seed=args.discovery_seed)
    lines = judge_lines(model, subjects, masks, seeds=list(range(args.seed0, args.seed0 + args.seeds)), steps=args.steps)
    print(json.dumps({**vars(args), **lines, "wall_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
