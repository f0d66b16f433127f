"""README.md is the product page: at most 200 lines, its links resolve, and every command and config in
it runs or validates as written.

Fenced `bash`, `python`, `json` and `yaml` blocks preceded by `<!-- runnable -->` (bash, python) or
`<!-- runnable: FLOW -->` (a config for `cones run FLOW`; `FLOW.field` for one part of it) are run or validated here;
Python runs on a tiny Stable Diffusion 1.5-style pipeline built locally at the path it names. The others
are listed in EXEMPT with the test that covers them instead; a new unmarked block fails until it is
marked or listed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCK = re.compile(r"(?:^<!-- runnable(?:: (?P<target>[\w.]+))? -->\n)?^```(?P<lang>\w+)\n(?P<body>.*?)^```$", re.M | re.S)
BLOCKS = [(m["lang"], m["body"], m["target"], m.group(0).startswith("<!-- runnable")) for m in BLOCK.finditer(README)]
CHECKED = ("bash", "python", "json", "yaml")

# First line of an unmarked block -> what covers it instead (too slow, or needs a GPU model or a server).
EXEMPT = {
    "make demo": "2 min; `cones demo` runs end to end in tests/flows/test_demo.py (slow)",
    "cones run customize --config run.yaml": "needs Stable Diffusion weights; run.yaml is the runnable block's "
                                             "output, validated below and in tests/cones_cli/test_init_cmd.py",
    'cones sql "SELECT subject': "needs the demo's catalog; every `cones sql \"…\"` query in the README runs in "
                                 "tests/catalog/test_docs_queries.py, every `--where` in tests/catalog/test_dataset.py",
    "prefect work-pool create": "needs a Prefect server and workers: tests/flows/test_deployments.py (slow) does this",
}


def test_readme_is_a_product_page_of_at_most_200_lines():
    assert len(README.splitlines()) <= 200
    headings = re.findall(r"^## (.+)$", README, re.M)
    assert headings == ["Quick start", "Use your own subjects", "Use Stable Diffusion and real CLIP",
                        "Use a concept in your own pipeline", "Query the catalog", "Scheduled runs and scaling out",
                        "What we measured", "Layout"]


def test_links_and_the_picture_resolve():
    targets = re.findall(r"\]\(([^)\s#]+)[^)]*\)", README)
    assert "docs/report.png" in targets and "docs/research/composition.md" in targets
    missing = [t for t in targets if not t.startswith("http") and not (REPO / t).exists()]
    assert not missing, missing


def test_every_block_is_runnable_or_exempt_with_a_reason():
    unmarked = [body.splitlines()[0] for lang, body, _, marked in BLOCKS if lang in CHECKED and not marked]
    unexplained = [line for line in unmarked if not any(line.startswith(key) for key in EXEMPT)]
    assert not unexplained, f"mark these runnable or say in EXEMPT what covers them: {unexplained}"
    stale = [key for key in EXEMPT if not any(line.startswith(key) for line in unmarked)]
    assert not stale, f"EXEMPT names blocks the README no longer has: {stale}"
    assert sum(marked for *_, marked in BLOCKS) >= 4


def _model_for(target: str):
    from cones_cli.config_cmds import _model_of, config_class

    flow, *fields = target.split(".")
    model = config_class(flow)
    for name in fields:
        model = _model_of(model.model_fields[name].annotation)
    return model


@pytest.mark.parametrize("body,target", [(body, target) for lang, body, target, marked in BLOCKS
                                         if marked and lang in ("json", "yaml")],
                         ids=lambda v: v if isinstance(v, str) and "\n" not in v else None)
def test_config_blocks_validate(body, target):
    assert target, "a config block's marker names its flow: <!-- runnable: customize -->"
    data = yaml.safe_load(body)  # YAML parses JSON too
    _model_for(target).model_validate(data)


def test_bash_blocks_run_as_written(tmp_path):
    script = "\n".join(body for lang, body, _, marked in BLOCKS if marked and lang == "bash")
    assert script.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONES_", "PREFECT_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    # What the blocks promise: `cones init` wrote run.yaml for both subject folders, and `cones run` accepts it.
    from cones_cli.flow_cmds import load_config

    config = load_config(tmp_path / "run.yaml", "CustomizeConfig")
    assert [(s.subject_id, s.class_word) for s in config.subjects] == [("my-cat", "cat"), ("my-dog", "dog")]
    assert set(_example(done.stdout)) >= {"catalog", "model", "subjects"}


def _example(stdout: str) -> dict:
    """The part of stdout `cones config example customize` printed (after init's one-line report)."""
    start = stdout.index("# cones run customize")
    return yaml.safe_load(stdout[start:])


def test_python_blocks_run_on_a_tiny_local_pipeline(tmp_path, monkeypatch):
    """Each Python block runs as written where it expects to be: a tiny SD-1.5-style pipeline saved at the folder it
    names, and a catalog with two subjects whose concepts the `cones concept export` of its first line writes."""
    import shlex

    import numpy as np
    from tiny_pipelines import saved
    from typer.testing import CliRunner

    from catalog import load_catalog
    from cones_cli.app import app
    from cones_tasks.config import FitObjective, mask_params
    from cones_tasks.neurons.masks import ConceptMask
    from cones_tasks.neurons.processor import is_attached
    from cones_tasks.neurons.space import NeuronSpace

    blocks = [body for lang, body, _, marked in BLOCKS if marked and lang == "python"]
    assert blocks
    monkeypatch.chdir(tmp_path)
    for body in blocks:
        folder = re.search(r'from_pretrained\("([^"]+)"\)', body)[1]
        unet = saved("sd15", tmp_path / folder).joinpath("unet")
        from diffusers import UNet2DConditionModel

        space = NeuronSpace.from_unet(UNet2DConditionModel.from_pretrained(unet))
        export = shlex.split(next(line for line in body.splitlines() if line.startswith("# cones "))[2:].split("(")[0])
        catalog = load_catalog(str(tmp_path / export[export.index("--catalog") + 1]))
        catalog.write_model(space, source=folder)
        rng = np.random.default_rng(0)
        for subject, word in (("my-dog", "dog"), ("my-cat", "cat")):
            catalog.write_subject(subject, class_word=word)
            mask = ConceptMask.from_indices(space, rng.choice(space.size, space.size // 10, replace=False))
            catalog.write_mask(subject=subject, mask=mask, params=mask_params(FitObjective(), seed=0))
            args = [a.replace("my-dog", subject).replace("dog.", f"{word}.") for a in export[1:]]
            done = CliRunner().invoke(app, args)
            assert done.exit_code == 0, done.output
        scope: dict = {}
        exec(compile(body, "README.md", "exec"), scope)
        assert len(scope["images"]) == len(scope["prompts"])
        assert not is_attached(scope["pipe"].unet)
