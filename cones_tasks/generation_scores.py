"""Scores of generated images (the `score-generations` flow), as plain functions.

- image alignment: mean cosine similarity of a generation's CLIP embedding to the embeddings
  of one subject's reference images (Cones §4, "image alignment", as in DreamBooth/Custom
  Diffusion);
- text alignment: cosine similarity to the prompt's CLIP embedding;
- presence (toy world only, cones_tasks.toyworld.presence): 1.0 if the rule-based judge finds an
  object with exactly the subject's shape, colour and pattern, else 0.0;
- all present (toy world only): 1.0 if every subject of the generation is present. What a
  combination is for: an image with one of two subjects is an image of something else, and the
  mean of per-subject presence hides that (docs/composition.md).

Embeddings come L2-normalised from the scorer (`.embed_images` / `.embed_texts`), so cosine
similarity is a dot product.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

IMAGE_ALIGNMENT = "image_alignment"
TEXT_ALIGNMENT = "text_alignment"
PRESENCE = "presence"
ALL_PRESENT = "all_present"


def image_alignment(generated: np.ndarray, references: np.ndarray) -> np.ndarray:
    """`[N, D]` generated × `[M, D]` one subject's references (both normalised) → `[N]` mean cosine."""
    if references.shape[0] == 0:
        raise ValueError("image alignment needs at least one reference embedding for the subject")
    return (np.asarray(generated, np.float64) @ np.asarray(references, np.float64).T).mean(axis=1)


def text_alignment(generated: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """Row-wise cosine `[N, D]` · `[N, D]` → `[N]`: image i against its own prompt i."""
    return np.einsum("nd,nd->n", np.asarray(generated, np.float64), np.asarray(texts, np.float64))


def all_present(presence: Mapping[str, float]) -> float:
    """One image's presence (subject id → 1.0 or 0.0; cones_tasks.toyworld.presence) → 1.0 if every subject in it was seen."""
    return float(all(v == 1.0 for v in presence.values()))


@dataclass(frozen=True)
class CombinationScores:
    """One subject combination and prompt over all its seeds."""

    subjects: tuple[str, ...]
    prompt: str
    generations: tuple[tuple[int, str, str], ...]  # (seed, generation id, image uri), by seed; () when not looked up
    scores: dict[str, float]  # metric → mean over seeds (and over subjects for per-subject metrics)
    seeds: int = 0  # images generated for it (len(generations) when they were looked up)

    @property
    def key(self) -> str:
        return f"{'+'.join(self.subjects)}|{self.prompt}"


def combination_scores(rows: Sequence, scores: Mapping[str, Mapping[str, float]]) -> list[CombinationScores]:
    """Group generations (anything with .id .subjects .prompt .seed .image_uri) by (subjects, prompt), best first.

    `scores`: generation id → metric → value. Ranked by presence (toy world), then image alignment.
    """
    groups: dict[tuple[tuple[str, ...], str], list] = {}
    for row in rows:
        groups.setdefault((tuple(row.subjects), row.prompt), []).append(row)
    out = []
    for (subjects, prompt), members in groups.items():
        members.sort(key=lambda r: r.seed)
        per_seed = [scores.get(r.id, {}) for r in members]
        metrics = sorted({m for s in per_seed for m in s})
        out.append(
            CombinationScores(
                subjects=subjects,
                prompt=prompt,
                generations=tuple((int(r.seed), r.id, r.image_uri) for r in members),
                scores={m: float(np.mean([s[m] for s in per_seed if m in s])) for m in metrics},
                seeds=len(members),
            )
        )
    return _ranked(out)


def aggregated_combinations(rows: Sequence[Mapping]) -> list[CombinationScores]:
    """Combinations aggregated by the catalog (catalog.pipeline.grid_combination_ranges rows: subjects, prompt,
    seeds, metrics as [{metric, value}]), unranked; no generations looked up."""
    return [
        CombinationScores(
            subjects=tuple(r["subjects"]), prompt=r["prompt"], generations=(), seeds=int(r["seeds"]),
            scores={m["metric"]: float(m["value"]) for m in r["metrics"]},
        )
        for r in rows
    ]


def best_combinations(combinations: Iterable[CombinationScores], top: int | None) -> list[CombinationScores]:
    """The best `top` (all when None), ranked as `combination_scores` ranks; holds only `top` at a time."""
    if top is None:
        return _ranked(list(combinations))
    return heapq.nsmallest(top, combinations, key=_rank_key)


def _rank_key(c: CombinationScores) -> tuple:
    return (-c.scores.get(PRESENCE, 0.0), -c.scores.get(IMAGE_ALIGNMENT, 0.0), c.subjects, c.prompt)


def _ranked(combinations: list[CombinationScores]) -> list[CombinationScores]:
    """Ranked by presence (toy world), then image alignment; ties by subjects and prompt."""
    combinations.sort(key=_rank_key)
    return combinations


def leaderboard_rows(combinations: Sequence[CombinationScores]) -> list[dict[str, object]]:
    """Flat rows for a table: subjects, prompt, seeds, then one column per metric."""
    return [
        {"subjects": " + ".join(c.subjects), "prompt": c.prompt, "seeds": c.seeds, **{m: round(v, 4) for m, v in c.scores.items()}}
        for c in combinations
    ]
