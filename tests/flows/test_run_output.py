"""What `cones run` prints: problems found before any flow starts, one line each (exit 2); a failure inside
tasks, one line per failed task and where the full log is (exit 1), no tracebacks (docs/pipeline.md)."""

from __future__ import annotations

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from cones_cli.app import app
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, write_subject_folders

SUBJECTS = TOY_SUBJECTS[:2]


def _write(tmp_path, **overrides) -> str:
    folders = write_subject_folders(tmp_path / "subjects", SUBJECTS, n=3)
    config = {
        "catalog": str(tmp_path / "catalog"),
        "model": {"path": str(tmp_path / "models" / "stable-diffusion-v1-5")},
        "subjects": [{"subject_id": s.id, "class_word": s.class_word, "uri": str(folders[s.id])} for s in SUBJECTS],
        "ingest": {"min_side": 16},
        **overrides,
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_a_missing_model_folder_exits_2_before_ingesting_in_at_most_5_lines(tmp_path):
    result = CliRunner().invoke(app, ["run", "customize", "--config", _write(tmp_path)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and 1 <= len(lines) <= 5, result.output
    assert "model folder" in lines[0] and "does not exist" in lines[0] and "model_index.json" in lines[0]
    assert not (tmp_path / "catalog").exists()  # nothing ingested, nothing written


def test_every_cheap_problem_is_one_line_naming_its_fix(tmp_path, tiny_model_dir):
    (tmp_path / "not-a-folder").write_text("")
    config = _write(
        tmp_path, model={"path": str(tiny_model_dir)}, catalog=str(tmp_path / "not-a-folder" / "catalog"),
        scoring={"clip": {"model_name": "ViT-B-32", "weights_path": str(tmp_path / "clip.safetensors")}},
    )
    data = json.loads(open(config).read())
    data["subjects"][1]["uri"] = str(tmp_path / "no-such-photos")
    open(config, "w").write(json.dumps(data))
    result = CliRunner().invoke(app, ["run", "customize", "--config", config])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 3, result.output
    assert lines[0].startswith("error: scoring.clip.weights_path: CLIP weights") and "do not exist" in lines[0]
    assert lines[1].startswith("error: subjects.1.uri:") and "does not exist" in lines[1]
    assert lines[2].startswith("error: catalog:") and "is a file, not a folder" in lines[2]


def test_a_model_folder_missing_a_part_the_run_needs_is_named(tmp_path, tiny_model_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    shutil.rmtree(model / "text_encoder")
    for weights in (model / "unet").glob("*.safetensors"):
        weights.unlink()
    result = CliRunner().invoke(app, ["run", "customize", "--config", _write(tmp_path, model={"path": str(model)})])
    assert result.exit_code == 2
    assert "text_encoder" in result.output and "unet: no weights file" in " ".join(result.output.split())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_catalog_root_is_refused(tmp_path, tiny_model_dir):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(stat.S_IRUSR | stat.S_IXUSR)
    config = _write(tmp_path, model={"path": str(tiny_model_dir)}, catalog=str(tmp_path / "ro" / "catalog"))
    result = CliRunner().invoke(app, ["run", "customize", "--config", config])
    assert result.exit_code == 2 and "not writable" in result.output


def test_failed_tasks_are_one_line_each_and_the_log_has_the_tracebacks(tmp_path, tiny_model_dir, prefect_api, capfd, monkeypatch):
    """Weights that pass the cheap checks but do not load: each discovery task fails; the run says so in a
    line per task and exits 1. Prefect's console lines are one line each; the log file keeps the tracebacks."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for weights in (model / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    monkeypatch.setenv("CONES_LOG_DIR", str(tmp_path / "logs"))
    result = CliRunner().invoke(app, ["run", "customize", "--config", _write(tmp_path, model={"path": str(model)})])
    printed = result.output + "".join(capfd.readouterr())
    assert result.exit_code == 1, printed
    failed = [line for line in result.output.splitlines() if line.startswith("error: task discover-concept-")]
    assert len(failed) == len(SUBJECTS) and all("ModelLoadError" in line and "unet" in line for line in failed), result.output
    log = next((tmp_path / "logs").glob("customize-*.log"))
    assert result.output.strip().splitlines()[-1] == f"full log (with tracebacks): {log}"
    assert "Traceback" not in printed and "╭" not in printed  # neither Python's nor rich's
    assert "Traceback" in log.read_text() and "ModelLoadError" in log.read_text()
