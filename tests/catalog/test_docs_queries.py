"""Every example query in docs/catalog.md runs as written, under the SQL sandbox, and answers its question.

Run on a file:// and a memory:// catalog: the sandbox reads views through whichever filesystem the
catalog uses, so a query that works on one must work on the other.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
import pytest

from catalog import ClipScore, Generation, NewMask, SubjectImage, load_catalog

DOC = Path(__file__).resolve().parents[2] / "docs" / "catalog.md"
QUERIES = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)
# One-liners shown as shell commands (`cones sql "…"`) in the docs and the README; "SELECT ..." is a placeholder.
COMMAND_QUERIES = sorted(
    {
        q
        for doc in (DOC, DOC.parents[1] / "README.md")
        for q in re.findall(r'cones sql "([^"]+)"', doc.read_text())
        if "..." not in q and q != "<query>"
    }
)
LOW, HIGH = {"threshold": 0.1, "seed": 0}, {"threshold": 0.5, "seed": 0}


@pytest.fixture(scope="module", params=["file", "memory"])
def populated(request, space, tmp_path_factory):
    from cones_tasks.neurons.masks import ConceptMask

    if request.param == "file":
        cat = load_catalog(f"file://{tmp_path_factory.mktemp('docs')}/catalog")
    else:
        cat = load_catalog(f"memory://docs-{uuid.uuid4().hex}")
    cat.write_model(space, source="tiny-unet")
    for s, word in [("dog", "dog"), ("cat", "cat"), ("fox", "fox"), ("owl", "bird")]:
        cat.write_subject(s, class_word=word)
    for s, n in [("dog", 3), ("owl", 2)]:
        images = []
        for i in range(n):
            uri = cat.put_bytes(f"{s}-{i}".encode(), suffix=".png")
            images.append(SubjectImage(s, uri.rsplit("/", 1)[1].split(".")[0], uri, 16, 16))
        cat.write_subject_images(s, images)
    rng = np.random.default_rng(0)
    dog = np.flatnonzero(rng.random(space.size) < 0.05)
    cat_idx = np.union1d(dog[: len(dog) * 3 // 4], rng.choice(space.size, 20, replace=False))  # overlaps dog
    fox = np.flatnonzero(rng.random(space.size) < 0.05)
    mk = lambda idx: ConceptMask.from_indices(space, idx)  # noqa: E731
    ids = dict(zip(["dog", "cat", "fox"], cat.write_masks(
        [NewMask("dog", mk(dog), LOW), NewMask("cat", mk(cat_idx), LOW), NewMask("fox", mk(fox), LOW)]
    )))
    cat.write_mask(subject="dog", mask=mk(dog[: len(dog) // 3]), params=HIGH)
    gens, scores = [], []
    for combo, prompt in [(("cat", "dog", "fox"), "a dog, a cat and a fox"), (("cat", "dog"), "a dog and a cat"),
                          (("dog",), "a dog in the snow")]:
        for seed in range(4):
            made_with = {"composition": "token"} if len(combo) == 2 else {}  # the third kind predates strategies
            g = Generation(combo, prompt, seed, cat.put_bytes(f"{prompt}{seed}".encode(), suffix=".png"),
                           space.fingerprint, tuple(ids[s] for s in combo), params=made_with)
            gens.append(g)
            scores += [ClipScore(g.key(), "image_image", s, 0.5 + 0.1 * seed / len(combo), "toy-clip") for s in combo]
            scores.append(ClipScore(g.key(), "image_text", prompt, 0.2 + 0.05 * len(combo), "toy-clip"))
    cat.write_generations(gens)
    cat.write_clip_scores(scores)
    return cat, space


def test_doc_has_at_least_five_queries():
    assert len(QUERIES) >= 5
    assert len(COMMAND_QUERIES) >= 3, COMMAND_QUERIES


@pytest.mark.parametrize("sql", QUERIES, ids=[f"q{i}" for i in range(len(QUERIES))])
def test_each_doc_query_runs_and_returns_rows(populated, sql):
    cat, _ = populated
    assert cat.query(sql).num_rows > 0


@pytest.mark.parametrize("sql", COMMAND_QUERIES)
def test_each_command_line_query_runs(populated, sql):
    cat, _ = populated
    assert cat.query(sql).num_rows > 0


def test_doc_queries_answer_their_questions(populated):
    cat, space = populated
    overlap, combos, layers, storage, params, missing, prompts, compositions = (cat.query(q).to_pylist() for q in QUERIES)
    assert (overlap[0]["subject_a"], overlap[0]["subject_b"]) == ("cat", "dog")
    assert combos == [{"combination": ["cat", "dog", "fox"], "mean_score": pytest.approx(0.55), "images": 4}]
    assert len(layers) == 4 * len(space.entries)
    assert sum(r["neurons"] for r in layers if r["subject"] == "fox") == cat.get_mask(
        next(r["mask_id"] for r in cat.query("SELECT mask_id FROM concept_masks WHERE subject = 'fox'").to_pylist())
    ).neuron_count
    assert all(r["bytes"] < r["dense_fp32_bytes"] / 10 for r in storage)
    assert '"threshold":0.1' in params[0]["params"] and params[0]["masks"] == 3
    assert missing == [{"id": "owl", "class_word": "bird", "images": 2}]
    assert prompts[0]["prompt"] == "a dog in the snow"
    assert compositions == [{"composition": "token", "k": 2, "images": 4},
                            {"composition": "union", "k": 1, "images": 4}, {"composition": "union", "k": 3, "images": 4}]
