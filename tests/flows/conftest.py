"""Real Prefect for flow tests: one temporary API server per test session (~10 s to start), or a full
`prefect server start` for the tests that need its services (workers, lease expiry)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cones_runs import free_port, wait_healthy


@pytest.fixture(scope="session")
def prefect_api():
    """A Prefect test harness; PREFECT_API_URL is also exported so Dask worker processes report to it."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls offline
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    previous = os.environ.get("PREFECT_API_URL")
    with prefect_test_harness(server_startup_timeout=120):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        try:
            yield PREFECT_API_URL.value()
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The toy architecture with random weights, saved in diffusers layout (what load_diffusion_model reads)."""
    from cones_tasks.toyworld.architecture import build_scheduler, build_text_encoder, build_unet
    from cones_tasks.toyworld.train_model import write_pipeline

    out = tmp_path_factory.mktemp("tiny-model")
    write_pipeline(out, build_unet(seed=0), build_text_encoder(seed=0), build_scheduler())
    return out


@pytest.fixture()
def prefect_server(tmp_path):
    """`prefect server start` on a random loopback port with its own PREFECT_HOME; yields the env to use.

    Unlike prefect_api's temporary server, it runs the server's background services (the
    repossessor that takes back expired concurrency leases, the scheduler)."""
    yield from _prefect_server(tmp_path)


@pytest.fixture()
def prefect_server_watchful(tmp_path):
    """`prefect_server` whose repossessor looks for expired leases every second, not every 15 s: a lease
    that runs out is taken back (and seen to be) at once."""
    yield from _prefect_server(tmp_path, PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="1")


def _prefect_server(tmp_path, **extra: str):
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        **extra,
    }
    log = open(tmp_path / "server.log", "wb")
    prefect = str(Path(sys.executable).with_name("prefect"))
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_healthy(env["PREFECT_API_URL"], proc)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`cones demo --json` once per session (~3 min on 2 cores), as a new user runs it: a process of its own
    with its own temporary Prefect server and a fresh PREFECT_HOME. Its printed result, everything it
    printed (`output`: stdout and stderr), and its workdir as `workdir`.

    Shared by the demo's own test and the browser and export tests of its catalog."""
    import json

    from cones_runs import CONES, REPO

    workdir = tmp_path_factory.mktemp("demo") / "demo"
    env = {
        **{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
        "PREFECT_HOME": str(tmp_path_factory.mktemp("demo-prefect-home")),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # 2 shared cores
    }
    done = subprocess.run([CONES, "demo", "--workdir", str(workdir), "--json"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=1800)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    return {**json.loads(done.stdout[done.stdout.index("{"):]), "workdir": workdir, "output": output}
