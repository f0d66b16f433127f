"""A run's output: Prefect's one-line progress on the console, the full log (tracebacks too) in a file.

Prefect logs a failed task or flow with its traceback, once per task, once per enclosing flow,
and the CLI printed the exception once more: a missing model folder cost 586 lines before the
one line that named the fix. During `cones run` and `cones demo` the console shows each record
as one line (an exception as `Type: message`, no traceback); every record, tracebacks
included, goes to the run's log file; at the end a failed run prints one line per failed task
and where that file is, and exits 1 (docs/pipeline.md, "When a run fails").
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# "Finished in state Failed('Task run encountered an exception ModelLoadError: …')" (or "…" when the message
# holds a quote): the exception, after the state name
_FAILED = re.compile(r"Finished in state (?:Failed|Crashed)\((?P<q>['\"])(?:Task run encountered an exception )?(?P<why>.*)(?P=q)\)$", re.S)


def log_dir() -> Path:
    """Where run logs go: $CONES_LOG_DIR, else $XDG_STATE_HOME/cones/logs (~/.local/state/cones/logs)."""
    if folder := os.environ.get("CONES_LOG_DIR"):
        return Path(folder).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "cones" / "logs"


@dataclass
class RunLog:
    path: Path
    failed_tasks: list[tuple[str, str]] = field(default_factory=list)  # (task run name, why)
    to_file: logging.Handler | None = None

    def failure_lines(self, exc: BaseException) -> list[str]:
        """One line per failed task (or the run's own exception when no task failed), then the log's path.

        The exception that ended the run goes to the log file with its traceback (and only there)."""
        if self.to_file is not None:
            record = logging.LogRecord("cones", logging.ERROR, __file__, 0, "the run failed", None, (type(exc), exc, exc.__traceback__))
            self.to_file.handle(record)
        lines = [f"error: task {name} failed: {why}" for name, why in self.failed_tasks]
        if not lines:
            lines = [f"error: {_one_line(exc)}"]
        return [*lines, f"full log (with tracebacks): {self.path}"]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _OneLineFormatter(logging.Formatter):
    """Wraps a console handler's formatter: the record's message, its exception as `Type: message`, no traceback."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        exc = record.exc_info[1] if record.exc_info else None
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            text = self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        first, _, rest = text.partition("\n")
        if exc is not None and type(exc).__name__ not in first:
            first += f" ({_one_line(exc)})"
        return first + (" […]" if rest.strip() else "")


class _FailedTasks(logging.Handler):
    def __init__(self, run: RunLog) -> None:
        super().__init__(logging.ERROR)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        if (match := _FAILED.search(record.getMessage())) is not None:
            name = getattr(record, "task_run_name", None) or record.name
            self.run.failed_tasks.append((name, " ".join(match.group("why").split())))


@contextlib.contextmanager
def run_log(name: str, *, folder: Path | None = None) -> Iterator[RunLog]:
    """Log this run to `<folder>/<name>-<time>-<pid>.log` and keep Prefect's console output to one line a record."""
    import prefect  # noqa: F401 — configures Prefect's logging (its console handler) first, so it is not redone under us

    folder = folder if folder is not None else log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    run = RunLog(folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    root = logging.getLogger()
    to_file = logging.FileHandler(run.path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(threadName)s | %(name)s - %(message)s"))
    # First among root's handlers: it sees each record before any console handler formats it.
    root.handlers.insert(0, to_file)
    run.to_file = to_file
    failed = _FailedTasks(run)
    task_runs = logging.getLogger("prefect.task_runs")
    task_runs.addHandler(failed)
    consoles = [h for h in root.handlers if _is_console(h)]
    formatters = {h: h.formatter for h in consoles}
    for handler in consoles:
        handler.setFormatter(_OneLineFormatter(handler.formatter or logging.Formatter()))
    try:
        yield run
    finally:
        for handler, formatter in formatters.items():
            handler.setFormatter(formatter)
        task_runs.removeHandler(failed)
        root.removeHandler(to_file)
        to_file.close()


def _is_console(handler: logging.Handler) -> bool:
    from prefect.logging.handlers import PrefectConsoleHandler

    return isinstance(handler, PrefectConsoleHandler) or (
        type(handler) is logging.StreamHandler and getattr(handler, "stream", None) is not None
    )
