"""The catalog contract, run against every backend (issue #5, "Must show": one suite, file:// and memory://, s3://)."""

from __future__ import annotations

import numpy as np
import pytest

from catalog import (
    SCHEMAS,
    TABLES,
    ClipScore,
    Generation,
    MaskShapeMismatchError,
    NewMask,
    SubjectImage,
    UnknownBlobError,
    UnknownMaskError,
    UnknownModelError,
    UnknownSubjectError,
    params_hash,
)
from catalog.compact import compact

PARAMS = {"threshold": 0.5, "steps": 10, "seed": 0}


def _setup(catalog, space, subjects=("dog", "cat")):
    catalog.write_model(space, source="tiny-unet")
    for s in subjects:
        catalog.write_subject(s, class_word="animal")


def test_empty_catalog_has_every_table_with_its_columns(catalog):
    con = catalog.connect()
    for table in TABLES:
        rel = con.sql(f"SELECT * FROM {table}")
        assert rel.columns == SCHEMAS[table].names
        assert rel.fetchall() == []


def test_model_and_layers_round_trip(catalog, space):
    catalog.write_model(space, source="tiny-unet")
    model = catalog.get_model(space.fingerprint)
    assert (model.neuron_count, model.attention, model.source) == (space.size, "cross", "tiny-unet")
    layers = catalog.query(
        "SELECT name, \"offset\", numel FROM model_layers WHERE model_fingerprint = ? ORDER BY \"offset\"",
        [space.fingerprint],
    ).to_pylist()
    assert [(r["name"], r["offset"], r["numel"]) for r in layers] == [(e.name, e.offset, e.numel) for e in space.entries]


def test_repeated_commit_is_a_no_op(catalog):
    catalog.write_subject("dog", class_word="dog")
    files = catalog.store.snapshot("subjects").all
    catalog.write_subject("dog", class_word="dog")
    assert catalog.store.snapshot("subjects").all == files
    assert catalog.query("SELECT count(*) AS n FROM subjects").to_pylist() == [{"n": 1}]


def test_overlapping_batches_are_deduplicated_by_key(catalog):
    scores = [ClipScore("g1", "image_text", t, 0.1 * i, "toy-clip") for i, t in enumerate("abc")]
    catalog.write_clip_scores(scores[:2])
    catalog.write_clip_scores(scores[1:])
    catalog.write_clip_scores(scores + scores)  # duplicates inside one batch too
    rows = catalog.query("SELECT target, value FROM clip_scores ORDER BY target").to_pylist()
    assert [r["target"] for r in rows] == ["a", "b", "c"]


def test_masks_write_find_and_decode(catalog, space, make_mask):
    _setup(catalog, space)
    mask = make_mask(1)
    mask_id = catalog.write_mask(subject="dog", mask=mask, params=PARAMS, stats={"loss": [1.0, 0.5]})
    found = catalog.find_mask(subject="dog", model_fingerprint=space.fingerprint, params_hash=params_hash(PARAMS))
    assert found is not None and found.mask_id == mask_id
    np.testing.assert_array_equal(found.indices, mask.indices)
    assert (found.neuron_count, found.universe) == (mask.count, space.size)
    assert found.fraction == pytest.approx(mask.fraction)
    assert found.params == PARAMS and found.stats == {"loss": [1.0, 0.5]}
    assert catalog.find_mask(subject="cat", model_fingerprint=space.fingerprint, params_hash=params_hash(PARAMS)) is None
    assert [m.mask_id for m in catalog.subject_masks("dog")] == [mask_id] and catalog.subject_masks("cat") == []
    # Same subject, model and params -> same id: a re-run does not add a row.
    assert catalog.write_mask(subject="dog", mask=mask, params=dict(reversed(PARAMS.items()))) == mask_id
    assert catalog.query("SELECT count(*) AS n FROM concept_masks").to_pylist() == [{"n": 1}]
    with pytest.raises(UnknownMaskError):
        catalog.get_mask("nope")


def test_mask_writes_check_subject_model_and_shape(catalog, space, make_mask):
    from cones_tasks.neurons.masks import ConceptMask

    catalog.write_subject("dog", class_word="dog")
    with pytest.raises(UnknownModelError, match="write_model"):
        catalog.write_mask(subject="dog", mask=make_mask(0), params=PARAMS)
    catalog.write_model(space, source="tiny-unet")
    with pytest.raises(UnknownSubjectError, match="ghost"):
        catalog.write_mask(subject="ghost", mask=make_mask(0), params=PARAMS)
    wrong = ConceptMask(space.fingerprint, space.size + 1, np.array([0, 5]))
    with pytest.raises(MaskShapeMismatchError, match=str(space.size)):
        catalog.write_mask(subject="dog", mask=wrong, params=PARAMS)
    with pytest.raises(UnknownSubjectError):
        catalog.write_subject_images("ghost", [SubjectImage("ghost", "h", "u", 8, 8)])


def test_mask_sql_functions_match_numpy(catalog, space, make_mask):
    _setup(catalog, space)
    a, b = make_mask(1, 0.2), make_mask(2, 0.2)
    catalog.write_masks([NewMask("dog", a, PARAMS), NewMask("cat", b, PARAMS)])
    row = catalog.query(
        "SELECT mask_size(x.mask) AS sa, mask_intersection_size(x.mask, y.mask) AS inter, "
        "mask_jaccard(x.mask, y.mask) AS jac FROM concept_masks x, concept_masks y "
        "WHERE x.subject = 'dog' AND y.subject = 'cat'"
    ).to_pylist()[0]
    inter = np.intersect1d(a.indices, b.indices).size
    assert row["sa"] == a.count
    assert row["inter"] == inter
    assert row["jac"] == pytest.approx(inter / np.union1d(a.indices, b.indices).size)
    first = space.entries[0]
    per_layer = catalog.query(
        "SELECT mask_range_size(mask, ?, ?) AS n FROM concept_masks WHERE subject = 'dog'",
        [first.offset, first.offset + first.numel],
    ).to_pylist()[0]["n"]
    assert per_layer == space.counts_per_layer(a.indices)[first.name]


