"""Where a toy model's two-object prompts fail (docs/research/toy-model.md, "Where the toy model stands").

    python experiments/pair_failures.py MODEL_FOLDER [--n 96]

Samples the eval's pair prompts and reads each image back with the judge, then asks:
- order: with exactly two objects found, is the first-named shape (colour) the left/top one?
- colour placement: for "a red circle and a blue circle" (same shape), "a red circle and a
  square" and "a circle and a blue square", which object gets the named colour?
A model that binds colours puts a named colour on its own object only; one that treats colour
as a property of the whole prompt paints it on either object about equally.
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter

import numpy as np

from cones_tasks.loading import load_diffusion_model
from cones_tasks.sampling import sample
from cones_tasks.toyworld.evaluate import pair_prompts
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.world import COLORS, SHAPES


def _two(image) -> tuple | None:
    v = judge(image)
    if v.unreadable or len(v.objects) != 2:
        return None
    return tuple(sorted(v.objects, key=lambda o: o.cx + o.cy))  # left or top first


def order(model, n: int) -> Counter:
    pairs = pair_prompts(np.random.default_rng(0), n)
    images = sample(model, [p for p, _ in pairs], seeds=list(range(n)), steps=25, guidance_scale=3.0)
    c: Counter = Counter()
    for (_, ((s1, c1), (s2, c2))), image in zip(pairs, images):
        objects = _two(image)
        if objects is None:
            continue
        first, second = objects
        c["two objects"] += 1
        c["both right"] += {(first.shape, first.color), (second.shape, second.color)} == {(s1, c1), (s2, c2)}
        c["shapes in order"] += (first.shape, second.shape) == (s1, s2)
        c["shapes reversed"] += (first.shape, second.shape) == (s2, s1)
        c["colours in order"] += (first.color, second.color) == (c1, c2)
        c["colours reversed"] += (first.color, second.color) == (c2, c1)
    return c


def colour_placement(model) -> dict[str, Counter]:
    colours = list(COLORS)
    cases = {
        "same shape": [(f"a {a} {s} and a {b} {s}", a, b) for s in SHAPES for a, b in itertools.permutations(colours, 2)],
        "first colour only": [(f"a {a} {s} and a {t}", a, None) for s, t in itertools.permutations(SHAPES, 2) for a in colours],
        "second colour only": [(f"a {s} and a {b} {t}", None, b) for s, t in itertools.permutations(SHAPES, 2) for b in colours],
    }
    out = {}
    for name, items in cases.items():
        images = sample(model, [p for p, *_ in items], seeds=list(range(len(items))), steps=25, guidance_scale=3.0)
        c: Counter = Counter({"prompts": len(items)})
        for (_, a, b), image in zip(items, images):
            objects = _two(image)
            if objects is None:
                c["not two objects"] += 1
                continue
            first, second = objects
            if a:
                c["first colour on first"] += first.color == a
                c["first colour on second"] += second.color == a
            if b:
                c["second colour on second"] += second.color == b
                c["second colour on first"] += first.color == b
        out[name] = c
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--n", type=int, default=96)
    args = parser.parse_args()
    model = load_diffusion_model(args.model)
    print("order:", dict(order(model, args.n)))
    for name, c in colour_placement(model).items():
        print(f"{name}:", dict(c))


if __name__ == "__main__":
    main()
