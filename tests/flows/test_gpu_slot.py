"""The `gpu` slot holds for as long as its process does model work, and a lapse is one line, then a retry
(flows/_gpu_slot.py; docs/pipeline.md, "The gpu slot"). Real Prefect servers throughout."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prefect import flow, task

from flows._gpu_slot import GPU_LIMIT, ProcessGpuSlot, SlotLostError
from flows._runtime import _transient, ensure_concurrency_limit
from log_lines import mentions_http_410

WAITER = Path(__file__).with_name("slot_waiter.py")


def _active_slots() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots


def _revoke(lease_id) -> None:
    """What the server's repossessor does to a lease that ran out: free its slot and forget it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease_id=lease_id)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture()
def prefect_records():
    """Every record logged under `prefect` while the test runs (Prefect's loggers do not propagate to root)."""
    handler = _Records()
    logger = logging.getLogger("prefect")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def test_the_slot_stays_held_after_the_task_that_took_it_ends(prefect_api):
    """Prefect's `concurrency()` released a lease when the task run that took it ended, so the first of a
    process's tasks to finish gave the slot back while its siblings still used the model (then "410 Gone")."""
    slot = ProcessGpuSlot()
    seen: list[int] = []

    @task
    def short() -> None:
        with slot.held():
            time.sleep(0.5)

    @task
    def long() -> None:
        time.sleep(0.2)  # joins while `short` holds the slot it took
        with slot.held():
            for _ in range(6):
                seen.append(_active_slots())
                time.sleep(0.5)

    @flow(name="slot-sharing-probe")
    def probe() -> int:
        ensure_concurrency_limit()
        first, second = short.submit(), long.submit()
        first.result()
        second.result()
        return _active_slots()

    after = probe()
    assert seen == [1] * 6, seen  # held the whole time, also after `short` ended
    assert after == 0  # and given back once the last user left


def test_a_lapsed_slot_is_one_log_line_then_a_retry_that_holds_it(prefect_api, prefect_records):
    slot = ProcessGpuSlot(renew_every_s=0.2)  # renew often: the lapse is seen within a second
    attempts: list[dict] = []

    @task(retries=1, retry_delay_seconds=0, retry_condition_fn=_transient)
    def model_step() -> int:
        with slot.held():
            lease = slot.ensure()
            attempt = {"active_at_start": _active_slots()}
            attempts.append(attempt)
            if len(attempts) == 1:
                _revoke(lease.lease_id)
                deadline = time.monotonic() + 10
                while not lease.lapsed and time.monotonic() < deadline:
                    time.sleep(0.05)
                attempt["lapsed"] = lease.lapsed
                # a step queued behind this one re-acquires before it touches the model
                attempt["reacquired"] = slot.ensure() is not lease and _active_slots() == 1
        return len(attempts)

    @flow(name="slot-lapse-probe")
    def probe() -> int:
        ensure_concurrency_limit()
        return model_step()

    assert probe() == 2  # attempt 1 failed with SlotLostError (retryable), attempt 2 succeeded
    assert attempts[0] == {"active_at_start": 1, "lapsed": True, "reacquired": True}
    assert attempts[1]["active_at_start"] == 1
    lapse_lines = [r for r in prefect_records if "lapsed" in r.getMessage() and r.name.endswith("gpu-slot")]
    assert len(lapse_lines) == 1 and lapse_lines[0].exc_info is None and "\n" not in lapse_lines[0].getMessage()
    assert not [r for r in prefect_records if "renewal failed" in r.getMessage() or mentions_http_410(r.getMessage())]
    retried = [r for r in prefect_records if SlotLostError.__name__ in r.getMessage() and "Retry 1/1" in r.getMessage()]
    assert len(retried) == 1, "attempt 1 should have failed with SlotLostError and been retried"


def _hog_cores(stop: threading.Event) -> list:
    """Both cores busy: one spinning process per core, torch matmuls on every core in this process, and a
    pure-Python thread that competes for this process's GIL. Returns what to stop."""
    import torch

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]

    def matmuls() -> None:
        a = torch.randn(384, 384)
        while not stop.is_set():
            a = torch.tanh(a @ a)

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    threads = [threading.Thread(target=matmuls, daemon=True), threading.Thread(target=spin, daemon=True)]
    for thread in threads:
        thread.start()
    return [*hogs, *threads]


@pytest.mark.slow
def test_the_slot_holds_for_three_leases_on_saturated_cores(prefect_server_watchful, tmp_path):
    """A task holds the slot for more than 3 leases while both cores are saturated, on a full Prefect server
    whose repossessor takes back an expired lease within a second; a sibling task of the same process ends
    meanwhile (what released the slot before). The slot is held throughout, and a second run waiting on it
    starts only after the first releases it. Prefect's API accepts no lease under 60 s: ~3.5 min."""
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = prefect_server_watchful
    lease_s = 60.0
    hold_s = 3 * lease_s + 10
    slot = ProcessGpuSlot(lease_s=lease_s)
    stop = threading.Event()
    samples: list[tuple[float, int]] = []
    marks: dict[str, float] = {}

    @task
    def sibling() -> None:
        with slot.held():
            time.sleep(2)

    @task
    def hold() -> int:
        with slot.held():
            marks["acquired"] = time.time()
            lease = slot.ensure()
            waiter_env = {**env, "PYTHONPATH": os.pathsep.join(sys.path)}
            marks["waiter"] = time.time()
            waiter = subprocess.Popen([sys.executable, str(WAITER)], env=waiter_env, stdout=subprocess.PIPE, text=True)
            end = time.monotonic() + hold_s
            while time.monotonic() < end:
                samples.append((time.time(), _active_slots()))
                time.sleep(1)
            renewals, lapsed = lease.renewals, lease.lapsed
            marks["released"] = time.time()  # just before the release: nobody may get the slot earlier
        out, _ = waiter.communicate(timeout=300)
        marks.update({f"waiter_{k}": v for k, v in json.loads(out.strip().splitlines()[-1]).items()})
        assert not lapsed
        return renewals

    @flow(name="slot-hold-probe")
    def probe() -> int:
        ensure_concurrency_limit()
        held, other = hold.submit(), sibling.submit()
        other.result()
        return held.result()

    hogs = _hog_cores(stop)
    try:
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            renewals = probe()
            APILogWorker.drain_all(timeout=10)  # while its server is up
    finally:
        stop.set()
        for hog in hogs:
            if isinstance(hog, subprocess.Popen):
                hog.kill()
                hog.wait()
    print(f"\nheld {marks['released'] - marks['acquired']:.0f} s ({(marks['released'] - marks['acquired']) / lease_s:.1f} leases), "
          f"{renewals} renewals, active slots sampled {len(samples)}× (min {min(s for _, s in samples)}); "
          f"second run asked at +{marks['waiter_asked'] - marks['acquired']:.0f} s, got it "
          f"{marks['waiter_got'] - marks['released']:.1f} s after the release")
    assert marks["released"] - marks["acquired"] >= 3 * lease_s
    assert all(active == 1 for _, active in samples), [s for s in samples if s[1] != 1]
    assert renewals >= 3 * 4 - 1
    assert marks["waiter_asked"] < marks["acquired"] + 2 * lease_s  # it really waited, for more than a lease
    assert marks["waiter_got"] >= marks["released"]
