"""Masks are found once and reused: by today's identity, and in catalogs written before it (docs/discovery.md,
"A mask's identity"). tests/fixtures/legacy-catalog was written by the code of that time
(tests/fixtures/make_legacy_catalog.py); its masks must keep resolving, under their old ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from catalog import load_catalog
from cones_tasks.config import FitObjective, IngestParams, ModelRef, PromptScoreObjective, SubjectSource
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, write_subject_folders
from flows.discover_concepts import discover_subject
from flows.generate_combinations import resolve_masks
from flows.ingest_subjects import ingest_subject

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LEGACY = json.loads((FIXTURES / "legacy-catalog.json").read_text())
# the model the fixture was written on: the two-object toy model, shipped until 2026-12-03 and kept for the record
MODEL = ModelRef(path=str(Path(__file__).resolve().parents[2] / "checkpoints" / "toy-model-8750"))
SUBJECTS = tuple(dict.fromkeys(m["subject"] for m in LEGACY["masks"]))
# The fixture's two settings as today's objectives: the same search (the unset fields were the defaults then,
# and are the same values here, but for discovery's layout, which came later: off is the search of that time),
# each objective with only its own keys.
TODAY = {
    "fit": FitObjective(steps=2, rounds=1, batch_size=2, layout=None),
    "paper": PromptScoreObjective(steps=2, rounds=2, batch_size=2, threshold_value=0.01, eval_draws=1),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Discovery on one intra-op thread (tests/conftest.py)."""


@pytest.fixture()
def legacy_uri(tmp_path) -> str:
    """A copy of the committed catalog (the fixture itself is never written)."""
    return str(shutil.copytree(FIXTURES / "legacy-catalog", tmp_path / "catalog"))


def _legacy_ids(setting: str) -> dict[str, str]:
    return {m["subject"]: m["mask_id"] for m in LEGACY["masks"] if m["settings"] == setting}


@pytest.mark.parametrize("setting", sorted(TODAY))
def test_masks_of_a_catalog_written_before_today_resolve_under_their_old_ids(legacy_uri, setting):
    params = TODAY[setting]
    resolved = resolve_masks.fn(legacy_uri, MODEL, SUBJECTS, params, LEGACY["seed"])
    assert resolved.mask_ids == _legacy_ids(setting)
    found = [discover_subject.fn(legacy_uri, MODEL, s, params, LEGACY["seed"]) for s in SUBJECTS]
    assert [(f.mask_id, f.skipped) for f in found] == [(_legacy_ids(setting)[s], True) for s in SUBJECTS]
    if isinstance(params, PromptScoreObjective):  # eval_draws never named the neurons: another value finds the same mask
        other = params.model_copy(update={"eval_draws": 7})
        assert resolve_masks.fn(legacy_uri, MODEL, SUBJECTS, other, LEGACY["seed"]).mask_ids == _legacy_ids(setting)
    # another search (one more step) is not one of them
    with pytest.raises(LookupError, match="no concept mask"):
        resolve_masks.fn(legacy_uri, MODEL, SUBJECTS, params.model_copy(update={"steps": 3}), LEGACY["seed"])
    assert load_catalog(legacy_uri).read_table("concept_masks").num_rows == len(LEGACY["masks"])  # nothing rediscovered


def test_todays_code_finds_the_same_neurons_and_reuses_them_whatever_eval_draws_says(tmp_path):
    """A fresh catalog of the fixture's photos: discovery finds the legacy masks' very neurons under today's ids; a
    rerun with only eval_draws changed discovers nothing (0 of 2 rediscovered)."""
    folders = write_subject_folders(tmp_path / "subjects", [s for s in TOY_SUBJECTS if s.id in SUBJECTS], n=2)
    uri = str(tmp_path / "catalog")
    for s in TOY_SUBJECTS:
        if s.id in SUBJECTS:
            ingest_subject.fn(uri, SubjectSource(subject_id=s.id, class_word=s.class_word, uri=str(folders[s.id])),
                              IngestParams(min_side=16))
    params = TODAY["paper"]
    first = [discover_subject.fn(uri, MODEL, s, params, LEGACY["seed"]) for s in SUBJECTS]
    assert not any(f.skipped for f in first)
    legacy = load_catalog(str(FIXTURES / "legacy-catalog"))
    catalog = load_catalog(uri)
    for f in first:
        assert f.mask_id != _legacy_ids("paper")[f.subject]  # today's identity, a new id …
        np.testing.assert_array_equal(  # … for the same neurons
            catalog.get_mask(f.mask_id).indices, legacy.get_mask(_legacy_ids("paper")[f.subject]).indices
        )
    again = [discover_subject.fn(uri, MODEL, s, params.model_copy(update={"eval_draws": 3}), LEGACY["seed"]) for s in SUBJECTS]
    assert [(a.mask_id, a.skipped) for a in again] == [(f.mask_id, True) for f in first]
    assert sum(not a.skipped for a in again) == 0
    assert catalog.read_table("concept_masks").num_rows == len(SUBJECTS)
