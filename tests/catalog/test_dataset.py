"""`cones export` (issue #6, item 6): a Parquet dataset plus the images it points to."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from catalog import ClipScore, Generation, load_catalog
from catalog.dataset import export_dataset, export_sql
from cones_tasks.ingest import encode_png

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def catalog(tmp_path):
    from cones_tasks.neurons.masks import ConceptMask
    from cones_tasks.neurons.space import NeuronSpace
    from cones_tasks.toyworld.architecture import build_unet

    cat = load_catalog(str(tmp_path / "catalog"))
    space = NeuronSpace.from_unet(build_unet(seed=0))
    cat.write_model(space, source="test")
    masks = {}
    for i, subject in enumerate(["a-dog", "b-cat"]):
        cat.write_subject(subject, class_word=subject[2:])
        masks[subject] = cat.write_mask(subject=subject, mask=ConceptMask.from_indices(space, [i, 10 + i]), params={"p": 1})
    gens, scores = [], []
    for k, subjects in enumerate([("a-dog",), ("b-cat",), ("a-dog", "b-cat")]):
        for seed in (0, 1):
            uri = cat.put_bytes(encode_png(np.full((16, 16, 3), 40 * k + seed, np.uint8)), suffix=".png")
            g = Generation(subjects=subjects, prompt=" and ".join(subjects), seed=seed, image_uri=uri,
                           model_fingerprint=space.fingerprint, mask_ids=tuple(masks[s] for s in subjects))
            gens.append(g)
            for s in subjects:
                scores.append(ClipScore(g.key(), "presence", s, float(seed == 1 or k == 0), "toy-judge"))
            scores.append(ClipScore(g.key(), "text_alignment", g.prompt, 0.1 * k, "clip"))
    cat.write_generations(gens)
    cat.write_clip_scores(scores)
    return cat


def test_export_filters_on_score_columns_and_copies_images(catalog, tmp_path):
    out = tmp_path / "dataset"
    result = export_dataset(catalog, where="presence = 1 AND len(subjects) = 2", to=str(out), include_bytes=True)
    assert result["rows"] == 1 and result["metrics"] == ["presence", "text_alignment"]
    table = pq.read_table(out / "generations.parquet").to_pylist()
    (row,) = table
    assert row["subjects"] == ["a-dog", "b-cat"] and row["seed"] == 1 and row["presence"] == 1.0
    assert row["text_alignment"] == pytest.approx(0.2)
    image = np.asarray(Image.open(out / row["image_path"]))
    assert (image == 81).all()
    assert row["image"] == (out / row["image_path"]).read_bytes()

    every = export_dataset(catalog, where="true", to=f"memory://export-test", include_bytes=False)
    assert every["rows"] == 6 and every["images"] == 6


def test_export_refuses_writes_and_reports_bad_predicates(catalog, tmp_path):
    from cones_cli.app import app

    runner = CliRunner()
    base = ["export", "--catalog", catalog.uri, "--to", str(tmp_path / "x")]
    bad = runner.invoke(app, [*base, "--where", "true; DROP VIEW generations"])
    assert bad.exit_code == 2 and "not one SQL expression" in bad.output and "more than one statement" in bad.output, bad.output
    sneaky = runner.invoke(app, [*base, "--where", "true) ORDER BY id; DROP VIEW generations; SELECT 1 WHERE (true"])
    assert sneaky.exit_code == 2 and "not one SQL expression" in sneaky.output, sneaky.output
    assert catalog.query("SELECT count(*) AS n FROM generations").to_pylist() == [{"n": 6}]
    typo = runner.invoke(app, [*base, "--where", "presense = 1"])
    assert typo.exit_code == 2 and "presense" in typo.output
    ok = runner.invoke(app, [*base, "--where", "seed = 0", "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"rows": 3' in ok.output


def test_export_names_the_destination_when_it_cannot_be_written(catalog, tmp_path):
    """An OSError writing --to is reported as such, not as an error in --where."""
    from cones_cli.app import app

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = CliRunner().invoke(app, ["export", "--catalog", catalog.uri, "--to", str(blocker / "export"), "--where", "seed = 0"])
    assert res.exit_code == 2 and "error writing --to" in res.output and "--where" not in res.output, res.output


DOCUMENTED_FILTERS = sorted(
    {
        m
        for doc in ("README.md", "docs/pipeline.md", "docs/catalog.md")
        for m in re.findall(r'cones export [^\n]*--where "([^"]+)"', (ROOT / doc).read_text())
    }
)


# What each documented filter selects, said independently of SQL: g is one generation of the `judged` catalog
# with `subjects` and `present` (the judge's verdict per subject). A filter added to the docs fails below
# until it is given its meaning here.
FILTER_MEANINGS = {
    "true": lambda g: True,
    "all_present = 1": lambda g: all(g["present"]),
    "presence = 1 AND len(subjects) = 3": lambda g: all(g["present"]) and len(g["subjects"]) == 3,
}


@pytest.fixture()
def judged(tmp_path):
    """Three subjects, every 1-, 2- and 3-subject combination at seeds 0-3, scored as the demo scores them: the
    judge's presence per subject and its all_present per generation (flows/score_generations.py)."""
    from itertools import combinations

    from cones_tasks.generation_scores import ALL_PRESENT, PRESENCE, all_present
    from cones_tasks.neurons.masks import ConceptMask
    from cones_tasks.neurons.space import NeuronSpace
    from cones_tasks.toyworld.architecture import build_unet

    cat = load_catalog(str(tmp_path / "judged"))
    space = NeuronSpace.from_unet(build_unet(seed=0))
    cat.write_model(space, source="test")
    names = ["a-dog", "b-cat", "c-owl"]
    masks = {}
    for i, subject in enumerate(names):
        cat.write_subject(subject, class_word=subject[2:])
        masks[subject] = cat.write_mask(subject=subject, mask=ConceptMask.from_indices(space, [i]), params={"p": 1})
    gens, scores, truth = [], [], {}
    for k in (1, 2, 3):
        for subjects in combinations(names, k):
            for seed in range(4):
                uri = cat.put_bytes(encode_png(np.full((16, 16, 3), 10 * k + seed, np.uint8)), suffix=".png")
                g = Generation(subjects=subjects, prompt=" and ".join(subjects), seed=seed, image_uri=uri,
                               model_fingerprint=space.fingerprint, mask_ids=tuple(masks[s] for s in subjects))
                # a subject is drawn unless its index plus the seed is a multiple of 4: a mix of whole and partial images
                present = {s: float((names.index(s) + seed) % 4 != 0) for s in subjects}
                gens.append(g)
                scores += [ClipScore(g.key(), PRESENCE, s, v, "toy-judge") for s, v in present.items()]
                scores.append(ClipScore(g.key(), ALL_PRESENT, "+".join(subjects), all_present(present), "toy-judge"))
                truth[g.key()] = {"subjects": subjects, "present": [v == 1.0 for v in present.values()]}
    cat.write_generations(gens)
    cat.write_clip_scores(scores)
    return cat, truth


