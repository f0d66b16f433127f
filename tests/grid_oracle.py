"""The generation grid enumerated one item at a time, in plain Python: the reference the vectorised
planner (catalog.planning: cones_tasks.subsets × grid_items) is checked against, and a source of
example combinations for the report tests. Not product code: nothing outside tests/ uses it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from cones_tasks.combinations import SLOT, check_template, subjects_phrase


@dataclass(frozen=True)
class Combination:
    subjects: tuple[str, ...]  # sorted subject ids
    template: str
    prompt: str
    seed: int


def enumerate_combinations(
    class_words: Mapping[str, str], *, max_k: int, templates: Sequence[str], seeds: Sequence[int]
) -> Iterator[Combination]:
    """Every k-subset (1 ≤ k ≤ max_k) of the subjects × template × seed: by k, then subsets in sorted-id order,
    then template, then seed (`class_words`: subject id → class word)."""
    ids = sorted(class_words)
    for k in range(1, min(max_k, len(ids)) + 1):
        for subset in itertools.combinations(ids, k):
            phrase = subjects_phrase([class_words[s] for s in subset])
            for template in templates:
                prompt = check_template(template).format(**{SLOT: phrase})
                for seed in seeds:
                    yield Combination(subjects=subset, template=template, prompt=prompt, seed=int(seed))
