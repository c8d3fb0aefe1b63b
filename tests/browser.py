"""A headless Chromium for tests, driven over the Chrome DevTools Protocol (CDP) with ``websockets``.

Only what the report tests need: open a page, record every request it makes, wait for ``load``, evaluate
JavaScript, take a screenshot. Debian's ``chromium`` package works offline (browser downloads such as
playwright's do not), so tests skip with :data:`MISSING` when :func:`find_chromium` finds none.

    with Browser() as browser:
        page = browser.new_page()
        page.goto("file:///tmp/report/index.html")
        assert page.evaluate("document.title") == "..."
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")
MISSING = ("chromium not found: apt-get install chromium (or set RGI_CHROMIUM to a Chrome binary) to run the "
           "browser tests")


def find_chromium() -> str | None:
    """A Chromium or Chrome binary: ``$RGI_CHROMIUM``, else the first of :data:`CANDIDATES` on the PATH."""
    if os.environ.get("RGI_CHROMIUM"):
        return os.environ["RGI_CHROMIUM"]
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


class CDPError(RuntimeError):
    """A CDP command answered with an error, or the page threw."""


class Browser:
    """One headless Chromium process with a throw-away profile; a context manager (closing kills it)."""

    def __init__(self, binary: str | None = None, width: int = 1400, height: int = 1000,
                 start_timeout: float = 30.0) -> None:
        from websockets.sync.client import connect

        binary = binary or find_chromium()
        if binary is None:
            raise FileNotFoundError(MISSING)
        self.profile = tempfile.mkdtemp(prefix="rgi-chromium-")
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-sync", "--disable-component-update",
             "--disable-default-apps", "--mute-audio", "--hide-scrollbars", f"--window-size={width},{height}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.width, self.height = width, height
        try:
            port_file = Path(self.profile) / "DevToolsActivePort"
            deadline = time.monotonic() + start_timeout
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{binary} did not open its DevTools port (exit code {self.process.poll()})")
                time.sleep(0.05)
            port, path = port_file.read_text().splitlines()[:2]
            self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=start_timeout)
        except BaseException:
            self._stop()
            raise
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, session: str | None = None, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one CDP command (to a page's ``session``, or the browser) and wait for its answer; events that arrive
        meanwhile are kept in :attr:`events`."""
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first (not yet consumed) event ``method`` of ``session``; waits for it."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == method and event.get("sessionId") == session:
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {method} within {timeout} s")
            reply = json.loads(self.ws.recv(timeout=remaining))
            if "method" in reply:
                self.events.append(reply)

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        return Page(self, session)

    def _stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001  already gone; the process is stopped below either way
            pass
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        self._stop()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """A page (tab) of a :class:`Browser`: navigation, requests made, JavaScript errors, evaluation, screenshots."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=browser.width, height=browser.height,
                  deviceScaleFactor=1, mobile=False)

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        return self.browser.send(method, session=self.session, timeout=timeout, **params)

    def _events(self, method: str) -> list[dict[str, Any]]:
        return [e["params"] for e in self.browser.events
                if e["method"] == method and e.get("sessionId") == self.session]

    @property
    def requests(self) -> list[str]:
        """The URL of every request the page has made so far (``Network.requestWillBeSent``)."""
        self.evaluate("0")  # drains events that arrived since the last command
        return [e["request"]["url"] for e in self._events("Network.requestWillBeSent")]

    @property
    def errors(self) -> list[str]:
        """Uncaught JavaScript exceptions and console errors so far (a CSP violation is a console error)."""
        self.evaluate("0")
        thrown = [e["exceptionDetails"].get("exception", {}).get("description") or e["exceptionDetails"]["text"]
                  for e in self._events("Runtime.exceptionThrown")]
        logged = [" ".join(str(a.get("value", a.get("description", ""))) for a in e["args"])
                  for e in self._events("Runtime.consoleAPICalled") if e["type"] == "error"]
        return thrown + logged

    def goto(self, url: str, timeout: float = 60.0) -> float:
        """Navigate and wait for the ``load`` event; returns the seconds it took."""
        t0 = time.perf_counter()
        self.send("Page.navigate", url=url)
        self.browser.wait_event("Page.loadEventFired", self.session, timeout)
        return time.perf_counter() - t0

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of a JavaScript expression (promises awaited); raises :class:`CDPError` if it throws."""
        result = self.send("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} stayed falsy for {timeout} s")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """Click the first element matching a CSS selector (a DOM click, as a user's would dispatch)."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def screenshot(self, path: str | Path, full_page: bool = False) -> Path:
        """A PNG of the viewport (or of the whole page) written to ``path``."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        data = self.send("Page.captureScreenshot", timeout=60, **params)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)
