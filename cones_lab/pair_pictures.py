"""Pictures of a pair of toy subjects for the combination step (cones_tasks.neurons.combination; docs/research/pairs.md).

Each source returns (uint8 images [n, H, W, 3], captions naming both subjects by class word, and per image the
pair indices in the order its caption names them), or fewer images when a source accepts fewer:

- together: the toy renderer draws both subjects in one frame: a user's photos of the two together;
- composite: from each subject's captioned scene photos, the subject's half (its side is where its caption
  names it: scene captions name left to right), the two halves side by side on one background; with no scene
  photos, the subjects' photos alone, shrunk side by side (composed.compose_side_by_side);
- self: the pair prompt sampled with both subjects' own masks (token composition), the images an acceptance
  test passes (here the toy judge: both subjects and the asked background).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from cones_tasks.combinations import subjects_phrase
from cones_tasks.neurons.composed import compose_side_by_side
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.neurons.word_scope import WordMask
from cones_tasks.sampling import sample
from cones_tasks.toyworld.subjects import pair_order, pair_scenes, reference_renders, scene_references
from cones_tasks.toyworld.world import BACKGROUNDS

__all__ = ["PairSource", "composite", "judge_accepts", "rendered_pictures", "self_generated", "together"]

PairSource = Literal["together", "composite", "self"]
Pictures = tuple[np.ndarray, list[str], list[tuple[int, int]]]


def rendered_pictures(source: PairSource, pair: Sequence, n: int, *, scene_photos: int, reference_images: int,
                      seed: int = 0) -> Pictures:
    """The pictures of the sources made without the model: 'together' or 'composite' (self_generated samples)."""
    if source == "together":
        return together(pair, n, seed=seed)
    if source == "composite":
        return composite(pair, n, scene_photos=scene_photos, reference_images=reference_images, seed=seed)
    raise ValueError(f"{source!r} pictures are not rendered: 'self' samples the pair (self_generated); "
                     "rendered sources are 'together' and 'composite'")


def judge_accepts(judge: Callable[[np.ndarray], object]) -> Callable[[np.ndarray, tuple, str], bool]:
    """self_generated's acceptance test from the toy judge: every subject drawn, and the asked background."""

    def accept(image: np.ndarray, shown: tuple, background: str) -> bool:
        verdict = judge(image)
        return all(verdict.shows(s) for s in shown) and verdict.background == background

    return accept


def together(pair: Sequence, n: int, *, seed: int = 0) -> Pictures:
    return pair_scenes(pair[0], pair[1], n=n, seed=seed)


def composite(pair: Sequence, n: int, *, scene_photos: int, reference_images: int, seed: int = 0) -> Pictures:
    """Each subject's half of its own scene photos, side by side on one background, both orders."""
    if scene_photos == 0:
        return _composite_alone(pair, n, reference_images=reference_images, seed=seed)
    halves: dict[tuple[int, str], list[np.ndarray]] = {}
    for j, s in enumerate(pair):
        photos, captions = scene_references(s, n=scene_photos, seed=seed)
        for photo, caption in zip(photos, captions):
            # the subject is the only object of its class in its scene photos, named left to right
            left = caption.startswith(f"a {s.shape} and")
            half = photo.shape[1] // 2
            background = caption.rsplit(" on ", 1)[1]
            halves.setdefault((j, background), []).append(photo[:, :half] if left else photo[:, half:])
    images, captions, named = [], [], []
    for i in range(n):
        background = list(BACKGROUNDS)[i % len(BACKGROUNDS)]
        order = pair_order(i)
        parts = [halves[(j, background)][(i // 4) % len(halves[(j, background)])] for j in order]
        images.append(np.concatenate(parts, axis=1))
        captions.append(f"{subjects_phrase([pair[j].shape for j in order])} on {background}")
        named.append(order)
    return np.stack(images), captions, named


def _composite_alone(pair: Sequence, n: int, *, reference_images: int, seed: int) -> Pictures:
    """No scene photos: the subjects' photos alone, shrunk side by side (composed.compose_side_by_side)."""
    refs = [reference_renders(s, n=reference_images, seed=seed) for s in pair]
    backgrounds = [list(BACKGROUNDS)[i % len(BACKGROUNDS)] for i in range(reference_images)]
    images, captions, named = [], [], []
    for i in range(n):
        k = (i // 2) % reference_images  # reference k of both subjects is on the same background
        order = (0, 1) if i % 2 == 0 else (1, 0)
        images.append(compose_side_by_side(refs[order[0]][k], refs[order[1]][k]))
        captions.append(f"{subjects_phrase([pair[j].shape for j in order])} on {backgrounds[k]}")
        named.append(order)
    return np.stack(images), captions, named


def self_generated(pair: Sequence, n: int, *, model, masks: dict, accept: Callable[[np.ndarray, tuple, str], bool],
                   candidates: int, seeds: Sequence[int], steps: int, guidance_scale: float
                   ) -> tuple[Pictures, np.ndarray, np.ndarray]:
    """The pair prompt sampled with both subjects' own masks on `seeds`; the first n images `accept` passes.

    accept(image, subjects in caption order, background) -> bool. Returns the pictures, every candidate image
    and which were accepted (for measuring how a scorer ranks them)."""
    prompts, named = [], []
    for i in range(candidates):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        background = list(BACKGROUNDS)[(i // 2) % len(BACKGROUNDS)]
        prompts.append(f"{subjects_phrase([pair[j].shape for j in order])} on {background}")
        named.append(order)
    words = [[WordMask(masks[pair[j].id], pair[j].shape) for j in order] for order in named]
    images = sample(model, prompts, seeds=list(seeds)[:candidates], steps=steps, guidance_scale=guidance_scale,
                    word_masks=words, space=NeuronSpace.from_unet(model.unet, attention="cross"))
    hits = np.array([accept(im, tuple(pair[j] for j in o), p.rsplit(" on ", 1)[1]) for im, o, p in zip(images, named, prompts)])
    keep = np.flatnonzero(hits)[:n]
    return (images[keep], [prompts[i] for i in keep], [named[i] for i in keep]), images, hits
