"""`cones init` turns a folder of subject folders into a config that `cones run customize` accepts as written."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from cones_cli.app import app
from cones_cli.flow_cmds import load_config
from cones_tasks.toyworld.assets import TOY_MODEL_DIR
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, write_subject_folders


def _subjects(tmp_path: Path) -> dict[str, Path]:
    folders = write_subject_folders(tmp_path / "photos", TOY_SUBJECTS[:3], n=3)
    (folders[TOY_SUBJECTS[0].id] / "class_word").write_text(f"{TOY_SUBJECTS[0].class_word}\n")
    (folders[TOY_SUBJECTS[1].id] / "class_word").write_text("wrong-word\n")  # --class-word overrides it below
    (tmp_path / "photos" / ".git").mkdir()  # hidden folders are not subjects
    (tmp_path / "photos" / "notes.txt").write_text("not a subject")
    return folders


def test_init_writes_a_config_cones_run_customize_accepts(tmp_path, monkeypatch):
    folders = _subjects(tmp_path)
    a, b, c = TOY_SUBJECTS[:3]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [
        "init", "--subjects", "photos", "--model", str(TOY_MODEL_DIR), "--clip", "ViT-L-14", "weights/vit.safetensors",
        "--class-word", f"{b.id}={b.class_word}", "--class-word", f"{c.id}={c.class_word}", "--device", "cuda",
        "--dtype", "float16",
    ])
    assert result.exit_code == 0, result.output
    run_yaml = tmp_path / "run.yaml"
    config = load_config(run_yaml, "CustomizeConfig")  # what `cones run customize --config run.yaml` does first
    assert [(s.subject_id, s.class_word) for s in config.subjects] == [(s.id, s.class_word) for s in sorted(
        (a, b, c), key=lambda s: s.id)]
    assert {s.uri for s in config.subjects} == {str(p.resolve()) for p in folders.values()}
    assert config.model.path == str(TOY_MODEL_DIR.resolve()) and config.model.device == "cuda"
    assert config.model.dtype == "float16"
    assert config.scoring.clip.model_name == "ViT-L-14"
    assert config.scoring.clip.weights_path == str(tmp_path / "weights" / "vit.safetensors")
    assert Path(config.catalog) == tmp_path / "cones-catalog"
    # Only what init knows is written; every other knob keeps the library default.
    assert set(yaml.safe_load(run_yaml.read_text())) == {"catalog", "model", "subjects", "scoring"}

    again = CliRunner().invoke(app, ["init", "--subjects", "photos", "--model", str(TOY_MODEL_DIR)])
    assert again.exit_code == 2 and "--force" in again.output
    forced = CliRunner().invoke(app, ["init", "--subjects", "photos", "--model", str(TOY_MODEL_DIR), "--force",
                                      "--class-word", f"{b.id}=x", "--class-word", f"{c.id}=y"])
    assert forced.exit_code == 0, forced.output
    assert load_config(run_yaml, "CustomizeConfig").scoring is None  # no --clip: not scored


def test_a_subject_without_a_class_word_is_named_with_both_ways_to_give_one(tmp_path):
    _subjects(tmp_path)
    a, b, c = TOY_SUBJECTS[:3]
    out = tmp_path / "run.yaml"
    result = CliRunner().invoke(app, ["init", "--subjects", str(tmp_path / "photos"), "--model", "m", "--out", str(out),
                                      "--class-word", f"{b.id}={b.class_word}"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{c.id}: no class word" in text and f"--class-word {c.id}=" in text and "class_word" in text
    assert f"{a.id}:" not in text and f"{b.id}:" not in text  # those two have one
    assert not out.exists()


def test_bad_options_and_folders_are_refused(tmp_path):
    _subjects(tmp_path)
    photos = str(tmp_path / "photos")
    cases = [
        (["--class-word", "nobody=dog"], "not sub-folders"),
        (["--class-word", "no-equals-sign"], "SUBJECT=WORD"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(app, ["init", "--subjects", photos, "--model", "m", "--out", str(tmp_path / "r.yaml"), *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["init", "--subjects", str(tmp_path / "empty"), "--model", "m"])
    assert result.exit_code == 2 and "no sub-folders" in result.output
    (tmp_path / "bad" / "-dash").mkdir(parents=True)
    ((tmp_path / "bad" / "-dash") / "class_word").write_text("dog")
    result = CliRunner().invoke(app, ["init", "--subjects", str(tmp_path / "bad"), "--model", "m"])
    assert result.exit_code == 2 and "rename the folder" in " ".join(result.output.split())


def test_a_missing_model_folder_and_clip_weights_are_warned_about_and_the_config_still_written(tmp_path):
    _subjects(tmp_path)
    b, c = TOY_SUBJECTS[1:3]
    out = tmp_path / "run.yaml"
    result = CliRunner().invoke(app, [
        "init", "--subjects", str(tmp_path / "photos"), "--model", str(tmp_path / "models" / "sd15"), "--out", str(out),
        "--clip", "ViT-L-14", str(tmp_path / "vit.safetensors"),
        "--class-word", f"{b.id}={b.class_word}", "--class-word", f"{c.id}={c.class_word}",
    ])
    assert result.exit_code == 0 and out.exists(), result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.output
    assert f"model folder {tmp_path / 'models' / 'sd15'} does not exist" in warnings[0] and "model_index.json" in warnings[0]
    assert "CLIP weights" in warnings[1] and "do not exist" in warnings[1]
    quiet = CliRunner().invoke(app, ["init", "--subjects", str(tmp_path / "photos"), "--model", str(TOY_MODEL_DIR),
                                     "--out", str(tmp_path / "ok.yaml"), "--class-word", f"{b.id}=x", "--class-word", f"{c.id}=y"])
    assert quiet.exit_code == 0 and "warning" not in quiet.output, quiet.output
