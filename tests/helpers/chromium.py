"""Headless Chromium for tests: finding the executable, and a minimal Chrome DevTools Protocol client
(websocket-client) for one page target of a Chromium started with a remote-debugging port."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# the flags every test Chromium runs with (no sandbox: tests may run as root in containers)
BASE_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync"]
# and for page renders measured in pixels (the demo report)
FLAGS = [*BASE_FLAGS, "--hide-scrollbars", "--force-device-scale-factor=1"]


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def chromium() -> str:
    """The Chromium executable (``$ADASDE_CHROMIUM``, else the first on PATH, else /usr/bin/chromium); skips the test
    when there is none, except in CI, where a missing Chromium fails."""
    given = os.environ.get("ADASDE_CHROMIUM")
    if given:
        if not os.path.exists(given):
            (pytest.fail if _ci() else pytest.skip)(f"Chromium not found at $ADASDE_CHROMIUM={given}")
        return given
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None and os.path.exists("/usr/bin/chromium"):
        exe = "/usr/bin/chromium"
    if exe is None:
        if _ci():
            pytest.fail("CI: headless Chromium is required for this test but was not found")
        pytest.skip("Chromium not installed (apt-get install chromium); this test needs it")
    return exe


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CDP:
    """A minimal Chrome DevTools Protocol client (websocket-client) for one page target."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.i = 0

    def call(self, method: str, **params: Any) -> dict:
        self.i += 1
        self.ws.send(json.dumps({"id": self.i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expr: str, timeout: float = 30) -> Any:
        r = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True,
                      timeout=int(timeout * 1000))
        if "exceptionDetails" in r:
            raise RuntimeError(f"JS error in {expr[:80]!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 90) -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                v = self.eval(expr)
            except RuntimeError:
                v = None
            if v:
                return v
            time.sleep(0.5)
        raise TimeoutError(f"browser condition not met in {timeout} s: {expr}")

    def close(self) -> None:
        self.ws.close()


@contextmanager
def devtools(profile: Path, *flags: str) -> Iterator[CDP]:
    """A headless Chromium (:data:`BASE_FLAGS` plus ``flags``, profile folder ``profile``) on a free remote-debugging
    port, driven through a :class:`CDP` client on its first page; the browser is stopped on exit."""
    pytest.importorskip("websocket", reason="pip install websocket-client")
    exe = chromium()
    port = free_port()
    proc = subprocess.Popen([exe, *BASE_FLAGS, *flags, f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
                             "--remote-allow-origins=*", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        targets = None
        deadline = time.time() + 60
        while time.time() < deadline and not targets:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    targets = [t for t in json.loads(r.read()) if t.get("type") == "page"]
            except OSError:
                time.sleep(0.3)
        assert targets, "Chromium DevTools endpoint did not come up"
        client = CDP(targets[0]["webSocketDebuggerUrl"])
        try:
            yield client
        finally:
            client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
