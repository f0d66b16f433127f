from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from cones_tasks import generation_scores as gs
from cones_tasks.toyworld.presence import toy_presence
from cones_tasks.toyworld.render import place_objects, render
from cones_tasks.toyworld.world import Scene


def _unit(rows):
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_alignment_is_mean_cosine_to_references_and_rowwise_to_prompts():
    generated = _unit([[1, 0], [0, 1]])
    references = _unit([[1, 0], [1, 1]])
    assert gs.image_alignment(generated, references) == pytest.approx([(1 + 2**-0.5) / 2, 2**-0.5 / 2])
    assert gs.text_alignment(generated, _unit([[1, 0], [1, 0]])) == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="reference"):
        gs.image_alignment(generated, np.zeros((0, 2)))


def test_toy_presence_reads_the_exact_subject_back():
    rng = np.random.default_rng(0)
    both = render(Scene("snow", place_objects(rng, [("triangle", "yellow", "striped"), ("circle", "blue", "dotted")])))
    one = render(Scene("night", place_objects(rng, [("triangle", "yellow", "plain")])))
    out = toy_presence(np.stack([both, one]), [["striped-yellow-triangle", "dotted-blue-circle"], ["striped-yellow-triangle"]])
    assert out == [{"striped-yellow-triangle": 1.0, "dotted-blue-circle": 1.0}, {"striped-yellow-triangle": 0.0}]
    assert [gs.all_present(p) for p in out] == [1.0, 0.0]


def test_all_present_needs_every_subject_not_most():
    assert gs.all_present({"a": 1.0, "b": 0.0}) == 0.0  # per-subject presence would say 0.5
    assert gs.all_present({"a": 1.0, "b": 1.0, "c": 1.0}) == 1.0


@dataclass
class _Row:
    id: str
    subjects: tuple[str, ...]
    prompt: str
    seed: int
    image_uri: str


def test_combinations_group_seeds_average_and_rank_by_presence_then_alignment():
    rows = [
        _Row("g1", ("a",), "a dog", 1, "u1"),
        _Row("g0", ("a",), "a dog", 0, "u0"),
        _Row("g2", ("a", "b"), "a dog and a cat", 0, "u2"),
        _Row("g3", ("b",), "a cat", 0, "u3"),
    ]
    scores = {
        "g0": {"presence": 1.0, "image_alignment": 0.2},
        "g1": {"presence": 0.0, "image_alignment": 0.4},
        "g2": {"presence": 1.0, "image_alignment": 0.1},
        "g3": {"presence": 0.5, "image_alignment": 0.9},
    }
    combos = gs.combination_scores(rows, scores)
    # a and b tie on presence (0.5); b's image alignment (0.9) beats a's mean (0.3)
    assert [c.key for c in combos] == ["a+b|a dog and a cat", "b|a cat", "a|a dog"]
    assert combos[2].generations == ((0, "g0", "u0"), (1, "g1", "u1"))
    assert combos[2].scores == pytest.approx({"presence": 0.5, "image_alignment": 0.3})
    table = gs.leaderboard_rows(combos)
    assert table[0] == {"subjects": "a + b", "prompt": "a dog and a cat", "seeds": 1, "image_alignment": 0.1, "presence": 1.0}
