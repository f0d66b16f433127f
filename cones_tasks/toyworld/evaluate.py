"""Measurements of the toy world's parts: the judge, the toy CLIP, the toy model (docs/research/toy-model.md)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import torch

from cones_tasks.sampling import sample
from cones_tasks.toyworld.captions import class_prompt, full_caption
from cones_tasks.toyworld.judge import Judgement, judge
from cones_tasks.toyworld.render import CROWD_RADIUS, random_scene, render
from cones_tasks.toyworld.world import BACKGROUNDS, COLORS, PATTERNS, SHAPES, Scene

ATTRIBUTES = ("shape", "color", "pattern")


def _nearest(judgement: Judgement, cx: float, cy: float):
    return min(judgement.objects, key=lambda o: (o.cx - cx) ** 2 + (o.cy - cy) ** 2)


def eval_judge(*, n: int = 1000, seed: int = 0, crowd_radius: tuple[float, float] = CROWD_RADIUS) -> dict:
    """Accuracy of the judge on fresh renders of 1, 2, 3 and 4 objects, each object matched to the
    judged object nearest its centre.

    `counts["k"]`: per attribute (the share of objects read right), `all` (scenes with every object's
    shape, colour and pattern right), `objects_found` (scenes read as exactly k objects), unreadable
    scenes. `single` and `pair` are counts 1 and 2 without those, and `unreadable` their sum, as before
    three and four objects were measured. `crowd_radius` sizes three or four objects (render.CROWD_RADIUS)."""
    rng = np.random.default_rng(seed)
    counts: dict = {}
    for count in (1, 2, 3, 4):
        hits: Counter = Counter()
        for _ in range(n):
            scene = random_scene(rng, count, crowd_radius=crowd_radius)
            verdict = judge(render(scene))
            if verdict.unreadable:
                hits["unreadable"] += 1
                continue
            hits["background"] += verdict.background == scene.background
            hits["objects_found"] += len(verdict.objects) == count
            right = True
            for obj in scene.objects:
                found = _nearest(verdict, obj.cx, obj.cy)
                for attr in ATTRIBUTES:
                    hit = getattr(found, attr) == getattr(obj, attr)
                    hits[attr] += hit  # objects, out of count * n
                    right &= hit
            hits["all"] += right
        counts[str(count)] = {a: hits[a] / (count * n) for a in ATTRIBUTES}
        counts[str(count)] |= {a: hits[a] / n for a in ("background", "all", "objects_found")}
        counts[str(count)]["unreadable"] = hits["unreadable"]
    result: dict = {"n": n}
    for key, count in (("single", "1"), ("pair", "2")):
        result[key] = {a: counts[count][a] for a in (*ATTRIBUTES, "background")}
    result["unreadable"] = counts["1"]["unreadable"] + counts["2"]["unreadable"]
    result["counts"] = counts
    result["crowd_radius"] = list(crowd_radius)
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


def spelled_out_scenes(rng: np.random.Generator, n: int) -> dict[str, list[Scene]]:
    """n scenes per object count 1–4 whose full captions ("a striped red circle and a plain blue square on snow",
    the training's full captions, objects named in the scene's order) are the counts lines' prompts."""
    return {str(k): [random_scene(rng, k) for _ in range(n)] for k in (1, 2, 3, 4)}


def counts_lines(scenes: dict[str, list[Scene]], verdicts: list[Judgement]) -> tuple[dict, dict]:
    """Per object count: the share of images, readable, that show every named object (shape, colour and pattern,
    anywhere: validate's multi lines read presence the same way); and a detail line per count."""
    rates, detail, at = {}, {}, 0
    for k, group in scenes.items():
        judged, at = verdicts[at : at + len(group)], at + len(group)
        present = [[not v.unreadable and v.has(shape=o.shape, color=o.color, pattern=o.pattern) for o in s.objects]
                   for s, v in zip(group, judged)]
        rates[k] = float(np.mean([all(p) for p in present]))
        detail[k] = {
            "all": rates[k],
            "per_object": float(np.mean([x for p in present for x in p])),
            "objects_found": float(np.mean([not v.unreadable and len(v.objects) == int(k) for v in judged])),
            "background": float(np.mean([not v.unreadable and v.background == s.background for s, v in zip(group, judged)])),
            "unreadable": float(np.mean([v.unreadable for v in judged])),
            "n": len(group),
        }
    return rates, detail


