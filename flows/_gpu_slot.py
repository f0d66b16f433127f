"""The `gpu` slot: one slot of a Prefect global concurrency limit, held by a process around model work.

Why not `prefect.concurrency.sync.concurrency()` (docs/pipeline.md, "The gpu slot"): a process
keeps its slot while any of its threads does or awaits model work, so the slot outlives the
task that took it. Prefect records every lease it grants on the *acquiring task run's*
`ConcurrencyContext` and releases it when that task run ends. The first task to finish gave
the process's slot back while its sibling tasks still used the model; the renewal thread then
met "410 Gone" and Prefect logged "Concurrency lease renewal failed - slots are no longer
reserved" with tracebacks, while a second run could take the device. This module holds the
lease itself, through Prefect's client API: acquire (waiting out 423 Locked), renew, release,
owned by the process and by no task run.

A lease the server no longer knows (renewals failed until it expired and the server's
repossessor took it back, or an operator reset the limit) is logged once, one line, and
marked lapsed: the next model session re-acquires the slot before it touches the model, and
a session that ran while the slot lapsed fails with `SlotLostError`, which the pipeline
tasks' retry condition retries.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

GPU_LIMIT = "gpu"
# A run killed while it holds the `gpu` slot (SIGKILL, the out-of-memory killer) never releases it:
# the Prefect server takes it back once the slot's lease runs out (its repossessor service looks
# every 15 s; https://docs.prefect.io/v3/develop/global-concurrency-limits). Prefect's default
# lease is 300 s, so every other run waited up to ~5 min after such a crash. 60 s is the shortest
# lease Prefect's API accepts (a shorter one is refused with 422).
GPU_LEASE_S = 60.0
# Renewals per lease: at 4, three renewals in a row can be late or fail (a server busy for ~45 s)
# before the lease runs out; Prefect's own loop renews once, at 3/4 of the lease.
RENEWALS_PER_LEASE = 4
# The longest wait between two acquisition attempts when the limit is full. The server's
# Retry-After grows with the limit's average occupancy (up to 30 s); a model session is long,
# so polling every few seconds costs nothing and a freed slot is not left idle for half a minute.
MAX_ACQUIRE_WAIT_S = 5.0

logger = logging.getLogger("prefect.cones.gpu-slot")  # under `prefect`: shown by Prefect's console handler


class SlotLostError(RuntimeError):
    """The `gpu` slot's lease lapsed while this task used the model: another run may have taken the device.

    A RuntimeError, so the pipeline tasks' retry condition (flows._runtime._transient) retries the task,
    which re-acquires the slot first.
    """


class GpuLease:
    """One acquired lease on `limit`, renewed by a daemon thread until released.

    `lapsed` is set when the server no longer holds the lease (answered 404/410, or every renewal failed
    until the lease's own end); it is logged once, one line.
    """

    def __init__(self, lease_id: UUID | None, *, limit: str, lease_s: float, renew_every_s: float) -> None:
        self.lease_id = lease_id
        self.limit = limit
        self.lease_s = lease_s
        self.renew_every_s = renew_every_s
        self.renewals = 0
        self._lapsed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lapsed(self) -> bool:
        return self._lapsed.is_set()

    def start_renewing(self) -> None:
        if self.lease_id is None:
            return
        # The acquiring thread's context carries Prefect's settings (its API URL); the thread is not a task
        # run's and outlives the task that started it.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._renew_loop,), name=f"gpu-slot-renewal-{self.lease_id}", daemon=True
        )
        self._thread.start()

    def _renew_loop(self) -> None:
        import httpx
        from prefect.client.orchestration import get_client

        expires = time.monotonic() + self.lease_s
        with get_client(sync_client=True) as client:
            while not self._stop.wait(self.renew_every_s):
                try:
                    client.renew_concurrency_lease(lease_id=self.lease_id, lease_duration=self.lease_s)
                except httpx.HTTPStatusError as exc:
                    if exc.response.status_code in (404, 410):
                        self._lapse("the server no longer holds it (it ran out and was taken back, or the limit was reset)")
                        return
                    failure = f"HTTP {exc.response.status_code}"
                except Exception as exc:  # noqa: BLE001 — a renewal that fails is retried until the lease's end
                    failure = f"{type(exc).__name__}: {exc}"
                else:
                    self.renewals += 1
                    expires = time.monotonic() + self.lease_s
                    continue
                if time.monotonic() >= expires:
                    self._lapse(f"every renewal failed for {self.lease_s:.0f} s (last: {failure})")
                    return

    def _lapse(self, why: str) -> None:
        if self._stop.is_set() or self._lapsed.is_set():
            return
        self._lapsed.set()
        logger.warning(
            "the %r slot's lease %s lapsed: %s; the next model step re-acquires the slot, and a step that "
            "ran without it fails and is retried",
            self.limit, self.lease_id, why,
        )

    def release(self) -> None:
        """Stop renewing and give the slot back (a lapsed lease has nothing to give back)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lease_id is None or self.lapsed:
            return
        import httpx
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                client.release_concurrency_slots_with_lease(lease_id=self.lease_id)
        except httpx.HTTPError as exc:  # the server takes it back when the lease runs out
            logger.warning("could not release the %r slot (%s); the server takes it back within %.0f s",
                           self.limit, exc, self.lease_s)


def acquire_lease(limit: str = GPU_LIMIT, *, lease_s: float = GPU_LEASE_S, renew_every_s: float | None = None) -> GpuLease:
    """Wait for one slot of `limit` and return its lease, already renewing.

    A limit that does not exist holds nothing (lease_id None): a missing limit never fails a run.
    """
    import httpx
    from prefect.client.orchestration import get_client

    renew_every_s = lease_s / RENEWALS_PER_LEASE if renew_every_s is None else renew_every_s
    with get_client(sync_client=True) as client:
        while True:
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[limit], slots=1, mode="concurrency", lease_duration=lease_s
                )
                break
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:  # 423 Locked: every slot is taken
                    raise
                time.sleep(min(MAX_ACQUIRE_WAIT_S, float(exc.response.headers.get("Retry-After", 1.0))))
    body: dict[str, Any] = response.json()
    lease = GpuLease(
        UUID(body["lease_id"]) if body.get("limits") else None, limit=limit, lease_s=lease_s, renew_every_s=renew_every_s
    )
    lease.start_renewing()
    return lease


