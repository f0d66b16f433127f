"""README.md is the product page: at most 200 lines, its links resolve, and every command and config in
it runs or validates as written.

Fenced `bash`, `json` and `yaml` blocks preceded by `<!-- runnable -->` (bash) or `<!-- runnable: FLOW -->`
(a config for `cones run FLOW`; `FLOW.field` for one part of it) are run or validated here. The others
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
CHECKED = ("bash", "json", "yaml")

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
    assert headings == ["Quick start", "Use your own subjects", "Use Stable Diffusion and real CLIP", "Query the catalog",
                        "Scheduled runs and scaling out", "What we measured", "Layout"]


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
