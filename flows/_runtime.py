"""What every flow shares: the task runner chosen by config, the `gpu` slot, fan-out with progress.

Why batches and an up-front limit (docs/pipeline.md): flows create the `gpu` limit up front
(Prefect's `concurrency()` on a missing limit cost ~1–2 s per call, warning and retrying); a
blocked acquisition backs off for seconds, so tasks take *batches* and the wait is amortised
over many images.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from cones_tasks.config import ClipRef, ModelRef, RunnerConfig
from cones_tasks.neurons.space import NeuronSpace

# The `gpu` slot (why it is not Prefect's `concurrency()`: docs/pipeline.md, "The gpu slot")
from flows._gpu_slot import GPU_LEASE_S, GPU_LIMIT, ProcessGpuSlot, SlotLostError, raise_if_lapsed  # noqa: F401


def _transient(task, task_run, state) -> bool:
    """Retry what a retry can fix (I/O, a worker lost); bad input fails at once with its message."""
    try:
        state.result()
    except (ValueError, LookupError, TypeError):  # config, subject, mask, schema errors
        return False
    except Exception:  # noqa: BLE001 — anything else may be transient
        return True
    return True


# Every pipeline task: retries with exponential backoff and jitter: 2 s, 4 s,
# 8 s ± 50 %. No Prefect result caching: the catalog already makes reruns skip finished work,
# and hashing a batch of a thousand combinations for a cache key is pure overhead.
TASK_OPTIONS = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _transient,
    "cache_policy": NO_CACHE,
}


def build_task_runner(runner: RunnerConfig):
    """ThreadPoolTaskRunner (default), DaskTaskRunner (LocalCluster or an address), or RayTaskRunner."""
    if runner.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=runner.workers)
    if runner.kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise RuntimeError("runner.kind 'dask' needs the dask extra: pip install 'cones[dask]'") from exc
        if runner.address:
            return DaskTaskRunner(address=runner.address)
        api_url = _api_url()
        # Worker *processes* must report task runs to the same Prefect API as this flow; an
        # ephemeral in-process API (no PREFECT_API_URL) cannot be reached from them, so then the
        # LocalCluster runs its workers as threads of this process instead.
        cluster_kwargs: dict[str, Any] = {
            "n_workers": runner.workers or 2,
            "threads_per_worker": 1,
            "dashboard_address": None,
            "processes": api_url is not None,
        }
        if api_url is not None:
            cluster_kwargs["env"] = {"PREFECT_API_URL": api_url}
        return DaskTaskRunner(cluster_kwargs=cluster_kwargs)
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise RuntimeError("runner.kind 'ray' needs the ray extra: pip install 'cones[ray]'") from exc
    if runner.address:
        return RayTaskRunner(address=runner.address)
    _start_local_ray(runner.workers)
    return RayTaskRunner()  # finds Ray initialised: uses it and leaves it running for the next step


def _start_local_ray(workers: int | None) -> None:
    """A local Ray instance for this process, started once and shared by every step of a run.

    RayTaskRunner would start and shut down one per fan-out, four for a customize run. Ray
    shuts this one down when the process exits. `workers` caps its CPUs, so at
    most that many tasks (1 CPU each) run at once; its worker processes inherit this
    process's environment, PREFECT_API_URL included, and report their task runs there.
    """
    import ray

    if ray.is_initialized():
        return
    init: dict[str, Any] = {"include_dashboard": False, "namespace": "prefect", "log_to_driver": False}
    if workers:
        init["num_cpus"] = workers
    ray.init(**init)


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def ensure_concurrency_limit(name: str = GPU_LIMIT, *, slots: int = 1) -> None:
    """Create the global concurrency limit if it is missing; never change one an operator set."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        with contextlib.suppress(ObjectAlreadyExists):  # another flow created it in between
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))


_process_gpu_slot = ProcessGpuSlot()


def gpu_slot():
    """Hold this process's `gpu` slot around model work (see ProcessGpuSlot; a missing limit never fails a run)."""
    return _process_gpu_slot.held()


