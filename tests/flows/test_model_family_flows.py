"""The flows on an SDXL-shaped model: ingest, discover and generate under a real Prefect API (tiny local pipeline)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from tiny_pipelines import saved, subject_images

from catalog import load_catalog
from cones_tasks.config import DiscoverConfig, GenerateConfig, IngestConfig

SUBJECTS = {"my-dog": "dog", "my-cat": "cat"}
DISCOVERY = {"steps": 2, "batch_size": 2}


def test_sdxl_runs_through_ingest_discover_and_generate(prefect_api, tmp_path):
    from flows.discover_concepts import discover_concepts
    from flows.generate_combinations import generate_combinations
    from flows.ingest_subjects import ingest_subjects

    model = {"path": str(saved("sdxl", tmp_path / "tiny-sdxl"))}
    catalog_uri = str(tmp_path / "catalog")
    sources = []
    for i, (subject, word) in enumerate(SUBJECTS.items()):
        folder = tmp_path / "photos" / subject
        folder.mkdir(parents=True)
        for j, image in enumerate(subject_images(3, seed=i)):
            Image.fromarray(image).save(folder / f"{j}.png")
        sources.append({"subject_id": subject, "class_word": word, "uri": str(folder)})
    ingest_subjects(IngestConfig.model_validate({"catalog": catalog_uri, "subjects": sources, "ingest": {"min_side": 16}}))
    masks = discover_concepts(DiscoverConfig.model_validate(
        {"catalog": catalog_uri, "model": model, "subjects": list(SUBJECTS), "discovery": DISCOVERY}))
    assert masks.keys() == SUBJECTS.keys()
    result = generate_combinations(GenerateConfig.model_validate({
        "catalog": catalog_uri, "model": model, "subjects": list(SUBJECTS), "discovery": DISCOVERY,
        "grid": {"max_k": 2, "templates": ["{subjects} on the beach"], "seeds": [0], "steps": 2, "sample_batch": 4},
    }))
    catalog = load_catalog(catalog_uri)
    rows = catalog.query("SELECT prompt, image_uri FROM generations ORDER BY prompt").to_pylist()
    assert [r["prompt"] for r in rows] == ["a cat and a dog on the beach", "a cat on the beach", "a dog on the beach"]
    assert result["generations"] == result["new"] == 3  # the flow returns counts, not ids
    for r in rows:
        image = np.asarray(Image.open(io.BytesIO(catalog.get_bytes(r["image_uri"]))))
        assert image.shape == (16, 16, 3)