class ProcessGpuSlot:
    """One `gpu` slot held by this process while any of its threads does or awaits model work.

    Measured with Prefect 3.9's `concurrency()` on its SQLite server: re-acquiring a slot right
    after releasing one was answered 503 and retried ~2 s later, every time. Per batch that left the model idle
    2 s between batches (13 % of the fan-out benchmark). Threads of one process share one model
    (generating together, or queued on its lock behind a discovery), so the process keeps its slot
    while any thread uses or awaits it and gives it back when the last one is done: the limit
    counts processes on the device.

    Outside a Prefect task run (a task's `.fn` called directly: tests, the fan-out benchmark's
    baseline) there is no run to account for and nothing is acquired.
    """

    def __init__(self, limit: str = GPU_LIMIT, *, lease_s: float = GPU_LEASE_S, renew_every_s: float | None = None) -> None:
        self.limit = limit
        self.lease_s = lease_s
        self.renew_every_s = renew_every_s
        self._lock = threading.Lock()
        self._users = 0
        self._lease: GpuLease | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        """Count this thread as a user of the slot, acquiring it if it is the first."""
        with self._lock:
            if self._users == 0:
                self._lease = self._acquire()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._lease is not None:
                    self._lease.release()
                    self._lease = None

    def ensure(self) -> GpuLease | None:
        """The live lease, re-acquired first if it lapsed; call it right before touching the model."""
        with self._lock:
            if self._lease is not None and self._lease.lapsed:
                self._lease.release()
                self._lease = self._acquire()
            return self._lease

    def _acquire(self) -> GpuLease | None:
        from prefect.context import TaskRunContext

        if TaskRunContext.get() is None:
            return None
        return acquire_lease(self.limit, lease_s=self.lease_s, renew_every_s=self.renew_every_s)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the slot around model work: re-acquired first if it lapsed, `SlotLostError` if it lapsed during the work."""
        with self():
            lease = self.ensure()
            yield
            raise_if_lapsed(lease)


def raise_if_lapsed(lease: GpuLease | None) -> None:
    """After model work: fail (retryably) if the slot lapsed while the work ran, rather than go on as if it held."""
    if lease is not None and lease.lapsed:
        raise SlotLostError(
            f"the {lease.limit!r} slot's lease lapsed while this step used the model; the step is retried with the slot"
        )
