"""A page opened in headless Chromium, driven over the DevTools protocol (https://chromedevtools.github.io/devtools-protocol/).

Debian's `chromium` package (`make test-slow` installs it when missing) and the `websockets`
client Prefect already depends on: no browser download, no Playwright. One browser process
per `open_page`, its own profile folder, killed on exit.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


class Page:
    """One tab: send DevTools commands, evaluate JavaScript, take screenshots."""

    def __init__(self, ws, session_id: str) -> None:
        self._ws = ws
        self._session = session_id
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 60.0) -> dict[str, Any]:
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params or {}, "sessionId": self._session}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self._events.append(message)

    def wait_for_event(self, method: str, *, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._events):
                if event["method"] == method:
                    return self._events.pop(i)
            message = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if "method" in message:
                self._events.append(message)

    def evaluate(self, expression: str, *, timeout: float = 120.0) -> Any:
        """The JSON value of a JavaScript expression (a promise is awaited)."""
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, timeout=timeout
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        """PNG of the viewport."""
        import base64

        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])


@contextlib.contextmanager
def open_page(url: str, *, width: int = 1200, height: int = 1800, timeout: float = 120.0) -> Iterator[Page]:
    """Chromium headless with `url` loaded (its load event fired) in a `width` × `height` viewport."""
    from websockets.sync.client import connect

    binary = chromium_path()
    if binary is None:
        raise RuntimeError("no Chromium on PATH: `apt-get install -y chromium` (make test-slow does it when missing)")
    with tempfile.TemporaryDirectory(prefix="cones-chromium-") as profile:
        proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--hide-scrollbars", "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Chromium did not open its DevTools port (exit code {proc.poll()})")
                time.sleep(0.1)
            port, path = port_file.read_text().splitlines()[:2]
            with connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=timeout) as ws:
                target = _browser_send(ws, "Target.createTarget", {"url": "about:blank"})["targetId"]
                session = _browser_send(ws, "Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
                page = Page(ws, session)
                page.send("Page.enable")
                page.send("Emulation.setDeviceMetricsOverride",
                          {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
                page.send("Page.navigate", {"url": url})
                page.wait_for_event("Page.loadEventFired", timeout=timeout)
                yield page
        finally:
            proc.kill()
            proc.wait(timeout=30)


_browser_ids = itertools.count(10**9)


def _browser_send(ws, method: str, params: dict[str, Any]) -> dict[str, Any]:
    call_id = next(_browser_ids)  # browser-level commands: no session, ids apart from the pages'
    ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
    while True:
        message = json.loads(ws.recv(timeout=60))
        if message.get("id") == call_id:
            if "error" in message:
                raise RuntimeError(f"{method}: {message['error']}")
            return message["result"]
