"""`cones export --format imagefolder | webdataset` of the demo's catalog, read back by the libraries the
dataset team uses (Hugging Face `datasets`, `webdataset`; the `slow` extra), checked row by row
against the catalog."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from catalog import load_catalog
from catalog.dataset import export_sql
from cones_cli.app import app
from cones_runs import cli_json

pytestmark = pytest.mark.slow


def _catalog_rows(catalog_uri: str, where: str) -> dict[str, dict]:
    """What the export should hold: generation id → its columns and decoded pixels, straight from the catalog."""
    catalog = load_catalog(catalog_uri)
    metrics = [r["metric"] for r in catalog.query("SELECT DISTINCT metric FROM clip_scores ORDER BY metric").to_pylist()]
    rows = catalog.query(export_sql(metrics), where=where).to_pylist()
    out = {}
    for row in rows:
        row["pixels"] = np.asarray(Image.open(io.BytesIO(catalog.get_bytes(row.pop("image_uri")))).convert("RGB"))
        out[row["id"]] = row
    assert "presence" in metrics and out, (metrics, len(out))
    return out


def _export(catalog_uri: str, where: str, to, *extra: str) -> dict:
    result = CliRunner().invoke(
        app, ["export", "--catalog", catalog_uri, "--where", where, "--to", str(to), "--json", *extra]
    )
    assert result.exit_code == 0, result.output
    return cli_json(result)


def test_imagefolder_export_loads_with_hugging_face_datasets(demo_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import datasets

    where = "len(subjects) <= 2"
    expected = _catalog_rows(demo_run["catalog"], where)
    started = time.perf_counter()
    result = _export(demo_run["catalog"], where, tmp_path / "imagefolder", "--format", "imagefolder")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "imagefolder"), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    print(f"imagefolder: {len(loaded)} rows exported and loaded in {time.perf_counter() - started:.1f} s")
    # 4 single subjects + 6 pairs, × 2 prompts × 8 seeds
    assert result["rows"] == len(expected) == len(loaded) == (4 + 6) * 2 * 8
    assert isinstance(loaded.features["image"], datasets.Image)
    for row in loaded:
        want = expected.pop(row["id"])
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), want["pixels"])
        assert row["subjects"] == want["subjects"] and row["prompt"] == want["prompt"] and row["seed"] == want["seed"]
        assert row["presence"] == pytest.approx(want["presence"]) and row["mask_ids"] == want["mask_ids"]
        assert json.loads(row["params"]) == json.loads(want["params"])
    assert expected == {}  # every row once


def test_webdataset_export_loads_with_webdataset_in_bounded_shards(demo_run, tmp_path):
    import webdataset as wds

    expected = _catalog_rows(demo_run["catalog"], "true")
    started = time.perf_counter()
    result = _export(demo_run["catalog"], "true", tmp_path / "wds", "--format", "webdataset", "--shard-mb", "0.02")
    shards = sorted((tmp_path / "wds").glob("shard-*.tar"))
    assert len(shards) == len(result["shards"]) >= 3
    assert all(s.stat().st_size <= 20_000 for s in shards), [s.stat().st_size for s in shards]
    loaded = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False).decode("rgb8").to_tuple("__key__", "png", "json"))
    print(f"webdataset: {len(loaded)} samples in {len(shards)} shards exported and loaded in {time.perf_counter() - started:.1f} s")
    assert result["rows"] == len(loaded) == len(expected) == 240
    for key, pixels, meta in loaded:
        want = expected.pop(key)
        assert meta["id"] == key and np.array_equal(pixels, want["pixels"])
        assert meta["subjects"] == want["subjects"] and meta["prompt"] == want["prompt"] and meta["seed"] == want["seed"]
        assert meta["presence"] == pytest.approx(want["presence"])
    assert expected == {}