def test_documented_filters_select_what_they_say(judged, tmp_path):
    catalog, truth = judged
    assert len(DOCUMENTED_FILTERS) >= 2, DOCUMENTED_FILTERS
    assert set(DOCUMENTED_FILTERS) <= set(FILTER_MEANINGS), f"say what these select: {set(DOCUMENTED_FILTERS) - set(FILTER_MEANINGS)}"
    for i, where in enumerate(DOCUMENTED_FILTERS):
        result = export_dataset(catalog, where=where, to=str(tmp_path / f"export-{i}"))
        got = set(pq.read_table(tmp_path / f"export-{i}" / "generations.parquet", columns=["id"]).column("id").to_pylist())
        expected = {key for key, g in truth.items() if FILTER_MEANINGS[where](g)}
        assert expected, f"the fixture has no generation that {where!r} selects: it would pass on 0 rows"
        assert got == expected and result["rows"] == len(expected), (where, len(got), len(expected))
    # the fixture tells the filters apart: whole and partial images at every size
    assert 0 < sum(all(g["present"]) for g in truth.values() if len(g["subjects"]) == 3) < 4


def test_imagefolder_export_writes_metadata_jsonl_beside_one_image_per_row(catalog, tmp_path):
    import json

    out = tmp_path / "imagefolder"
    result = export_dataset(catalog, where="len(subjects) = 1", to=str(out), format="imagefolder")
    assert result["rows"] == 4 and result["format"] == "imagefolder"
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == [f"images/{r['id']}.png" for r in rows]
    expected = catalog.query(export_sql(["presence", "text_alignment"]), where="len(subjects) = 1").sort_by("id").to_pylist()
    for row, want in zip(rows, expected, strict=True):
        assert (out / row["file_name"]).read_bytes() == catalog.get_bytes(want.pop("image_uri"))
        assert {k: v for k, v in row.items() if k != "file_name"} == want


def test_webdataset_shards_stay_under_their_bound_and_hold_every_row_once(catalog, tmp_path):
    import json
    import tarfile

    out = tmp_path / "wds"
    bound = 12_000  # about 3 samples of a 16 px PNG and its JSON
    result = export_dataset(catalog, where="true", to=str(out), format="webdataset", shard_bytes=bound)
    shards = sorted(out.glob("shard-*.tar"))
    assert [s.name for s in shards] == [f"shard-{i:06d}.tar" for i in range(len(shards))] and len(shards) >= 2
    assert all(s.stat().st_size <= bound for s in shards)
    assert [r["bytes"] for r in result["shards"]] == [s.stat().st_size for s in shards]
    samples: dict[str, dict[str, bytes]] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    expected = {r["id"]: r for r in catalog.query(export_sql(["presence", "text_alignment"])).to_pylist()}
    assert samples.keys() == expected.keys() and result["rows"] == 6
    for key, sample in samples.items():
        assert sample["png"] == catalog.get_bytes(expected[key].pop("image_uri"))
        assert json.loads(sample["json"]) == expected[key]
    with pytest.raises(ValueError, match="too small"):
        export_dataset(catalog, where="true", to=str(tmp_path / "x"), format="webdataset", shard_bytes=2000)
    with pytest.raises(ValueError, match="include_bytes"):
        export_dataset(catalog, where="true", to=str(tmp_path / "x"), format="imagefolder", include_bytes=True)
