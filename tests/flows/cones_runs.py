"""`cones run` as a real process, for the tests that SIGKILL it: its log as it comes, its process tree.

Linux only (the process tree is read from /proc); the tests that import this skip elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

CONES = str(Path(sys.executable).with_name("cones"))
REPO = Path(__file__).resolve().parents[2]
# Prefect logs the start of every child flow run: "Beginning subflow run 'x' for flow 'discover-concepts'".
SUBFLOW = re.compile(r"Beginning subflow run '[^']*' for flow '([a-z-]+)'")
SERVER = re.compile(r"temporary Prefect server on http://127\.0\.0\.1:(\d+) \(pid (\d+)\)")


def cones_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a `cones` process: one CPU thread, its own PREFECT_HOME, no telemetry."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # 2 shared cores: ~10 s idle, more when busy
    }
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(api_url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until the Prefect API at `api_url` answers /health; fails if `proc` (its server) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {api_url} not healthy after {timeout} s")


class ConesRun:
    """One `cones ...` process in a session of its own; stderr lines are kept with the time they arrived."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            [CONES, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(env), cwd=REPO,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._cursor = 0  # lines before it were seen by wait_for
        self.stdout = ""
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()

    def wait_for(self, pattern: re.Pattern[str] | str, *, timeout: float = 300) -> re.Match[str]:
        """The next stderr line matching `pattern` after the last one waited for; fails if the process ends first."""
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                while self._cursor < len(self.lines):
                    self._cursor += 1
                    if match := pattern.search(self.lines[self._cursor - 1][1]):
                        return match
                if self.proc.poll() is not None and not self._readers[0].is_alive():
                    raise AssertionError(f"cones exited ({self.proc.returncode}) before {pattern.pattern!r}:\n{self.log[-3000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {pattern.pattern!r} within {timeout} s:\n{self.log[-3000:]}")
                self._changed.wait(timeout=0.5)

    def kill(self) -> None:
        """SIGKILL, as an out-of-memory killer or a scheduler's timeout would; then read what it wrote."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.finish(timeout=30)

    def finish(self, *, timeout: float = 600) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"cones did not finish within {timeout} s:\n{self.log[-3000:]}") from None
        for reader in self._readers:
            reader.join(timeout=10)
        return self.proc.returncode

    def result(self) -> dict:
        """The `--json` result a finished run printed."""
        assert self.proc.returncode == 0, f"cones failed ({self.proc.returncode}):\n{self.log[-5000:]}"
        return json.loads(self.stdout[self.stdout.index("{"):])

    def phases(self) -> list[str]:
        """The child flows it began, in order (the last one is where it was when it stopped)."""
        return [m.group(1) for _, line in self.lines if (m := SUBFLOW.search(line))]


# ------------------------------------------------------------------ processes, from /proc


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, session id, start time) of a live or zombie process; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0], int(fields[1]), int(fields[3]), int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """pid → start time of every process below `pid` now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children.setdefault(stat[1], []).append(int(entry))
    found: dict[int, int] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if (stat := _stat(child)) is not None:
            found[child] = stat[3]
            todo.extend(children.get(child, []))
    return found


def session_members(sid: int) -> dict[int, int]:
    """pid → start time of every process still in session `sid` (what a run started, unless it left)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None and stat[2] == sid and stat[0] != "Z":
            out[int(entry)] = stat[3]
    return out


def alive(processes: Mapping[int, int]) -> dict[int, str]:
    """Those of `processes` (pid → start time) still running (zombies hold nothing: they count as gone)."""
    out = {}
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[3] == started and stat[0] != "Z":
            try:
                out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            except FileNotFoundError:
                continue
    return out


def cli_json(result) -> dict:
    """The JSON a `cones … --json` command printed last (CliRunner result): any warning printed before
    it on stdout (under load, Prefect's "Lease not found …") is skipped."""
    text = result.stdout
    return json.loads(text if text.startswith("{") else text[text.rindex("\n{\n") + 1:])
