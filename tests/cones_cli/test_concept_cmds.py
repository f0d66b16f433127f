"""`cones concept export` on a real catalog, and load_concept from the file or the catalog on a tiny SD-1.5 pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_pipelines import saved
from typer.testing import CliRunner

from cones_cli.app import app
from cones_tasks.concepts import ConceptModelMismatchError, load_concept
from cones_tasks.config import FitObjective, mask_params
from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.space import NeuronSpace

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    from catalog import load_catalog

    root = tmp_path_factory.mktemp("concepts")
    folder = saved("sd15", root / "tiny-sd15")
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    space = NeuronSpace.from_unet(pipe.unet)
    cat = load_catalog(str(root / "catalog"))
    cat.write_model(space, source=str(folder))
    cat.write_subject("my-dog", class_word="dog")
    rng = np.random.default_rng(0)
    mask = ConceptMask.from_indices(space, rng.choice(space.size, 300, replace=False))
    mask_id = cat.write_mask(subject="my-dog", mask=mask, params=mask_params(FitObjective(), seed=0))
    return {"root": root, "folder": folder, "pipe": pipe, "space": space, "catalog": cat, "mask": mask, "mask_id": mask_id}


def _export(setup, *args):
    return runner.invoke(app, ["concept", "export", "my-dog", "--catalog", str(setup["root"] / "catalog"), *args])


def test_export_writes_a_concept_that_load_concept_reads_back(setup, tmp_path):
    out = tmp_path / "dog.safetensors"
    result = _export(setup, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["model_fingerprint"] == setup["space"].fingerprint and report["neurons"] == 300
    assert (report["class_word"], report["scope"]) == ("dog", "word")
    concept = load_concept(out, model=setup["pipe"])
    assert concept.mask == setup["mask"] and concept.class_word == "dog" and concept.model_source == str(setup["folder"])
    assert load_concept(setup["catalog"], "my-dog", model=setup["pipe"]) == concept  # the catalog gives the same concept


def test_a_concept_for_another_model_is_refused_naming_both(setup, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "dog.safetensors"
    assert _export(setup, "--out", str(out)).exit_code == 0
    other = StableDiffusionPipeline.from_pretrained(saved("sd15", tmp_path / "other", seed=7), local_files_only=True)
    other_fp = NeuronSpace.from_unet(other.unet).fingerprint
    for source in ((out,), (setup["catalog"], "my-dog")):
        with pytest.raises(ConceptModelMismatchError) as refused:
            load_concept(*source, model=other)
        assert setup["space"].fingerprint in str(refused.value) and other_fp in str(refused.value)


def test_several_concepts_of_a_subject_need_a_choice(setup, tmp_path):
    cat, space = setup["catalog"], setup["space"]
    second = ConceptMask.from_indices(space, np.arange(10))
    # the catalog is append-only: this test, last in the module, leaves the subject with two concepts
    other_id = cat.write_mask(subject="my-dog", mask=second, params=mask_params(FitObjective(), seed=1))
    out = tmp_path / "dog.safetensors"
    refused = _export(setup, "--out", str(out))
    assert refused.exit_code == 2 and setup["mask_id"] in refused.output and other_id in refused.output
    with pytest.raises(ValueError, match="pass mask_id"):
        load_concept(cat, "my-dog", model=setup["pipe"])
    assert _export(setup, "--out", str(out), "--mask-id", other_id).exit_code == 0
    assert load_concept(out, model=setup["pipe"]).mask == second
    assert load_concept(cat, "my-dog", model=setup["pipe"], mask_id=other_id).mask == second
    missing = runner.invoke(app, ["concept", "export", "nobody", "--catalog", str(setup["root"] / "catalog"),
                                  "--out", str(tmp_path / "x.safetensors")])
    assert missing.exit_code == 2 and "run discover-concepts" in missing.output
