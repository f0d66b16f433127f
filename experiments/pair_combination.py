"""Pairs with a combination step: both members' gates re-learned jointly on images showing both (docs/research/pairs.md).

Setup as `cones toy validate --quick` with `objective: gate` (density 1 %): the first six toy subjects, six
renders alone on context prompts and `--scene-references` captioned scene photos each. Every subject's gate mask
is discovered once and cached. Then, per pair of subjects (15 pairs), a combination step
(cones_tasks.neurons.combination) re-learns both members' masks on pictures of the pair from one source:

- together: the toy renderer draws both subjects in one frame (a user's photos of the two together);
- self: the pair prompt sampled with both members' own masks (token composition) on seeds no line uses,
  the images the toy judge accepts kept (on real photos a scorer would have to accept them; the run
  also reports how well toy-CLIP image alignment to each member's references separates hits from misses);
- composite: from each member's scene photos, the member's half (its side is where its caption names it),
  the two halves side by side on one background (both orders; with no scene photos, composed.py's
  shrunk side-by-side of the photos alone).

The pair lines are validate's own multi line (all present; per subject; per position) with each pair's
combination masks, on the selection seeds (choose) and the report seeds (quote).

    python -m experiments.pair_combination --source together --variants '[{"steps": 100}]' --out docs/research/pairs.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch

from cones_lab.validate import ValidateParams, discovery_references, line_seeds, mask_lines
from cones_tasks.combinations import subjects_phrase
from cones_tasks.loading import load_diffusion_model
from cones_tasks.neurons.combination import CombinationParams, combine_concepts
from cones_tasks.neurons.composed import compose_side_by_side
from cones_tasks.neurons.discovery import discover_concept_neurons
from cones_tasks.neurons.objectives import parse_discovery
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.neurons.word_scope import WordMask
from cones_tasks.sampling import sample
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, pair_scenes, reference_renders, scene_references
from cones_tasks.toyworld.assets import TOY_MODEL_DIR
from cones_tasks.toyworld.world import BACKGROUNDS

GATE = {"objective": "gate", "density": 0.01}


def own_masks(model, subjects, params: ValidateParams, discovery: dict, cache: Path | None) -> dict:
    """{subject id: mask} from word-scoped discovery as validate runs it, cached in `cache`."""
    if cache is not None and cache.exists():
        return pickle.loads(cache.read_bytes())
    objective = parse_discovery(discovery)
    found = {"masks": {}, "seconds": {}}
    for s in subjects:
        t0 = time.perf_counter()
        images, prompts = discovery_references(s, params, "context", scenes=True)
        found["masks"][s.id] = discover_concept_neurons(model, images, prompts, objective, class_word=s.shape, seed=0,
                                                        progress=False).mask
        found["seconds"][s.id] = time.perf_counter() - t0
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps(found))
    return found


# ---------------------------------------------------------------- where the pair's pictures come from


def together(pair, n: int, **_):
    return pair_scenes(pair[0], pair[1], n=n, seed=0)


def composite(pair, n: int, *, params: ValidateParams, **_):
    """The member's half of its own scene photos, side by side on one background (both orders)."""
    if params.scene_references == 0:
        return _composite_alone(pair, n, params)
    halves = {}
    for j, s in enumerate(pair):
        photos, captions = scene_references(s, n=params.scene_references, seed=params.discovery_seed)
        for photo, caption in zip(photos, captions):
            first = caption.startswith(f"a {s.shape} and")  # scene captions name left to right; the subject is the
            side = slice(0, photo.shape[1] // 2) if first else slice(photo.shape[1] // 2, None)  # only one of its class
            background = caption.rsplit(" on ", 1)[1]
            halves.setdefault((j, background), []).append(photo[:, side])
    images, captions, named = [], [], []
    for i in range(n):
        background = list(BACKGROUNDS)[i % len(BACKGROUNDS)]
        order = (0, 1) if (i // 2) % 2 == 0 else (1, 0)
        parts = [halves[(j, background)][(i // 4) % len(halves[(j, background)])] for j in order]
        images.append(np.concatenate(parts, axis=1))
        captions.append(f"{subjects_phrase([pair[j].shape for j in order])} on {background}")
        named.append(order)
    return np.stack(images), captions, named


def _composite_alone(pair, n: int, params: ValidateParams):
    """No scene photos: the members' photos alone, shrunk side by side (composed.compose_side_by_side)."""
    refs = [reference_renders(s, n=params.reference_images, seed=params.discovery_seed) for s in pair]
    backgrounds = [list(BACKGROUNDS)[i % len(BACKGROUNDS)] for i in range(params.reference_images)]
    images, captions, named = [], [], []
    for i in range(n):
        k = (i // 2) % params.reference_images  # reference k of both is on the same background
        order = (0, 1) if i % 2 == 0 else (1, 0)
        images.append(compose_side_by_side(refs[order[0]][k], refs[order[1]][k]))
        captions.append(f"{subjects_phrase([pair[j].shape for j in order])} on {backgrounds[k]}")
        named.append(order)
    return np.stack(images), captions, named


def self_generated(pair, n: int, *, model, masks, params: ValidateParams, candidates: int, stats: list, scorer=None, **_):
    """The pair prompt sampled with both members' own masks; the images the toy judge accepts, up to n."""
    prompts, named = [], []
    for i in range(candidates):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        background = list(BACKGROUNDS)[(i // 2) % len(BACKGROUNDS)]
        prompts.append(f"{subjects_phrase([pair[j].shape for j in order])} on {background}")
        named.append(order)
    words = [[WordMask(masks[pair[j].id], pair[j].shape) for j in order] for order in named]
    # seed set 7 with its own tag: never the selection (1) or report (2) seeds the lines are judged on
    images = sample(model, prompts, seeds=line_seeds(7, 90, candidates), steps=params.sample_steps,
                    guidance_scale=params.guidance_scale, word_masks=words, space=NeuronSpace.from_unet(model.unet, attention="cross"))
    verdicts = [judge(im) for im in images]
    hits = np.array([v.shows(pair[0]) and v.shows(pair[1]) and v.background == p.rsplit(" on ", 1)[1]
                     for v, p in zip(verdicts, prompts)])
    if scorer is not None:
        stats.append(_scorer_separation(scorer, pair, images, hits, params))
    keep = np.flatnonzero(hits)[:n]
    return images[keep], [prompts[i] for i in keep], [named[i] for i in keep]


def _scorer_separation(scorer, pair, images, hits, params):
    """How well the product's scorer tells the judge's hits from misses: min over members of image alignment."""
    from cones_tasks.generation_scores import image_alignment

    gen = scorer.embed_images(images).numpy()
    per = [image_alignment(gen, scorer.embed_images(reference_renders(s, n=params.reference_images)).numpy()) for s in pair]
    score = np.minimum(*per)
    pos, neg = score[hits], score[~hits]
    auc = float(np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])) if len(pos) and len(neg) else float("nan")
    return {"pair": [s.id for s in pair], "hits": int(hits.sum()), "candidates": len(hits), "auc": auc,
            "scores": score.round(4).tolist(), "labels": hits.astype(int).tolist()}


SOURCES = {"together": together, "composite": composite, "self": self_generated}


def combine_all(model, subjects, masks, source: str, cparams: CombinationParams, params: ValidateParams, *, n_images: int,
                candidates: int, scorer=None, anchors: bool = False) -> tuple[dict, dict]:
    combined, seconds, stats, counts, kept = {}, [], [], [], []
    for pair in itertools.combinations(subjects, 2):
        images, prompts, named = SOURCES[source](pair, n_images, model=model, masks=masks, params=params,
                                                 candidates=candidates, stats=stats, scorer=scorer)
        counts.append(len(images))
        if len(images) == 0:  # nothing accepted: the pair keeps its members' own masks
            continue
        t0 = time.perf_counter()
        own = [discovery_references(s, params, "context", scenes=True) for s in pair] if anchors else None
        result = combine_concepts(model, images, prompts, [WordMask(masks[s.id], s.shape) for s in pair], cparams,
                                  named=named, anchors=own, seed=0)
        seconds.append(time.perf_counter() - t0)
        kept.extend(result.report["kept_of_own_mask"])
        combined[frozenset(s.id for s in pair)] = {s.id: m for s, m in zip(pair, result.masks)}
    fractions = [m.fraction for c in combined.values() for m in c.values()]
    info = {"combination_s_per_pair": float(np.mean(seconds)) if seconds else 0.0, "pairs_combined": len(combined),
            "images_per_pair": counts, "fraction_mean": float(np.mean(fractions)) if fractions else None,
            "fraction_max": float(np.max(fractions)) if fractions else None,
            "kept_of_own_mask": float(np.mean(kept)) if kept else None}
    if stats:
        info["scorer"] = stats
        info["scorer_auc_mean"] = float(np.nanmean([s["auc"] for s in stats]))
    return combined, info


def pair_lines(model, subjects, masks, combined, params, *, seed: int, n: int) -> dict:
    space = NeuronSpace.from_unet(model.unet, attention="cross")
    found = mask_lines(model, judge, subjects, masks, space, "token", params, seed=seed, n=n, combined=combined,
                       lines=("multi",))
    detail = found["multi_detail"]["2"]
    return {"n": n, "seed": seed, "multi2": detail["all_present"], "per_subject": detail["per_subject"],
            "per_position": detail["per_position"], "look_on_other": detail["look_on_other"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["none", *SOURCES], default="together")
    parser.add_argument("--variants", default='[{}]', help="JSON list of CombinationParams")
    parser.add_argument("--discovery", default=json.dumps(GATE), help="the subjects' own discovery objective")
    parser.add_argument("--scene-references", type=int, default=12)
    parser.add_argument("--images", type=int, default=12, help="pictures of each pair handed to the step")
    parser.add_argument("--candidates", type=int, default=32, help="--source self: samples per pair before the judge")
    parser.add_argument("--anchors", action="store_true", help="mix each member's own discovery photos into the step")
    parser.add_argument("--clip", action="store_true", help="--source self: also score candidates with the toy CLIP")
    parser.add_argument("--n-select", type=int, default=48)
    parser.add_argument("--n-report", type=int, default=0, help="also judge the report seeds (0: not)")
    parser.add_argument("--cache", default=None, help="pickle of the subjects' own masks (made if missing)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_diffusion_model(TOY_MODEL_DIR)
    subjects = TOY_SUBJECTS[:6]
    params = ValidateParams(sample_steps=20, scene_references=args.scene_references, multi_sizes=(2,), ceilings=False,
                            reversed_order=False, strategies=("token",))
    own = own_masks(model, subjects, params, json.loads(args.discovery), Path(args.cache) if args.cache else None)
    masks = own["masks"]
    scorer = None
    if args.clip:
        from cones_tasks.loading import load_clip_scorer
        from cones_tasks.toyworld.assets import toy_clip_weights

        scorer = load_clip_scorer("cones-toy-clip", toy_clip_weights())
    for variant in json.loads(args.variants):
        cparams = CombinationParams(**variant)
        t0 = time.perf_counter()
        combined, info = ({}, {}) if args.source == "none" else combine_all(
            model, subjects, masks, args.source, cparams, params, n_images=args.images, candidates=args.candidates,
            scorer=scorer, anchors=args.anchors)
        row = {"source": args.source, "combination": cparams.model_dump() if args.source != "none" else None,
               "discovery": json.loads(args.discovery), "scene_references": args.scene_references, "images": args.images, "anchors": args.anchors,
               "own_fraction": float(np.mean([m.fraction for m in masks.values()])), **info,
               "select": pair_lines(model, subjects, masks, combined, params, seed=params.select_seed, n=args.n_select)}
        if args.n_report:
            row["report"] = pair_lines(model, subjects, masks, combined, params, seed=params.report_seed, n=args.n_report)
        row["wall_s"] = time.perf_counter() - t0
        print(json.dumps({k: v for k, v in row.items() if k != "scorer"}), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
