"""Prompts and batches of the generation grid (docs/pipeline.md).

Cones §3.3: shutting the union of several subjects' concept neurons makes a prompt that names
their *class words* generate them together, so a template's `{subjects}` slot is filled with
class phrases ("a dog and a cat"), never with rare tokens. Phrases are joined with " and ",
the way the toy world's multi-object captions are (cones_tasks/toyworld/captions.py).

The grid's subsets are cones_tasks.subsets; its items, built column-wise for grids of millions
and planned against the catalog, are catalog.planning (docs/scale.md).
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

SLOT = "subjects"
T = TypeVar("T")


class TemplateError(ValueError):
    """A prompt template without exactly one `{subjects}` slot, or with another field."""


def check_template(template: str) -> str:
    """Return `template` if it has exactly one `{subjects}` field and no other; else raise TemplateError."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise TemplateError(f"prompt template {template!r} is not a valid format string: {exc}") from exc
    if fields != [SLOT]:
        raise TemplateError(
            f"prompt template {template!r} must contain exactly one {{{SLOT}}} slot and no other "
            f"{{…}} field (found {fields}); e.g. '{{{SLOT}}} on snow'"
        )
    return template


def class_phrase(class_word: str) -> str:
    article = "an" if class_word[:1].lower() in "aeiou" else "a"
    return f"{article} {class_word}"


def subjects_phrase(class_words: Sequence[str]) -> str:
    """`["dog", "cat"]` → "a dog and a cat"."""
    return " and ".join(class_phrase(word) for word in class_words)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter): one fan-out task per list."""
    if size < 1:
        raise ValueError(f"batch size must be ≥ 1, got {size}")
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def batched_by_position(items: Iterable[T], positions: Iterable[int], size: int) -> Iterator[list[T]]:
    """Items grouped by `position // size`, in order of position; one fan-out task per group.

    Unlike `batched`, a group's members do not depend on which other items are in `items`:
    a commit is named by the keys of its rows (docs/catalog.md), so two overlapping runs, or a
    rerun after a crash, that score the same slice of one grid write the same file, not two
    overlapping ones.
    """
    if size < 1:
        raise ValueError(f"batch size must be ≥ 1, got {size}")
    placed = sorted(zip(positions, items, strict=True), key=lambda pair: pair[0])
    for _, group in itertools.groupby(placed, key=lambda pair: pair[0] // size):
        yield [item for _, item in group]
