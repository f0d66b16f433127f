"""The generation grid: every k-subset of subjects × prompt templates × seeds (docs/pipeline.md).

Cones §3.3: shutting the union of several subjects' concept neurons makes a prompt that names
their *class words* generate them together, so a template's `{subjects}` slot is filled with
class phrases ("a dog and a cat"), never with rare tokens. Phrases are joined with " and ",
the way the toy world's multi-object captions are (cones_tasks/toyworld/captions.py).

Enumeration is lazy and deterministic, so 10,000+ combinations cost no memory up front and
a rerun sees the same order (the catalog decides what is still missing). `grid_items` builds
the same items column-wise from a chunk of subsets (cones_tasks.subsets), for grids of millions
(docs/scale.md).
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cones_tasks.subsets import Subsets

SLOT = "subjects"
T = TypeVar("T")


class TemplateError(ValueError):
    """A prompt template without exactly one `{subjects}` slot, or with another field."""


@dataclass(frozen=True)
class Combination:
    subjects: tuple[str, ...]  # sorted subject ids
    template: str
    prompt: str
    seed: int


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


def enumerate_combinations(
    class_words: Mapping[str, str],
    *,
    max_k: int,
    templates: Sequence[str],
    seeds: Sequence[int],
    min_k: int = 1,
) -> Iterator[Combination]:
    """Yield every k-subset (min_k ≤ k ≤ max_k) of the subjects × template × seed, in a stable order.

    `class_words` maps subject id → class word. Order: by k, then subsets in sorted-id order,
    then template, then seed.
    """
    if not class_words:
        raise ValueError("no subjects to combine; ingest and discover at least one subject first")
    if not 1 <= min_k <= max_k:
        raise ValueError(f"need 1 ≤ min_k ≤ max_k, got min_k={min_k}, max_k={max_k}")
    if not seeds:
        raise ValueError("no seeds given; pass at least one seed")
    for template in templates:
        check_template(template)
    ids = sorted(class_words)
    for k in range(min_k, min(max_k, len(ids)) + 1):
        for subset in itertools.combinations(ids, k):
            phrase = subjects_phrase([class_words[s] for s in subset])
            for template in templates:
                prompt = template.format(**{SLOT: phrase})
                for seed in seeds:
                    yield Combination(subjects=subset, template=template, prompt=prompt, seed=int(seed))


def count_combinations(n_subjects: int, *, max_k: int, n_templates: int, n_seeds: int, min_k: int = 1) -> int:
    """Closed form of `len(list(enumerate_combinations(...)))`: Σ_k C(n, k) × templates × seeds."""
    subsets = sum(math.comb(n_subjects, k) for k in range(min_k, min(max_k, n_subjects) + 1))
    return subsets * n_templates * n_seeds


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


def _template_parts(template: str) -> tuple[str, str]:
    """(text before, text after) the `{subjects}` slot, with `{{`/`}}` already unescaped."""
    marker = "\x00subjects\x00"
    before, after = check_template(template).format(**{SLOT: marker}).split(marker)
    return before, after


def grid_items(
    subsets: Subsets,
    *,
    ids: Sequence[str],
    class_words: Sequence[str],
    mask_ids: Sequence[str],
    templates: Sequence[str],
    seeds: Sequence[int],
) -> pa.Table:
    """One row per subset × template × seed (that order), built column-wise for millions of rows.

    `ids` sorted, `class_words[i]` and `mask_ids[i]` those of subject `ids[i]`; `subsets` index
    into them. Columns: subjects, class_words, mask_ids (lists, sorted-id order), prompt, seed.
    Prompts equal `enumerate_combinations`' (" and "-joined class phrases in the slot).
    """
    m, t, s = len(subsets), len(templates), len(seeds)
    offsets = pa.array(subsets.offsets.astype(np.int32))
    take = pa.array(subsets.values)

    def lists(per_subject: Sequence[str]) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, pa.array(list(per_subject), pa.string()).take(take))

    subjects, words, masks = lists(ids), lists(class_words), lists(mask_ids)
    phrase = pc.binary_join(lists([class_phrase(w) for w in class_words]), " and ")
    prompts = pa.concat_arrays(
        [pc.binary_join_element_wise(before, phrase, after, "") for before, after in map(_template_parts, templates)]
    )
    per_subset = np.repeat(np.arange(m, dtype=np.int64), t * s)  # item → its subset
    per_template = np.tile(np.repeat(np.arange(t, dtype=np.int64), s), m)  # item → its template
    rows = pa.array(per_subset)
    return pa.table(
        {
            "subjects": subjects.take(rows),
            "class_words": words.take(rows),
            "mask_ids": masks.take(rows),
            "prompt": prompts.take(pa.array(per_template * m + per_subset)),
            "seed": pa.array(np.tile(np.asarray(seeds, dtype=np.int64), m * t)),
        }
    )
