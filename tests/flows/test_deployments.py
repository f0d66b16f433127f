"""deployments/prefect.yaml for real: a `prefect server` on loopback, `prefect deploy --all`, two
process workers, runs triggered through the API (issue #6, item 4). Slow: ~3–5 min on 2 cores."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cones_tasks.toyworld.subjects import TOY_SUBJECTS, write_subject_folders

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
pytestmark = pytest.mark.slow


def _run(cmd: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _trigger(name: str, parameters: dict) -> str:
    from prefect.deployments import run_deployment

    return str(run_deployment(name, parameters=parameters, timeout=0).id)


def _wait_runs(run_ids: list[str], timeout: float = 600) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            states = [client.read_flow_run(r).state for r in run_ids]
            if all(s.is_final() for s in states):
                bad = [(r, s.name, s.message) for r, s in zip(run_ids, states) if not s.is_completed()]
                assert not bad, f"flow runs did not complete: {bad}"
                return
            time.sleep(2)
    raise TimeoutError(f"flow runs {run_ids} not finished after {timeout} s")


def test_deploy_all_two_workers_share_the_runs_and_fill_the_catalog(prefect_server, tmp_path, monkeypatch, tiny_model_dir):
    from catalog import load_catalog
    from prefect.settings import PREFECT_API_URL, temporary_settings

    subjects = TOY_SUBJECTS[:4]  # the subject set named in deployments/prefect.yaml
    write_subject_folders(tmp_path / "subjects", subjects, n=4)
    env = {**prefect_server, "CONES_CATALOG": str(tmp_path / "catalog"), "CONES_MODEL": str(tiny_model_dir),
           "CONES_SUBJECTS": str(tmp_path / "subjects")}

    _run([PREFECT, "work-pool", "create", "cones-process", "--type", "process"], env)
    out = _run([PREFECT, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all"], env)
    for name in ("customize/nightly", "discover-concepts/on-demand", "generate-combinations/on-demand", "compact-catalog/daily",
                 "compact-catalog/dataset-run"):
        assert name in out, out

    workers, logs = [], []
    try:
        for name in ("worker-a", "worker-b"):
            log = open(tmp_path / f"{name}.log", "wb")
            logs.append(log)
            workers.append(subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", "cones-process", "--name", name, "--limit", "1"],
                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            ))
        with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
            catalog_uri, model = env["CONES_CATALOG"], {"path": env["CONES_MODEL"]}
            ids = [s.id for s in subjects]
            fast = {"steps": 2, "batch_size": 2}
            grid = {"max_k": 2, "templates": ["{subjects}"], "seeds": [0], "steps": 2}

            # Ingest with the deployment's own preset (no parameter override).
            _wait_runs([_trigger("ingest-subjects/on-demand", {})])
            # Two discovery runs at once: with --limit 1 each, both workers must take one.
            halves = [ids[:2], ids[2:]]
            _wait_runs([
                _trigger("discover-concepts/on-demand",
                         {"config": {"catalog": catalog_uri, "model": model, "subjects": half, "discovery": fast}})
                for half in halves
            ])
            _wait_runs([_trigger("generate-combinations/on-demand",
                                 {"config": {"catalog": catalog_uri, "model": model, "subjects": ids, "discovery": fast, "grid": grid}})])
            _wait_runs([_trigger("score-generations/on-demand", {})])
            _wait_runs([_trigger("compact-catalog/daily", {"config": {"catalog": catalog_uri, "grace_s": 0}})])
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()

    # Count what each worker handed to infrastructure, not what it began to submit: both workers
    # can log "submitting flow run X" for the same run, and the loser of the race to propose
    # Pending aborts (seen once in a slow run: 7 "submitting" lines for 6 runs).
    taken = {
        name: re.findall(r"Flow run '([\w-]+)' submitted to infrastructure", (tmp_path / f"{name}.log").read_text())
        for name in ("worker-a", "worker-b")
    }
    assert all(taken.values()), f"both workers should take work: {taken}"
    assert sum(len(v) for v in taken.values()) == 6

    catalog = load_catalog(catalog_uri)
    assert catalog.query("SELECT count(*) AS n FROM subjects").to_pylist() == [{"n": 4}]
    assert catalog.query("SELECT count(*) AS n FROM concept_masks").to_pylist() == [{"n": 4}]
    # C(4,1) + C(4,2) = 10 combinations × 1 template × 1 seed
    assert catalog.query("SELECT count(*) AS n FROM generations").to_pylist() == [{"n": 10}]
    scored = catalog.query(
        "SELECT count(DISTINCT generation) AS n FROM clip_scores WHERE metric = 'presence'"
    ).to_pylist()
    assert scored == [{"n": 10}]
    # the compaction deployment left one file per table, every row still there
    assert all(len(catalog.store.snapshot(t).all) <= 1 for t in ("generations", "clip_scores", "concept_masks"))
