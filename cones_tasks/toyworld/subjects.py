"""The named toy subjects: what a user would hand over — a few photos of one thing.

A subject is one shape × colour × pattern instance; its class word is the shape. Reference
renders vary position, size and background, as a user's photos vary the scene.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from cones_tasks.toyworld.captions import class_prompt, describe
from cones_tasks.toyworld.render import RESOLUTION, place_objects, random_attributes, render
from cones_tasks.toyworld.world import BACKGROUNDS, ObjectSpec, Scene


@dataclass(frozen=True)
class ToySubject:
    shape: str
    color: str
    pattern: str

    @property
    def id(self) -> str:
        return f"{self.pattern}-{self.color}-{self.shape}"

    @property
    def class_word(self) -> str:
        return self.shape

    @classmethod
    def parse(cls, subject_id: str) -> "ToySubject":
        try:
            pattern, color, shape = subject_id.split("-")
            ObjectSpec(shape, color, pattern, 0, 0, 1)  # validates the three names
        except ValueError as e:
            raise ValueError(f"{subject_id!r} is not a toy subject id ('<pattern>-<colour>-<shape>', e.g. 'striped-yellow-triangle'): {e}") from None
        return cls(shape, color, pattern)


# Distinct shapes and colours, all three patterns: unions of up to four can be told apart.
TOY_SUBJECTS: tuple[ToySubject, ...] = (
    ToySubject("triangle", "yellow", "striped"),
    ToySubject("circle", "blue", "dotted"),
    ToySubject("square", "red", "striped"),
    ToySubject("circle", "green", "plain"),
    ToySubject("square", "yellow", "dotted"),
    ToySubject("triangle", "red", "plain"),
)


def reference_backgrounds(n: int) -> list[str]:
    """The background of each of `n` reference renders: they alternate, so every subject is seen on each."""
    backgrounds = list(BACKGROUNDS)
    return [backgrounds[i % len(backgrounds)] for i in range(n)]


def context_prompts(subject: ToySubject, n: int) -> list[str]:
    """One prompt per reference render, naming its background ("a triangle on snow"): discovery
    conditioned this way leaves the background to the words, not to the mask (docs/research/validate-runs.md)."""
    return [f"{class_prompt(subject.shape)} on {background}" for background in reference_backgrounds(n)]


def reference_renders(subject: ToySubject, *, n: int = 6, seed: int = 0) -> np.ndarray:
    """uint8 [n, H, W, 3]: the subject alone, varied position and size, on reference_backgrounds(n)."""
    rng = np.random.default_rng([seed, *map(ord, subject.id)])
    images = []
    for background in reference_backgrounds(n):
        objects = place_objects(rng, [(subject.shape, subject.color, subject.pattern)])
        images.append(render(Scene(background, objects)))
    return np.stack(images)


def scene_references(
    subject: ToySubject, *, n: int = 12, seed: int = 0, others: Literal["class", "described"] = "class",
    objects: Sequence[int] = (2,),
) -> tuple[np.ndarray, list[str]]:
    """uint8 [n, H, W, 3] and captions: the subject beside another object (scene_photos without the boxes)."""
    images, captions, _ = scene_photos(subject, n=n, seed=seed, others=others, objects=objects)
    return images, captions


def scene_photos(
    subject: ToySubject, *, n: int = 12, seed: int = 0, others: Literal["class", "described"] = "class",
    objects: Sequence[int] = (2,),
) -> tuple[np.ndarray, list[str], list[tuple[float, float, float, float]]]:
    """uint8 [n, H, W, 3], captions and the subject's box in each: the subject beside another object, left and right in turn.

    What a user with photos of their subject among other things would hand over, captioned: the
    subject by its class phrase ("a triangle") and the other object, named left to right, on
    alternating backgrounds. The other object is always of another class, so the subject is the
    first mention of its class word.

    `others`: how the caption names the other object. "class" ("a triangle and a square on snow"),
    the way a combination's prompt names its subjects, so discovery sees the edit beside a word
    that does not fix the other object's look and learns to leave that object alone;
    "described" ("... and a dotted red square ..."), where the words fix it. Class words drew
    both subjects of a pair far more often (docs/research/composition.md, "Scene captions").

    `objects`: how many objects each photo holds, cycled photo by photo (2 to 4; three and four are crowds,
    render.CROWD_RADIUS). The subject takes each place of a photo's caption in turn, so a combination's later
    words ("... and a circle" third of four) are places discovery has seen its subject named.

    The box is the cell the renderer placed the subject in (its half of a pair's frame, its quadrant of a
    crowd's): the region a layout gives a subject at generation (cones_tasks.neurons.layout), as a user
    would mark it on a photo.
    """
    check_scene_objects(objects)
    rng = np.random.default_rng([seed, 7, *map(ord, subject.id)])
    me = (subject.shape, subject.color, subject.pattern)
    images, captions, boxes = [], [], []
    for i, background in enumerate(reference_backgrounds(n)):
        count, turn = objects[i % len(objects)], i // len(objects)
        attrs = [_other_than(rng, subject.shape) for _ in range(count - 1)]
        attrs.insert(turn % count, me)
        placed = place_objects(rng, attrs, order="left-to-right")
        phrases = [f"a {o.shape}" if (o.shape, o.color, o.pattern) == me or others == "class" else describe(o) for o in placed]
        images.append(render(Scene(background, placed)))
        captions.append(f"{' and '.join(phrases)} on {background}")
        boxes.append(_cell_of(next(o for o in placed if (o.shape, o.color, o.pattern) == me), count))
    return np.stack(images), captions, boxes


def _cell_of(obj: ObjectSpec, count: int) -> tuple[float, float, float, float]:
    """The cell of the frame place_objects put `obj` in: halves side by side for two objects, quadrants for more."""
    col = int(obj.cx >= RESOLUTION / 2)
    if count == 2:
        return (col / 2, 0.0, (col + 1) / 2, 1.0)
    row = int(obj.cy >= RESOLUTION / 2)
    return (col / 2, row / 2, (col + 1) / 2, (row + 1) / 2)


def check_scene_objects(objects: Sequence[int]) -> None:
    """Raise ValueError unless `objects` is a non-empty list of scene-photo object counts, each 2 to 4."""
    if not objects or any(not 2 <= m <= 4 for m in objects):
        raise ValueError(f"scene photos hold 2 to 4 objects each (the subject and 1-3 others); got objects={list(objects)}")


def _other_than(rng: np.random.Generator, shape: str) -> tuple[str, str, str]:
    """Random attributes of an object of another class: the subject stays the first mention of its class word."""
    other = random_attributes(rng)
    while other[0] == shape:
        other = random_attributes(rng)
    return other


def pair_order(i: int) -> tuple[int, int]:
    """Who is named first in the i-th picture of a pair: the two backgrounds alternate photo by photo and the
    order every second photo, so each background sees each subject on both sides."""
    return (0, 1) if (i // 2) % 2 == 0 else (1, 0)


def pair_scenes(
    first: ToySubject, second: ToySubject, *, n: int = 12, seed: int = 0
) -> tuple[np.ndarray, list[str], list[tuple[int, int]]]:
    """uint8 [n, H, W, 3], captions and who is named first: both subjects in one frame, left to right.

    What a user with photos of two subjects together would hand over, captioned by class words
    ("a triangle and a circle on snow", named left to right): `first` on the left in even photos,
    on the right in odd ones, on alternating backgrounds. The third return value gives, per photo,
    the indices (0: `first`, 1: `second`) in the order the caption names them.
    """
    rng = np.random.default_rng([seed, 11, *map(ord, first.id), *map(ord, second.id)])
    attrs = [(s.shape, s.color, s.pattern) for s in (first, second)]
    images, captions, named = [], [], []
    for i, background in enumerate(reference_backgrounds(2 * ((n + 1) // 2))[:n]):
        order = pair_order(i)
        objects = place_objects(rng, [attrs[j] for j in order], order="left-to-right")
        images.append(render(Scene(background, objects)))
        captions.append(f"{' and '.join(class_prompt(o.shape) for o in objects)} on {background}")
        named.append(order)
    return np.stack(images), captions, named


def write_subject_folders(
    root: str | Path, subjects=TOY_SUBJECTS, *, n: int = 6, seed: int = 0, scenes: int = 0
) -> dict[str, Path]:
    """One folder of PNGs per subject under `root`; returns {subject id: folder}.

    `scenes` > 0 adds that many scene photos (scene_photos) and their captions.json, each entry a caption
    and the subject's box, the way a user hands over photos of the subject among other things
    (docs/composition.md).
    """
    import json

    folders = {}
    for subject in subjects:
        folder = Path(root) / subject.id
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(reference_renders(subject, n=n, seed=seed)):
            Image.fromarray(image).save(folder / f"{i:02d}.png")
        if scenes:
            images, captions, boxes = scene_photos(subject, n=scenes, seed=seed)
            names = [f"scene-{i:02d}.png" for i in range(scenes)]
            for name, image in zip(names, images):
                Image.fromarray(image).save(folder / name)
            entries = {name: {"caption": c, "box": list(b)} for name, c, b in zip(names, captions, boxes)}
            (folder / "captions.json").write_text(json.dumps(entries, indent=1))
        folders[subject.id] = folder
    return folders
