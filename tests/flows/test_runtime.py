"""Fan-out machinery under a real Prefect API: threads and a 2-worker Dask LocalCluster (issue #6, item 3)."""

from __future__ import annotations

import os

import pytest
from prefect import flow, task

from cones_tasks.config import RunnerConfig
from flows._runtime import GPU_LIMIT, TASK_OPTIONS, ensure_concurrency_limit, fan_out, gpu_slot


@task
def _square_batch(numbers: list[int]) -> tuple[list[int], int]:
    with gpu_slot():
        return [n * n for n in numbers], os.getpid()


@flow(name="fan-out-probe")
def _probe(runner: RunnerConfig, batches: list[list[int]]) -> list[tuple[list[int], int]]:
    ensure_concurrency_limit(slots=2)
    return fan_out(_square_batch, [{"numbers": b} for b in batches], runner=runner, label="probe")


def test_threads_runner_returns_results_in_call_order(prefect_api):
    batches = [[i, i + 1] for i in range(0, 12, 2)]
    results = _probe(RunnerConfig(kind="threads", workers=2), batches)
    assert [r[0] for r in results] == [[n * n for n in b] for b in batches]


def test_gpu_limit_is_created_once_and_an_operator_setting_is_kept(prefect_api):
    from prefect.client.orchestration import get_client

    ensure_concurrency_limit("gpu-test-limit", slots=3)
    ensure_concurrency_limit("gpu-test-limit", slots=5)  # an existing limit is never overwritten
    ensure_concurrency_limit()
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("gpu-test-limit").limit == 3
        assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit >= 1


@pytest.mark.slow  # ~30 s: a LocalCluster of two worker processes starts; the fast twin checks what it is asked for
def test_two_worker_dask_local_cluster_runs_batches_in_two_processes(prefect_api):
    batches = [[i] for i in range(8)]
    results = _probe(RunnerConfig(kind="dask", workers=2), batches)
    assert [r[0] for r in results] == [[i * i] for i in range(8)]
    pids = {r[1] for r in results}
    assert os.getpid() not in pids and len(pids) == 2


def test_a_dask_runner_asks_for_worker_processes_that_report_to_this_api(prefect_api):
    """The fast twin of the LocalCluster test: the runner the flows build asks for `workers` single-threaded worker
    processes that report their task runs to this flow's Prefect API (a thread-only cluster without one)."""
    pytest.importorskip("prefect_dask")
    from flows._runtime import build_task_runner

    runner = build_task_runner(RunnerConfig(kind="dask", workers=2))
    kwargs = runner.cluster_kwargs
    assert kwargs["n_workers"] == 2 and kwargs["threads_per_worker"] == 1 and kwargs["processes"] is True
    assert kwargs["env"] == {"PREFECT_API_URL": prefect_api}
    assert build_task_runner(RunnerConfig(kind="dask", address="tcp://10.0.0.1:8786")).address == "tcp://10.0.0.1:8786"


def test_ray_without_the_extra_says_how_to_install(monkeypatch):
    """Whether or not the ray extra is installed here: with prefect_ray unimportable (None in sys.modules makes
    `import prefect_ray` raise ImportError, as on a machine without it) the runner names the extra to install."""
    import sys

    from flows._runtime import build_task_runner

    monkeypatch.setitem(sys.modules, "prefect_ray", None)
    with pytest.raises(RuntimeError, match=r"pip install 'cones\[ray\]'"):
        build_task_runner(RunnerConfig(kind="ray"))


_attempts: dict[str, int] = {}


@task(name="flaky", **TASK_OPTIONS)
def _flaky(kind: str) -> int:
    _attempts[kind] = _attempts.get(kind, 0) + 1
    if kind == "io" and _attempts[kind] == 1:
        raise OSError("store briefly unreachable")
    if kind == "bad-input":
        raise ValueError("subject 'x' has no images")
    return _attempts[kind]


@flow(name="retry-probe")
def _retry_probe() -> dict[str, object]:
    io = _flaky.submit("io")
    bad = _flaky.submit("bad-input")
    return {"io": io.result(), "bad": bad.result(raise_on_failure=False)}


def test_transient_errors_are_retried_and_bad_input_fails_at_once(prefect_api):
    result = _retry_probe()
    assert result["io"] == 2  # failed once with OSError, succeeded on the retry
    assert isinstance(result["bad"], ValueError) and _attempts["bad-input"] == 1


def test_model_lock_lets_readers_share_and_keeps_a_writer_alone():
    """Generation threads share a loaded model; a discovery (writer) waits for them and runs alone."""
    import threading
    import time

    from flows._runtime import _ModelLock

    lock = _ModelLock()
    inside: list[str] = []
    peak = {"readers": 0, "with_writer": 0}
    guard = threading.Lock()

    def use(kind: str) -> None:
        with lock.shared() if kind == "read" else lock.exclusive():
            with guard:
                inside.append(kind)
                peak["readers"] = max(peak["readers"], inside.count("read"))
                if "write" in inside and len(inside) > 1:
                    peak["with_writer"] += 1
            time.sleep(0.05)
            with guard:
                inside.remove(kind)

    threads = [threading.Thread(target=use, args=(k,)) for k in ["read"] * 3 + ["write"] + ["read"] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak["readers"] >= 2  # readers overlapped
    assert peak["with_writer"] == 0  # nobody was inside with the writer
