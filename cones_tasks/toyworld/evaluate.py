"""Measurements of the toy world's parts: the judge, the toy CLIP, the toy model (docs/research/toy-model.md)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import torch

from cones_tasks.sampling import sample
from cones_tasks.toyworld.captions import class_prompt, full_caption
from cones_tasks.toyworld.judge import Judgement, judge
from cones_tasks.toyworld.render import random_scene, render
from cones_tasks.toyworld.world import BACKGROUNDS, COLORS, PATTERNS, SHAPES, Scene

ATTRIBUTES = ("shape", "color", "pattern")


def _nearest(judgement: Judgement, cx: float, cy: float):
    return min(judgement.objects, key=lambda o: (o.cx - cx) ** 2 + (o.cy - cy) ** 2)


def eval_judge(*, n: int = 1000, seed: int = 0) -> dict:
    """Per-attribute accuracy of the judge on fresh renders: single-object and two-object scenes."""
    rng = np.random.default_rng(seed)
    result: dict = {"n": n}
    unreadable = 0
    for key, count in (("single", 1), ("pair", 2)):
        hits: Counter = Counter()
        for _ in range(n):
            scene = random_scene(rng, count)
            verdict = judge(render(scene))
            if verdict.unreadable:
                unreadable += 1
                continue
            hits["background"] += verdict.background == scene.background
            for obj in scene.objects:
                found = _nearest(verdict, obj.cx, obj.cy)
                for attr in ATTRIBUTES:
                    hits[attr] += (getattr(found, attr) == getattr(obj, attr)) / count
        result[key] = {a: hits[a] / n for a in (*ATTRIBUTES, "background")}
    result["unreadable"] = unreadable
    return result


def eval_clip(scorer, *, n: int = 500, seed: int = 0) -> dict:
    """Zero-shot accuracy per attribute: the best of all values' captions (prompt-ensembled over
    the other attributes, as CLIP zero-shot evaluation does) on fresh single-object renders."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, 1) for _ in range(n)]
    image_features = scorer.embed_images(np.stack([render(s) for s in scenes]))
    templates = {
        "shape": {s: [f"a {s}", *(f"a {c} {s}" for c in COLORS)] for s in SHAPES},
        "color": {c: [f"a {c} {s}" for s in SHAPES] for c in COLORS},
        "background": {b: [f"a {s} on {b}" for s in SHAPES] for b in BACKGROUNDS},
    }
    result: dict = {}
    for attr, by_value in templates.items():
        values = list(by_value)
        class_features = torch.stack([scorer.embed_texts(by_value[v]).mean(0) for v in values])
        class_features = class_features / class_features.norm(dim=-1, keepdim=True)
        predicted = (image_features @ class_features.T).argmax(-1)
        truth = [values.index(s.background if attr == "background" else getattr(s.objects[0], attr)) for s in scenes]
        result[attr] = float((predicted == torch.tensor(truth)).float().mean())
    result["n"] = n
    return result


def normalized_entropy(counts: Counter, support: int) -> float:
    p = np.array([c for c in counts.values() if c > 0], dtype=float)
    if p.sum() == 0:
        return 0.0
    p /= p.sum()
    return float(-(p * np.log(p)).sum() / np.log(support))


def single_prompts(rng: np.random.Generator, n: int) -> list[Scene]:
    return [random_scene(rng, 1) for _ in range(n)]


def pair_prompts(rng: np.random.Generator, n: int) -> list[tuple[str, tuple]]:
    """Two-object prompts ("a red circle and a blue square"): distinct shapes and colours."""
    pairs = [
        ((s1, c1), (s2, c2))
        for (s1, s2) in itertools.permutations(SHAPES, 2)
        for (c1, c2) in itertools.permutations(COLORS, 2)
    ]
    chosen = [pairs[i] for i in rng.integers(len(pairs), size=n)]
    return [(f"a {c1} {s1} and a {c2} {s2}", ((s1, c1), (s2, c2))) for (s1, c1), (s2, c2) in chosen]


def eval_model(model, *, n: int = 200, seed: int = 0, steps: int = 25, guidance_scale: float = 3.0, progress: bool = True) -> dict:
    """Judge the toy model's samples: full single-object prompts, class-only prompts, two-object prompts."""
    rng = np.random.default_rng(seed)
    scenes = single_prompts(rng, n)
    classes = [SHAPES[i % len(SHAPES)] for i in range(n)]
    pairs = pair_prompts(rng, n)
    prompts = [full_caption(s) for s in scenes] + [class_prompt(c) for c in classes] + [p for p, _ in pairs]
    seeds = [seed * 100_003 + i for i in range(len(prompts))]
    images = sample(model, prompts, seeds=seeds, steps=steps, guidance_scale=guidance_scale, progress=progress)
    verdicts = [judge(im) for im in images]
    single_v, class_v, pair_v = verdicts[:n], verdicts[n : 2 * n], verdicts[2 * n :]

    hits: Counter = Counter()
    for scene, v in zip(scenes, single_v):
        obj = scene.objects[0]
        if v.unreadable:
            continue
        hits["background"] += v.background == scene.background
        for attr in ATTRIBUTES:
            hits[attr] += v.has(**{attr: getattr(obj, attr)})
    single = {a: hits[a] / n for a in (*ATTRIBUTES, "background")}
    single["all"] = sum(
        (not v.unreadable) and v.background == s.background and v.has(shape=s.objects[0].shape, color=s.objects[0].color, pattern=s.objects[0].pattern)
        for s, v in zip(scenes, single_v)
    ) / n
    single |= {"unreadable": sum(v.unreadable for v in single_v) / n, "n": n}

    colors: Counter = Counter()
    patterns: Counter = Counter()
    shape_hits = 0
    for shape, v in zip(classes, class_v):
        if v.unreadable:
            continue
        shape_hits += v.has(shape=shape)
        for o in v.objects[:1]:
            colors[o.color] += 1
            patterns[o.pattern] += 1
    class_only = {
        "shape": shape_hits / n,
        "color_entropy": normalized_entropy(colors, len(COLORS)),
        "pattern_entropy": normalized_entropy(patterns, len(PATTERNS)),
        "unreadable": sum(v.unreadable for v in class_v) / n,
        "n": n,
    }

    both = first = 0
    for (_, ((s1, c1), (s2, c2))), v in zip(pairs, pair_v):
        a, b = v.has(shape=s1, color=c1), v.has(shape=s2, color=c2)
        both += a and b
        first += a or b
    pair = {"both": both / n, "any": first / n, "unreadable": sum(v.unreadable for v in pair_v) / n, "n": n}
    return {"single": single, "class_only": class_only, "pair": pair}
