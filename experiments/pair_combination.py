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

from cones_lab.pair_pictures import judge_accepts, rendered_pictures, self_generated
from cones_lab.validate import ValidateParams, discover_subjects, discovery_references, line_seeds, mask_lines
from cones_tasks.combinations import subjects_phrase
from cones_tasks.loading import load_diffusion_model
from cones_tasks.neurons.combination import CombinationParams, combine_concepts
from cones_tasks.neurons.objectives import parse_discovery
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.neurons.word_scope import WordMask
from cones_tasks.sampling import sample
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, reference_renders
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
        found["masks"][s.id] = discover_subjects(model, [s], objective, params)[s.id]
        found["seconds"][s.id] = time.perf_counter() - t0
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps(found))
    return found


# ---------------------------------------------------------------- where the pair's pictures come from


def pictures_of(pair, source: str, n: int, *, model, masks, params: ValidateParams, candidates: int, stats: list,
                scorer=None):
    if source != "self":
        return rendered_pictures(source, pair, n, scene_photos=params.scene_references,
                                 reference_images=params.reference_images, seed=params.discovery_seed)
    # seed set 7 with its own tag: never the selection (1) or report (2) seeds the lines are judged on
    found, images, hits = self_generated(pair, n, model=model, masks=masks, accept=judge_accepts(judge),
                                         candidates=candidates, seeds=line_seeds(7, 90, candidates),
                                         steps=params.sample_steps, guidance_scale=params.guidance_scale)
    if scorer is not None:
        stats.append(_scorer_separation(scorer, pair, images, hits, params))
    return found


def _scorer_separation(scorer, pair, images, hits, params):
    """How well the product's scorer tells the judge's hits from misses: min over the pair of image alignment
    (toy CLIP, cones_tasks.generation_scores) to each subject's reference photos."""
    from cones_tasks.generation_scores import image_alignment

    gen = scorer.embed_images(images).numpy()
    per = [image_alignment(gen, scorer.embed_images(reference_renders(s, n=params.reference_images)).numpy()) for s in pair]
    score = np.minimum(*per)
    pos, neg = score[hits], score[~hits]
    auc = float(np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])) if len(pos) and len(neg) else float("nan")
    return {"pair": [s.id for s in pair], "hits": int(hits.sum()), "candidates": len(hits), "auc": auc,
            "scores": score.round(4).tolist(), "labels": hits.astype(int).tolist()}


def combine_all(model, subjects, masks, source: str, cparams: CombinationParams, params: ValidateParams, *, n_images: int,
                candidates: int, scorer=None, anchors: bool = False, bare: bool = False) -> tuple[dict, dict]:
    combined, seconds, stats, counts, kept = {}, [], [], [], []
    for pair in itertools.combinations(subjects, 2):
        images, prompts, named = pictures_of(pair, source, n_images, model=model, masks=masks, params=params,
                                             candidates=candidates, stats=stats, scorer=scorer)
        if bare:  # half the captions without the background, as the pair prompts judged name none
            prompts = [p.rsplit(" on ", 1)[0] if i % 8 >= 4 else p for i, p in enumerate(prompts)]
        counts.append(len(images))
        if len(images) == 0:  # nothing accepted: the pair keeps its members' own masks
            continue
        t0 = time.perf_counter()
        own = [discovery_references(s, params, "context", scenes=True)[:2] for s in pair] if anchors else None
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
    parser.add_argument("--source", choices=["none", "together", "composite", "self"], default="together")
    parser.add_argument("--variants", default='[{}]', help="JSON list of CombinationParams")
    parser.add_argument("--discovery", default=json.dumps(GATE), help="the subjects' own discovery objective")
    parser.add_argument("--scene-references", type=int, default=12)
    parser.add_argument("--images", type=int, default=12, help="pictures of each pair handed to the step")
    parser.add_argument("--candidates", type=int, default=32, help="--source self: samples per pair before the judge")
    parser.add_argument("--bare", action="store_true", help="half the pair captions without their background")
    parser.add_argument("--anchors", action="store_true", help="mix each member's own discovery photos into the step")
    parser.add_argument("--clip", action="store_true", help="--source self: also score candidates with the toy CLIP")
    parser.add_argument("--n-select", type=int, default=48)
    parser.add_argument("--n-report", type=int, default=0, help="also judge the report seeds (0: not)")
    parser.add_argument("--cache", default=None, help="pickle of the subjects' own masks (made if missing)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--save", default=None, help="pickle the combination masks here ({variant index}-suffixed)")
    parser.add_argument("--load", default=None, help="judge combination masks pickled by --save instead of learning them")
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
    for index, variant in enumerate(json.loads(args.variants)):
        cparams = CombinationParams(**variant)
        t0 = time.perf_counter()
        if args.load:
            combined, info = pickle.loads(Path(args.load).read_bytes())
        else:
            combined, info = ({}, {}) if args.source == "none" else combine_all(
                model, subjects, masks, args.source, cparams, params, n_images=args.images, candidates=args.candidates,
                scorer=scorer, anchors=args.anchors, bare=args.bare)
        if args.save:
            Path(f"{args.save}.{index}").write_bytes(pickle.dumps((combined, info)))
        row = {"source": args.source, "loaded": args.load, "combination": cparams.model_dump() if args.source != "none" else None,
               "discovery": json.loads(args.discovery), "scene_references": args.scene_references, "images": args.images, "anchors": args.anchors, "bare": args.bare,
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
