"""Captioned scene photos: read from the subject folder, checked at ingest, stored, and handed to discovery as prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from catalog import load_catalog
from catalog.pipeline import subject_image_boxes, subject_image_captions, subject_image_uris
from cones_tasks.config import IngestParams, SubjectSource
from cones_tasks.ingest import CaptionError, SceneCaption, crop_box
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, write_subject_folders
from flows.ingest_subjects import ingest_subject


def test_scene_captions_are_stored_beside_their_photos(tmp_path):
    subject = TOY_SUBJECTS[0]
    folder = write_subject_folders(tmp_path / "subjects", [subject], n=3, scenes=4)[subject.id]
    source = SubjectSource(subject_id=subject.id, class_word=subject.class_word, uri=str(folder))
    result = ingest_subject.fn(str(tmp_path / "catalog"), source, IngestParams(min_side=16))
    assert result.accepted == 7 and result.captioned == 4 and result.rejected == []  # captions.json is no photo
    catalog = load_catalog(str(tmp_path / "catalog"))
    captions = subject_image_captions(catalog, subject.id)
    written = json.loads((folder / "captions.json").read_text())
    assert sorted(captions.values()) == sorted(e["caption"] for e in written.values())
    boxes = subject_image_boxes(catalog, subject.id)  # the subject's region in each scene photo, as written
    assert set(boxes) == set(captions) and sorted(boxes.values()) == sorted(tuple(e["box"]) for e in written.values())
    assert set(captions) < set(subject_image_uris(catalog, subject.id))  # the 3 photos alone have no caption
    again = ingest_subject.fn(str(tmp_path / "catalog"), source, IngestParams(min_side=16))
    assert again.already_stored == 7
    assert catalog.query("SELECT count(*) AS n FROM subject_captions").to_pylist() == [{"n": 4}]  # no duplicates
    assert catalog.query("SELECT count(*) AS n FROM subject_boxes").to_pylist() == [{"n": 4}]


@pytest.mark.parametrize(
    ("captions", "problem"),
    [
        ({"missing.png": "a triangle and a square"}, "'missing.png' is not an accepted photo"),
        ({"00.png": "a red square on snow"}, "does not name the class word 'triangle'"),
        ({"00.png": "a triangles parade"}, "does not name the class word 'triangle'"),
    ],
)
def test_a_bad_caption_refuses_the_subject_and_writes_nothing(tmp_path, captions, problem):
    subject = TOY_SUBJECTS[0]
    folder = write_subject_folders(tmp_path / "subjects", [subject], n=2)[subject.id]
    (folder / "captions.json").write_text(json.dumps(captions))
    source = SubjectSource(subject_id=subject.id, class_word=subject.class_word, uri=str(folder))
    with pytest.raises(CaptionError, match=problem) as info:
        ingest_subject.fn(str(tmp_path / "catalog"), source, IngestParams(min_side=16))
    assert "names the subject by its class word" in str(info.value)  # and the fix
    assert load_catalog(str(tmp_path / "catalog")).read_table("subject_images").num_rows == 0


def test_a_captions_file_that_is_not_an_object_of_strings_is_refused(tmp_path):
    from catalog.sources import CaptionsFileError, read_captions

    (tmp_path / "captions.json").write_text(json.dumps(["a triangle"]))
    with pytest.raises(CaptionsFileError, match="file name -> non-empty caption"):
        read_captions(str(tmp_path))
    (tmp_path / "captions.json").write_text("{not json")
    with pytest.raises(CaptionsFileError, match="not valid JSON"):
        read_captions(str(tmp_path))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "captions.json").write_text(json.dumps({"a.png": "  a   triangle  "}))
    assert read_captions(str(tmp_path)) == {"a.png": SceneCaption("a triangle")}  # whitespace normalised


@pytest.mark.parametrize("entry", [{"caption": "a triangle", "box": [0, 0, 1]}, {"caption": "a triangle", "box": "left"},
                                   {"caption": "a triangle", "where": [0, 0, 1, 1]}, {"box": [0, 0, 0.5, 1]}])
def test_a_captions_entry_that_is_neither_form_is_refused(tmp_path, entry):
    from catalog.sources import CaptionsFileError, read_captions

    (tmp_path / "captions.json").write_text(json.dumps({"a.png": entry}))
    with pytest.raises(CaptionsFileError, match=r"\{\"caption\": \.\.\., \"box\": \[x0, y0, x1, y1\]\}"):
        read_captions(str(tmp_path))


def test_a_box_outside_the_photo_refuses_the_subject_and_writes_nothing(tmp_path):
    subject = TOY_SUBJECTS[0]
    folder = write_subject_folders(tmp_path / "subjects", [subject], n=2)[subject.id]
    (folder / "captions.json").write_text(json.dumps({"00.png": {"caption": "a triangle and a square", "box": [0.6, 0, 0.4, 1]}}))
    source = SubjectSource(subject_id=subject.id, class_word=subject.class_word, uri=str(folder))
    with pytest.raises(CaptionError, match=r"the box of '00.png' \(0.6, 0.0, 0.4, 1.0\) is not inside the image: give"):
        ingest_subject.fn(str(tmp_path / "catalog"), source, IngestParams(min_side=16))
    assert load_catalog(str(tmp_path / "catalog")).read_table("subject_images").num_rows == 0


def test_a_box_follows_the_centre_crop_discovery_takes():
    assert crop_box((0.0, 0.0, 0.5, 1.0), 32, 32) == (0.0, 0.0, 0.5, 1.0)  # a square photo: as given
    # a 40 x 20 photo is cropped to its middle 20 x 20: its left half is the crop's left half
    assert crop_box((0.0, 0.0, 0.5, 1.0), 40, 20) == (0.0, 0.0, 0.5, 1.0)
    assert crop_box((0.25, 0.0, 0.5, 1.0), 40, 20) == (0.0, 0.0, 0.5, 1.0)
    assert crop_box((0.0, 0.0, 0.2, 1.0), 40, 20) is None  # all of it cropped away
