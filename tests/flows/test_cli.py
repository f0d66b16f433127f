"""`cones run <flow> --config` refuses a bad config with the field named, before any flow starts."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cones_cli.app import app


def test_bad_config_names_the_field_and_exits_2(tmp_path):
    config = {
        "catalog": str(tmp_path / "cat"),
        "model": {"path": "/nowhere"},
        "subjects": [{"subject_id": "a/b", "class_word": "dog", "uri": "/x"}],
        "grid": {"max_k": "three", "colour": "red"},
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["run", "customize", "--config", str(path)])
    assert result.exit_code == 2
    assert "subjects.0.subject_id" in result.output and "path separator" in result.output
    assert "grid.max_k" in result.output and "grid.colour" in result.output
    # One line per real problem: no follow-on "Tuple should have at least 1 item" for the subjects.
    problems = [line for line in result.output.splitlines() if line.startswith("  ") and ": " in line]
    assert len(problems) == 3 and "at least 1 item" not in result.output, result.output


def test_yaml_config_and_unparsable_files(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("catalog: [unclosed\n")
    result = CliRunner().invoke(app, ["run", "ingest", "--config", str(path)])
    assert result.exit_code == 2 and "not valid JSON/YAML" in result.output