def test_jaccard_matrix_matches_pairwise(catalog, space, make_mask):
    _setup(catalog, space, subjects=("s0", "s1", "s2", "s3"))
    masks = [make_mask(i, 0.1 + 0.1 * i) for i in range(4)]
    ids = catalog.write_masks([NewMask(f"s{i}", m, PARAMS) for i, m in enumerate(masks)])
    jac = catalog.jaccard_matrix(ids)
    for i in range(4):
        for j in range(4):
            a, b = masks[i].indices, masks[j].indices
            assert jac[i, j] == pytest.approx(np.intersect1d(a, b).size / np.union1d(a, b).size)


def test_generations_and_scores_batches(catalog, space, make_mask):
    _setup(catalog, space)
    ids = catalog.write_masks([NewMask("dog", make_mask(1), PARAMS), NewMask("cat", make_mask(2), PARAMS)])
    uri = catalog.put_bytes(b"\x89PNG fake image bytes", suffix=".png")
    gens = [
        Generation(("cat", "dog"), "a dog and a cat", seed, uri, space.fingerprint, tuple(ids), {"steps": 25})
        for seed in range(50)
    ]
    gen_ids = catalog.write_generations(gens)
    assert len(set(gen_ids)) == 50
    catalog.write_clip_scores(
        [ClipScore(g, "image_image", s, (seed % 10) / 10, "toy-clip") for seed, g in enumerate(gen_ids) for s in ("dog", "cat")]
    )
    best = catalog.query(
        "SELECT g.seed, avg(s.value) AS score FROM generations g JOIN clip_scores s ON s.generation = g.id "
        "GROUP BY g.seed ORDER BY score DESC, g.seed LIMIT 1"
    ).to_pylist()
    assert best == [{"seed": 9, "score": pytest.approx(0.9)}]
    with pytest.raises(UnknownMaskError):
        catalog.write_generations([Generation(("dog",), "a dog", 0, uri, space.fingerprint, ("missing",))])


def test_blobs_are_content_addressed(catalog):
    uri = catalog.put_bytes(b"report", suffix=".html")
    assert catalog.put_bytes(b"report", suffix=".html") == uri
    assert catalog.get_bytes(uri) == b"report"
    assert uri.endswith(".html")
    with pytest.raises(UnknownBlobError):
        catalog.get_bytes(uri.replace(".html", ".png"))
    with pytest.raises(UnknownBlobError, match="not on this catalog"):
        catalog.get_bytes("gopher://elsewhere/x")


def test_compaction_keeps_every_row_and_old_readers_keep_reading(catalog):
    for i in range(6):
        catalog.write_clip_scores([ClipScore(f"g{i}", "m", t, float(i), "s") for t in ("a", "b")])
    catalog.write_clip_scores([ClipScore("g0", "m", "a", 0.0, "s")])  # an overlapping commit
    before = catalog.connect()
    report = {r.table: r for r in compact(catalog, tables=["clip_scores"], grace_s=3600)}["clip_scores"]
    assert (report.files_before, report.files_after, report.rows) == (7, 1, 12)
    assert len(catalog.store.snapshot("clip_scores").all) == 1
    # A connection opened before compaction still reads its snapshot (files kept for the grace period).
    assert before.sql("SELECT count(*) FROM clip_scores").fetchall() == [(12,)]
    catalog.write_clip_scores([ClipScore("g9", "m", "a", 9.0, "s"), ClipScore("g0", "m", "a", 0.0, "s")])
    counts = catalog.query("SELECT count(*) AS n, count(DISTINCT generation || target) AS k FROM clip_scores")
    assert counts.to_pylist() == [{"n": 13, "k": 13}]
    # After the grace period the replaced files go; the rows stay.
    compact(catalog, tables=["clip_scores"], grace_s=0)
    compact(catalog, tables=["clip_scores"], grace_s=0)
    assert catalog.query("SELECT count(*) AS n FROM clip_scores").to_pylist() == [{"n": 13}]
    assert len(catalog.store.snapshot("clip_scores").all) == 1


def test_compaction_output_and_inputs_visible_together_do_not_duplicate(catalog):
    # Simulates a crash between publishing the compacted file and its tombstone.
    for i in range(3):
        catalog.write_subject(f"s{i}", class_word="x")
    files = catalog.store.snapshot("subjects")
    merged = catalog.read_table("subjects")
    from catalog.catalog import _parquet_bytes

    catalog.store.publish_base("subjects", "crashed", _parquet_bytes(merged))
    assert catalog.store.snapshot("subjects").all == tuple(sorted(catalog.store.snapshot("subjects").base)) + files.tail
    assert catalog.query("SELECT count(*) AS n FROM subjects").to_pylist() == [{"n": 3}]


def test_unknown_scheme_is_a_clear_error():
    from catalog import CatalogURIError, load_catalog

    with pytest.raises(CatalogURIError, match="nosuchfs"):
        load_catalog("nosuchfs://bucket/catalog")
