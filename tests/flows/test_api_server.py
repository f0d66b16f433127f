"""The temporary Prefect server of a `cones run` without PREFECT_API_URL dies with the run (flows/_api_server.py).

Real `cones` processes, SIGKILLed the way an out-of-memory killer or a scheduler's timeout would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cones_runs import SERVER, SUBFLOW, ConesRun, alive, cones_env, descendants, free_port, session_members, wait_healthy
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, write_subject_folders

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")


def _own_server_env(tmp_path, **extra: str) -> dict[str, str]:
    env = cones_env(tmp_path / "prefect-home", **extra)
    env.pop("PREFECT_API_URL", None)  # the session's test server (prefect_api) must not be used here
    return env


def _subjects(tmp_path, n: int = 2) -> list[dict]:
    chosen = TOY_SUBJECTS[:n]
    folders = write_subject_folders(tmp_path / "subjects", chosen, n=2)
    return [{"subject_id": s.id, "class_word": s.class_word, "uri": str(folders[s.id])} for s in chosen]


def _config(tmp_path, body: dict) -> str:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"catalog": str(tmp_path / "catalog"), **body}))
    return str(path)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sigkilled_customize_leaves_no_process_behind(tmp_path, tiny_model_dir):
    config = _config(tmp_path, {
        "model": {"path": str(tiny_model_dir)},
        "subjects": _subjects(tmp_path),
        "ingest": {"min_side": 16},
        "discovery": {"steps": 2, "batch_size": 2},
        "grid": {"max_k": 2, "steps": 2},
        "scoring": {"judge": True},
    })
    run = ConesRun(["run", "customize", "--config", config], _own_server_env(tmp_path))
    port, server_pid = map(int, run.wait_for(SERVER, timeout=240).groups())
    run.wait_for(SUBFLOW, timeout=120)  # mid-run: child flows under way
    started = descendants(run.pid)
    assert server_pid in started, (server_pid, started)
    assert _port_open(port)

    run.kill()
    deadline = time.monotonic() + 10
    left = {}
    while time.monotonic() < deadline:
        left = alive(started) | alive(session_members(run.pid))
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"still running 10 s after SIGKILL of cones (pid {run.pid}): {left}"
    assert not _port_open(port)


# The context manager entered from a thread other than the main one: Linux's parent-death signal would
# fire when that thread ends, so the server is started without it, as on a platform that has none.
_WITHOUT_PDEATHSIG = """
import threading, time
from flows._api_server import temporary_api_server

def body():
    with temporary_api_server() as url:
        print(url, flush=True)
        time.sleep(600)

worker = threading.Thread(target=body)
worker.start()
worker.join()
"""


def test_without_a_parent_death_signal_the_pipe_watchdog_stops_the_server(tmp_path):
    env = _own_server_env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", _WITHOUT_PDEATHSIG], stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        started = descendants(proc.pid)
        (server,) = [cmd for cmd in alive(started).values() if "flows._api_server" in cmd]
        assert "--pdeathsig" not in server
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while alive(started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(started)


def test_a_stale_server_from_an_earlier_crash_is_not_reused_and_the_run_finishes(tmp_path):
    """What Prefect's own temporary server leaves after a SIGKILL: an orphan on the profile's database,
    here also stopped (SIGSTOP) so that it accepts connections and never answers."""
    env = _own_server_env(tmp_path)
    stale_port = free_port()
    stale = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
         "--port", str(stale_port), "--log-level", "error"],
        env={**env, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1"}, start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{stale_port}/api", stale)
        stale.send_signal(signal.SIGSTOP)
        config = _config(tmp_path, {"subjects": _subjects(tmp_path), "ingest": {"min_side": 16}})
        run = ConesRun(["run", "ingest", "--config", config, "--json"], env)
        assert run.finish(timeout=300) == 0, run.log[-3000:]
        assert run.result()["ingested"] == [s.id for s in TOY_SUBJECTS[:2]]
        port = int(SERVER.search(run.log).group(1))
        assert port != stale_port
        assert stale.poll() is None  # not ours to stop: it belongs to whoever started it
    finally:
        stale.kill()  # SIGKILL ends a stopped process too
        stale.wait()


def test_a_user_set_prefect_api_url_is_left_alone(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    env = cones_env(tmp_path / "prefect-home", PREFECT_API_URL=prefect_api)
    config = _config(tmp_path, {"subjects": _subjects(tmp_path, n=1), "ingest": {"min_side": 16}})
    run = ConesRun(["run", "ingest", "--config", config, "--json"], env)
    assert run.finish(timeout=300) == 0, run.log[-3000:]
    assert SERVER.search(run.log) is None and "temporary server" not in run.log
    with get_client(sync_client=True) as client:  # the run was recorded on the user's server
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["ingest-subjects"])))
    assert any(r.state is not None and r.state.is_completed() for r in runs)


def test_the_context_manager_changes_nothing_under_a_user_server(prefect_api):
    from flows._api_server import temporary_api_server

    before = descendants(os.getpid())
    with temporary_api_server() as url:
        assert url is None and descendants(os.getpid()).keys() <= before.keys()
    assert os.environ["PREFECT_API_URL"] == prefect_api
