"""The demo's rates on a small run (the fast twin of tests/flows/test_demo.py, which runs the whole demo, slow).

The demo's own pipeline and config (`cones demo`: scene photos, ingest, word-scoped discovery, token
composition, the toy judge, the report), shrunk: three subjects, a 20-step discovery, pairs at most, one
template, four seeds, no toy CLIP (~50 s on 2 busy cores). What it checks is how the rates the demo prints are
made: each image judged as the image stored, all_present exactly "every subject of the image seen", and the
printed rate by subjects per image their mean. The short discovery still draws its subjects in some images
and not in others, so pair images with one subject of two are there to tell "all" from "any" (checked).
"""

from __future__ import annotations

import collections
import io

import numpy as np
import pytest
from PIL import Image

from catalog import load_catalog
from cones_tasks.toyworld.presence import toy_presence

SMALL = {
    "discovery": {"steps": 20, "rounds": 1},
    "grid": {"max_k": 2, "templates": ["{subjects}"], "seeds": [0, 1, 2, 3], "sample_batch": 24},
    "scoring": {"clip": None},
}


@pytest.fixture(scope="module")
def small_demo(prefect_api, tmp_path_factory):
    import cones_cli.app  # noqa: F401  (the CLI's modules import each other through it)
    from cones_cli.flow_cmds import _run_demo

    return _run_demo(tmp_path_factory.mktemp("demo") / "demo", n_subjects=3, overrides=SMALL)


def test_the_demo_prints_the_judges_rates_of_the_images_it_stored(small_demo):
    out = small_demo
    catalog = load_catalog(out["catalog"])
    # 3 singles + 3 pairs, 1 template, 4 seeds
    assert out["generations"] == 24 and len(out["subjects"]) == 3
    gens = catalog.query("SELECT id, subjects, image_uri FROM generations").to_pylist()
    scores = catalog.query("SELECT generation, metric, target, value FROM clip_scores WHERE scorer = 'toy-judge'").to_pylist()
    presence = collections.defaultdict(dict)
    all_present = {}
    for s in scores:
        if s["metric"] == "presence":
            presence[s["generation"]][s["target"]] = s["value"]
        elif s["metric"] == "all_present":
            all_present[s["generation"]] = s["value"]
    assert len(gens) == 24 and set(presence) == set(all_present) == {g["id"] for g in gens}

    by_k = collections.defaultdict(list)
    for g in gens:
        # the stored verdict is the judge's on the stored image, subject by subject
        with Image.open(io.BytesIO(catalog.get_bytes(g["image_uri"]))) as image:
            pixels = np.asarray(image.convert("RGB"))
        (seen,) = toy_presence(pixels[None], [g["subjects"]])
        assert presence[g["id"]] == seen, g["subjects"]
        # all present: every subject of the image seen, and nothing else
        assert all_present[g["id"]] == float(all(v == 1.0 for v in seen.values()))
        by_k[len(g["subjects"])].append(all_present[g["id"]])
    pairs = [list(presence[g["id"]].values()) for g in gens if len(g["subjects"]) == 2]
    assert any(sum(p) == 1 for p in pairs), "no pair image with one subject of two: all_present is not tested"
    printed = {int(k): v for k, v in out["all_present"].items()}
    assert printed == {k: pytest.approx(float(np.mean(v)), abs=5e-4) for k, v in by_k.items()}  # printed to 3 places
    assert set(printed) == {1, 2}
    assert catalog.query(out["query"]).num_rows == 6  # the query the demo prints runs as printed: 6 (subsets, prompt) rows
    assert (out["report_path"].endswith("report.html")) and open(out["report_path"], "rb").read(15) == b"<!doctype html>"