def fan_out(
    task, calls: Sequence[dict[str, Any]], *, runner: RunnerConfig, label: str, keep_failures: bool = False
) -> list[Any]:
    """Submit `task(**call)` for every call on the configured runner; results in call order.

    keep_failures: a failed call's exception takes its place in the list instead of failing the
    flow, so one bad subject never loses the others. A progress artifact shows
    how many batches are done while the flow fans out.
    """
    if not calls:
        return []
    logger = get_run_logger()
    progress_id = create_progress_artifact(progress=0.0, key=_artifact_key(label), description=f"{label}: batches done (%)")
    results: list[Any] = [None] * len(calls)
    with build_task_runner(runner) as task_runner:
        futures = [task_runner.submit(task, call) for call in calls]
        step = max(1, len(futures) // 20)
        for i, future in enumerate(futures):
            results[i] = future.result(raise_on_failure=not keep_failures)
            if (i + 1) % step == 0 or i + 1 == len(futures):
                update_progress_artifact(progress_id, progress=100.0 * (i + 1) / len(futures))
    logger.info("%s: %d batches done", label, len(calls))
    return results


def _artifact_key(label: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in label.lower()).strip("-") + "-progress"


_cache_lock = threading.Lock()


class _ModelLock:
    """Readers share a loaded model; a writer has it alone (writers first once one waits).

    Generation only reads the UNet: its concepts travel in each call's cross_attention_kwargs
    (cones_tasks.neurons.processor), so generation threads share the model, and so does hashing
    its weights. Discovery swaps K/V weights into the modules for its forwards
    (torch.func.functional_call), which a concurrent reader would see, so it holds the model alone.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(lambda: not self._writing and not self._readers)
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@functools.lru_cache(maxsize=2)
def _load_model(ref: ModelRef, pid: int):
    # Imported here, not at the top: the loaders bring diffusers and open_clip (seconds to import), which the
    # flows that run no model (ingest, compact) and `cones run` of them would otherwise load for nothing.
    from cones_tasks.loading import load_diffusion_model

    model = load_diffusion_model(ref.path, device=ref.device, dtype=getattr(torch, ref.dtype), trust_pickle=ref.trust_pickle)
    return model, _ModelLock()


@functools.lru_cache(maxsize=2)
def _load_clip(ref: ClipRef, pid: int):
    from cones_tasks.loading import load_clip_scorer  # not at the top: as in _load_model

    scorer = load_clip_scorer(ref.model_name, ref.weights_path, device=ref.device, trust_pickle=ref.trust_pickle)
    return scorer, threading.Lock()


@contextlib.contextmanager
def _exclusive(loaded) -> Iterator[Any]:
    model, lock = loaded
    # The process's shared `gpu` slot, then the model's lock: threads of one process queue on the
    # lock (woken at once on release) instead of polling the API limit, whose back-off would leave
    # the model idle between batches. The slot arbitrates between processes and machines.
    with _process_gpu_slot(), lock:
        lease = _process_gpu_slot.ensure()  # lapsed while this thread queued on the lock: re-acquired first
        yield model
        raise_if_lapsed(lease)  # lapsed while the model ran: the step fails and is retried, never goes on as if held


@contextlib.contextmanager
def model_session(ref: ModelRef, *, shared: bool = False) -> Iterator[Any]:
    """The diffusion model for `ref`, loaded once per process, held inside one `gpu` slot.

    shared: for work that only reads the model (generation: concepts travel per call, never in the
    modules), so threads of one process generate at once. Otherwise the model is held alone
    (discovery: see _ModelLock).
    """
    with _cache_lock:
        model, lock = _load_model(ref, os.getpid())
    with _process_gpu_slot(), (lock.shared() if shared else lock.exclusive()):
        lease = _process_gpu_slot.ensure()  # lapsed while this thread queued on the lock: re-acquired first
        yield model
        raise_if_lapsed(lease)  # lapsed while the model ran: the step fails and is retried, never goes on as if held


def clip_session(ref: ClipRef):
    """The open_clip scorer for `ref`, loaded once per process, inside one `gpu` slot."""
    with _cache_lock:
        loaded = _load_clip(ref, os.getpid())
    return _exclusive(loaded)


def fan_out_stream(task, calls: Iterable[dict[str, Any]], *, runner: RunnerConfig, label: str, most_calls: int | None = None) -> list[Any]:
    """`fan_out` for calls planned while earlier ones run: each is submitted as `calls` yields it.

    At most `window` calls are in flight (submitted, not yet collected), so memory holds a window
    of batches, not the grid (docs/scale.md); `calls` is advanced only when there is room, so
    planning the next chunk overlaps with the batches already running. most_calls: an upper
    bound for the progress artifact (the grid before skipping what the catalog already holds).
    """
    logger = get_run_logger()
    workers = runner.workers or os.cpu_count() or 1
    window = max(64, 4 * workers)
    progress_id = None
    results: list[Any] = []
    in_flight: collections.deque = collections.deque()
    step = max(1, (most_calls or 0) // 20)

    def collect_oldest() -> None:
        nonlocal progress_id
        results.append(in_flight.popleft().result(raise_on_failure=True))
        if most_calls and len(results) % step == 0:
            if progress_id is None:
                progress_id = create_progress_artifact(progress=0.0, key=_artifact_key(label), description=f"{label}: batches done (%)")
            update_progress_artifact(progress_id, progress=min(100.0, 100.0 * len(results) / most_calls))

    with build_task_runner(runner) as task_runner:
        for call in calls:
            in_flight.append(task_runner.submit(task, call))
            while len(in_flight) >= window:
                collect_oldest()
        while in_flight:
            collect_oldest()
    if progress_id is not None:
        update_progress_artifact(progress_id, progress=100.0)
    logger.info("%s: %d batches done", label, len(results))
    return results


@functools.lru_cache(maxsize=4)
def _space(ref: ModelRef, attention: str, pid: int):
    with _cache_lock:
        model, lock = _load_model(ref, pid)
    with lock.shared():  # not while a discovery has its own K/V weights swapped in
        return NeuronSpace.from_unet(model.unet, attention=attention)


def neuron_space(ref: ModelRef, attention: str):
    """The model's neuron space (its fingerprint hashes the weights), built once per process.

    No `gpu` slot: hashing weights is host work, and taking the slot here only to give it back
    before the batches cost the flow a refused re-acquisition, ~2 s, every run (profiled with
    `cones bench fanout`; see flows._gpu_slot.ProcessGpuSlot).
    """
    return _space(ref, attention, os.getpid())
