"""The s3:// backend in the fast suite: one pass over every table on moto's local S3 server (the whole contract
suite runs on s3:// in the slow set, tests/catalog/test_contract.py). The same code path as a user's bucket:
load_catalog("s3://…", endpoint options), s3fs underneath, DuckDB reading the Parquet through fsspec."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from catalog import ClipScore, Generation, NewMask, SubjectImage, load_catalog
from catalog.compact import compact

PARAMS = {"threshold": 0.5, "steps": 10, "seed": 0}


@pytest.fixture
def s3_uri(moto_endpoint, s3_options):
    import s3fs

    bucket = f"cones-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**s3_options).mkdir(bucket)
    return f"s3://{bucket}/catalog"


def test_every_table_round_trips_through_s3_and_reopens(s3_uri, s3_options, space, make_mask):
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    catalog = load_catalog(s3_uri, **s3_options)
    catalog.write_model(space, source="tiny-unet")
    for subject in ("dog", "cat"):
        catalog.write_subject(subject, class_word="animal")
    photo = catalog.put_bytes(b"\x89PNG a reference photo", suffix=".png")
    catalog.write_subject_images("dog", [SubjectImage("dog", "h-dog", photo, 8, 8)])
    a, b = make_mask(1), make_mask(2)
    ids = catalog.write_masks([NewMask("dog", a, PARAMS), NewMask("cat", b, PARAMS)])
    image = catalog.put_bytes(b"\x89PNG a generated image", suffix=".png")
    gen_ids = catalog.write_generations([Generation(("dog", "cat"), "a dog and a cat", 0, image, space.fingerprint, tuple(ids))])
    catalog.write_clip_scores([ClipScore(gen_ids[0], "presence", s, 1.0, "toy-judge") for s in ("dog", "cat")])

    # The same rows through a second handle on the bucket, as another process would open it.
    again = load_catalog(s3_uri, **s3_options)
    assert again.get_bytes(image) == b"\x89PNG a generated image" and again.get_bytes(photo).endswith(b"reference photo")
    stored = {m.subject: m for m in again.get_masks(ids)}
    assert np.array_equal(stored["dog"].indices, a.indices) and np.array_equal(stored["cat"].indices, b.indices)
    expected = len(np.intersect1d(a.indices, b.indices)) / len(np.union1d(a.indices, b.indices))
    assert again.jaccard_matrix(ids)[0, 1] == pytest.approx(expected)
    row = again.query(
        "SELECT g.prompt, count(*) AS n, avg(s.value) AS presence, "
        "mask_jaccard(max(m1.mask), max(m2.mask)) AS jaccard FROM generations g "
        "JOIN clip_scores s ON s.generation = g.id JOIN concept_masks m1 ON m1.mask_id = g.mask_ids[1] "
        "JOIN concept_masks m2 ON m2.mask_id = g.mask_ids[2] GROUP BY g.prompt"
    ).to_pylist()
    assert row == [{"prompt": "a dog and a cat", "n": 2, "presence": 1.0, "jaccard": pytest.approx(expected)}]
    assert again.query("SELECT subject, content_hash, uri FROM subject_images").to_pylist() == [
        {"subject": "dog", "content_hash": "h-dog", "uri": photo}]

    # A reader that has listed a table sees another writer's later commit (s3fs caches listings; another
    # S3FileSystem instance stands for another process).
    assert again.query("SELECT count(*) AS n FROM clip_scores").to_pylist() == [{"n": 2}]
    other = load_catalog(s3_uri, **s3_options, skip_instance_cache=True)
    other.write_clip_scores([ClipScore(gen_ids[0], "text_alignment", "a dog and a cat", 0.3, "clip")])
    assert again.query("SELECT count(*) AS n FROM clip_scores").to_pylist() == [{"n": 3}]

    # Compaction on S3: one file a table, every row kept, readers see no doubles.
    catalog.write_clip_scores([ClipScore(gen_ids[0], "presence", "dog", 1.0, "toy-judge")])  # an overlapping commit
    compact(catalog, grace_s=0)
    assert len(catalog.store.snapshot("clip_scores").all) == 1
    assert load_catalog(s3_uri, **s3_options).query("SELECT count(*) AS n FROM clip_scores").to_pylist() == [{"n": 3}]