EVAL_LINES = ("single", "class_only", "pair", "counts")


def check_eval_lines(lines: tuple[str, ...]) -> None:
    """Raise ValueError, naming the choices, unless `lines` is a non-empty selection of EVAL_LINES."""
    unknown = set(lines) - set(EVAL_LINES)
    if unknown or not lines:
        raise ValueError(f"unknown eval lines {sorted(unknown)}; choose from {', '.join(EVAL_LINES)}")


def eval_model(model, *, n: int = 200, seed: int = 0, steps: int = 25, guidance_scale: float = 3.0, progress: bool = True,
               lines: tuple[str, ...] = EVAL_LINES) -> dict:
    """Judge the toy model's samples: full single-object prompts, class-only prompts, two-object prompts, and
    (`counts`) full captions of 1, 2, 3 and 4 objects: the share of images with every object right, n per count.

    The counts' prompts are drawn after the others, so the first three lines keep their prompts and seeds. `lines`
    picks which are sampled; every image keeps the prompt and seed it has in the full run, so a line alone reads
    the same images (a checkpoint's counts cost 4n images, not 7n)."""
    check_eval_lines(lines)
    rng = np.random.default_rng(seed)
    scenes = single_prompts(rng, n)
    classes = [SHAPES[i % len(SHAPES)] for i in range(n)]
    pairs = pair_prompts(rng, n)
    crowds = spelled_out_scenes(rng, n)
    prompts = {
        "single": [full_caption(s) for s in scenes],
        "class_only": [class_prompt(c) for c in classes],
        "pair": [p for p, _ in pairs],
        "counts": [full_caption(s) for group in crowds.values() for s in group],
    }
    seeds, at = {}, 0
    for line in EVAL_LINES:  # seeds by place in the full run
        seeds[line], at = [seed * 100_003 + i for i in range(at, at + len(prompts[line]))], at + len(prompts[line])
    chosen = [line for line in EVAL_LINES if line in lines]
    images = sample(model, [p for line in chosen for p in prompts[line]], seeds=[x for line in chosen for x in seeds[line]],
                    steps=steps, guidance_scale=guidance_scale, progress=progress)
    verdicts, at = {}, 0
    for line in chosen:
        verdicts[line], at = [judge(im) for im in images[at : at + len(prompts[line])]], at + len(prompts[line])
    result: dict = {}
    if "single" in verdicts:
        result["single"] = _single_line(scenes, verdicts["single"])
    if "class_only" in verdicts:
        result["class_only"] = _class_line(classes, verdicts["class_only"])
    if "pair" in verdicts:
        result["pair"] = _pair_line(pairs, verdicts["pair"])
    if "counts" in verdicts:
        result["counts"], result["counts_detail"] = counts_lines(crowds, verdicts["counts"])
    return result


def _single_line(scenes: list[Scene], single_v: list[Judgement]) -> dict:
    n = len(scenes)
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
    return single


def _class_line(classes: list[str], class_v: list[Judgement]) -> dict:
    n = len(classes)
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
    return class_only


def _pair_line(pairs: list[tuple[str, tuple]], pair_v: list[Judgement]) -> dict:
    n = len(pairs)
    both = first = 0
    for (_, ((s1, c1), (s2, c2))), v in zip(pairs, pair_v):
        a, b = v.has(shape=s1, color=c1), v.has(shape=s2, color=c2)
        both += a and b
        first += a or b
    pair = {"both": both / n, "any": first / n, "unreadable": sum(v.unreadable for v in pair_v) / n, "n": n}
    return pair
