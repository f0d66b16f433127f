"""A temporary Prefect API server that lives and dies with the run that started it.

With no `PREFECT_API_URL`, Prefect 3 starts a temporary API server of its own
(`prefect.server.api.server.SubprocessASGIServer`, "ephemeral mode") and stops it from an
`atexit` hook. A run killed by SIGKILL (an out-of-memory killer, a scheduler's timeout,
`kill -9`) never runs that hook, so the server, adopted by init, kept its port and its
database for good. `cones run` starts the server itself instead, tied to the run by the
operating system:

- Linux: the server asks the kernel for a parent-death signal, `prctl(PR_SET_PDEATHSIG,
  SIGKILL)` (man 2 PR_SET_PDEATHSIG), so it is killed the moment its parent dies, whatever
  killed the parent, even if the server itself is wedged.
- Everywhere (and the only tie on macOS, the BSDs and Windows, which have no such signal): the
  server's stdin is a pipe whose write end only the parent holds; nothing is ever written to
  it. When the parent exits, however it exits, the OS closes that end, a watchdog thread in the
  server reads end-of-file and exits the process at once. dask.distributed ties its worker
  processes to their nanny the same way (`AsyncProcess._immediate_exit_when_closed`). This
  needs the server's Python to be able to run that thread: a server wedged while holding the
  GIL would outlive the run there, where on Linux the kernel's signal still kills it.

Each run gets a server of its own, on a port the kernel has just handed out, with its own
in-memory database: it never talks to a server left over from an earlier crash (a half-dead
one answers nothing, or holds a lock on the profile's SQLite file), and two runs started at
once never contend for one database. The price is that the run's Prefect history ends with
the run, as its server does; for a history that stays, run `prefect server start` and set
`PREFECT_API_URL` (https://docs.prefect.io/v3/concepts/server). A user's `PREFECT_API_URL`
is never touched: their server is theirs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

# linux/prctl.h
_PR_SET_PDEATHSIG = 1
# uvicorn.config.STARTUP_FAILURE: the port was taken between our probe and the server's bind
_STARTUP_FAILURE = 3
_ATTEMPTS = 3


@contextlib.contextmanager
def temporary_api_server() -> Iterator[str | None]:
    """Point Prefect at a server tied to this process for the block; yields its API URL.

    Yields None and changes nothing when `PREFECT_API_URL` is set (environment or profile), or
    when the profile forbids a temporary server (Prefect then says how to configure one).
    Call it from the main thread: Linux sends the parent-death signal when the *thread* that
    started the server ends (man 2 PR_SET_PDEATHSIG), so from any other thread only the pipe
    watchdog ties the server to the run.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield None
        return
    server = _start()
    try:
        url = f"http://127.0.0.1:{server.port}/api"
        with _api_url_everywhere(url):
            try:
                yield url
            finally:
                _drain_prefect_workers()
    finally:
        server.stop()


class _Server:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down cleanly), SIGKILL after 10 s; then close the pipe."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()


def _start() -> _Server:
    import httpx
    from prefect.logging import get_logger
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    logger = get_logger("temporary-server")
    timeout = float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    for _ in range(_ATTEMPTS):
        port = _free_port()
        process = _spawn(port)
        server = _Server(process, port)
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False) as client:  # loopback: never through an HTTP proxy
            while time.monotonic() < deadline and process.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                        logger.info(
                            "Started a temporary Prefect server on http://127.0.0.1:%d (pid %d); it stops with "
                            "this run. Set PREFECT_API_URL to use a server of your own.", port, process.pid,
                        )
                        return server
                time.sleep(0.1)
        server.stop()
        if process.returncode != _STARTUP_FAILURE:
            break
    raise RuntimeError(
        f"the temporary Prefect server did not answer within {timeout:.0f} s (exit code {process.returncode}); "
        "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS on a busy machine, or set PREFECT_API_URL "
        "to a server started with `prefect server start`"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(port: int) -> subprocess.Popen[bytes]:
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        # What Prefect's own temporary server gets (SubprocessASGIServer._run_uvicorn_command) ...
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        # ... but a database of its own, gone with it: nothing shared with a stale server.
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///:memory:",
    }
    env.pop("PREFECT_API_URL", None)
    args = [sys.executable, "-m", "flows._api_server", "--port", str(port), "--parent", str(os.getpid())]
    if threading.current_thread() is threading.main_thread():
        args.append("--pdeathsig")
    return subprocess.Popen(args, stdin=subprocess.PIPE, env=env)


def _drain_prefect_workers() -> None:
    """Send the logs and events Prefect still queues while their server is up (as prefect_test_harness does)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


@contextlib.contextmanager
def _api_url_everywhere(url: str) -> Iterator[None]:
    """PREFECT_API_URL for this process's threads and for the processes it starts (Dask workers).

    Prefect builds a process-wide settings context from the environment at import;
    `refresh_global_settings_context` rebuilds it, so threads without a settings context of
    their own (Prefect's log and event workers) see the server too.
    """
    from prefect.context import refresh_global_settings_context

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        refresh_global_settings_context()


# ------------------------------------------------------------------ the server process


def _die_with_parent(parent: int, *, pdeathsig: bool) -> None:
    if pdeathsig and sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # on failure the watchdog below remains
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watchdog() -> None:
        while sys.stdin.buffer.read1(1 << 12):  # nothing is ever written: returns only at end-of-file
            pass
        os._exit(1)  # no shutdown hooks: the run that wanted this server is gone

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows._api_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--pdeathsig", action="store_true")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent, pdeathsig=args.pdeathsig)

    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=args.port,
        log_level="error", lifespan="on",
    )


if __name__ == "__main__":
    main()
