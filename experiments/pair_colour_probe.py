"""Which projection carries the colour that leaks between the two subjects of a pair (probe).

Pairs named circle-first fail on the toy model: the circle is drawn in the other subject's
colour (docs/research/composition.md, "The demo's pairs"). With the same word-scoped masks, this
samples every pair of the demo's four subjects with each subject's mask restricted at sampling
time to its key weights, its value weights, or both, per position in the prompt, and judges
both subjects and each one alone.

    python -m experiments.pair_colour_probe --seed0 0      # selection seeds
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
from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.objectives import FitObjective
from cones_tasks.neurons.space import NeuronSpace, attention_modules
from cones_tasks.sampling import sample
from cones_tasks.toyworld.assets import TOY_MODEL_DIR
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.subjects import TOY_SUBJECTS
from experiments.scene_captions import TEMPLATES, discover

# (first subject's weights, second subject's weights) kept at sampling
VARIANTS = {
    "kv/kv": ("kv", "kv"),
    "v/v": ("v", "v"),
    "kv/v": ("kv", "v"),
    "v/kv": ("v", "kv"),
    "k/k": ("k", "k"),
    "k½v/k½v": ("k½v", "k½v"),
    "kv/k½v": ("kv", "k½v"),
    "k½v/kv": ("k½v", "kv"),
}
VARIANT_SETS = {"halves": ("kv/kv", "k½v/k½v", "kv/k½v", "k½v/kv")}


def restrictor(model, space: NeuronSpace):
    """kind → function restricting a mask to the key ('k'), value ('v') or both ('kv') weights (by module identity);
    'k½v' keeps every value weight and a fixed random half of the key weights (a weaker key edit)."""
    values = {id(m.to_v) for _, m in attention_modules(model.unet, attention=space.attention)}
    modules = space.modules(model.unet)
    is_value = np.zeros(space.size, dtype=bool)
    for e in space.entries:
        is_value[e.offset : e.offset + e.numel] = id(modules[e.name]) in values

    def restrict(mask: ConceptMask, kind: str) -> ConceptMask:
        if kind == "kv":
            return mask
        if kind == "k½v":
            half = np.random.default_rng(0).random(mask.indices.size) < 0.5
            keep = is_value[mask.indices] | half
        else:
            keep = is_value[mask.indices] if kind == "v" else ~is_value[mask.indices]
        return ConceptMask.from_indices(space, mask.indices[keep])

    return restrict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed0", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--variants", choices=["all", *VARIANT_SETS], default="all")
    args = parser.parse_args()
    started = time.perf_counter()
    model = load_diffusion_model(TOY_MODEL_DIR)
    subjects = sorted(TOY_SUBJECTS[:4], key=lambda s: s.id)  # the generation grid's order
    masks = discover(model, subjects, captions="class", scenes=12)
    space = NeuronSpace.from_unet(model.unet, attention=FitObjective().attention)
    restrict = restrictor(model, space)
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    pairs = list(itertools.combinations(subjects, 2))
    chosen = VARIANTS if args.variants == "all" else VARIANT_SETS[args.variants]
    items = [(v, p, t, s) for v in chosen for p in pairs for t in TEMPLATES for s in seeds]
    word_masks = [
        compose("token", [(restrict(masks[x.id], kind), x.class_word) for x, kind in zip(p, VARIANTS[v])])[1]
        for v, p, _, _ in items
    ]
    images = sample(model, [t.format(subjects=subjects_phrase([x.shape for x in p])) for _, p, t, _ in items],
                    seeds=[s for *_, s in items], steps=args.steps, guidance_scale=3.0, word_masks=word_masks, space=space)
    out: dict[str, dict] = {}
    for (v, p, _, _), image in zip(items, images):
        verdict = judge(image)
        line = out.setdefault(v, {}).setdefault(" + ".join(x.id for x in p), {"both": [], "first": [], "second": []})
        first, second = verdict.shows(p[0]), verdict.shows(p[1])
        line["both"].append(first and second)
        line["first"].append(first)
        line["second"].append(second)
    summary = {}
    for v, lines in out.items():
        both = [x for line in lines.values() for x in line["both"]]
        summary[v] = {
            "pairs_all_present": round(float(np.mean(both)), 3), "n": len(both),
            "se": round(float(np.std(both) / np.sqrt(len(both))), 3),
            "first": round(float(np.mean([x for line in lines.values() for x in line["first"]])), 3),
            "second": round(float(np.mean([x for line in lines.values() for x in line["second"]])), 3),
            "per_pair": {k: round(float(np.mean(line["both"])), 2) for k, line in lines.items()},
        }
    print(json.dumps({**vars(args), "variants": summary, "wall_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
