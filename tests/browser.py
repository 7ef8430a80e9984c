"""A page loaded in headless Chromium, checked through the DevTools protocol.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol commands from file
descriptor 3 and writes replies and events to descriptor 4, one JSON message per NUL-ended
chunk, so no WebSocket client is needed. ``load(url)`` opens the page, waits for its load
event and returns what a person would see go wrong: script exceptions, console errors,
resources that failed to load, and every <img> with whether it decoded.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageReport:
    url: str
    exceptions: list[str] = field(default_factory=list)  # uncaught script errors
    errors: list[str] = field(default_factory=list)  # console.error and failed loads
    images: list[dict] = field(default_factory=list)  # src, complete, naturalWidth/Height
    title: str = ""

    @property
    def broken_images(self) -> list[str]:
        return [i["src"] for i in self.images if not (i["complete"] and i["naturalWidth"] > 0)]


class Chromium:
    def __init__(self, binary: str, width: int = 1280, height: int = 900, timeout: float = 60):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="dmgrd-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds():  # the browser's descriptor 3 reads commands, 4 writes replies
            # moved out of the way first: either pipe end may itself be 3 or 4
            read, write = (
                fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)
            )
            os.dup2(read, 3)  # dup2 leaves the copies inheritable (no close-on-exec)
            os.dup2(write, 4)

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--remote-debugging-pipe",
                "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--allow-file-access-from-files",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            preexec_fn=fds,
            close_fds=False,  # the parent's other descriptors are close-on-exec (PEP 446)
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        try:
            self.send("Browser.close", wait=False)
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from Chromium in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the pipe (exit {self.proc.poll()})")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params=None, session: str | None = None, wait: bool = True):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        if not wait:
            return None
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for i, event in enumerate(self.events):
            if event.get("method") == method and event.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            event = self._read(deadline)
            if event.get("method") == method and event.get("sessionId") == session:
                return event
            self.events.append(event)

    def open(self, url: str) -> str:
        """A new tab at ``url``, loaded; returns its session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str):
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def load(self, url: str) -> tuple[str, PageReport]:
        session = self.open(url)
        # every image finished (loaded or failed) before it is judged
        self.evaluate(
            session,
            "Promise.all(Array.from(document.images).map(i => i.complete ? 0 : "
            "new Promise(r => { i.onload = r; i.onerror = r; })))",
        )
        report = PageReport(url)
        report.images = self.evaluate(
            session,
            "Array.from(document.images).map(i => ({src: i.getAttribute('src').slice(0, 80), "
            "complete: i.complete, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))",
        )
        report.title = self.evaluate(session, "document.title")
        self.collect(session, report)
        return session, report

    def collect(self, session: str, report: PageReport) -> None:
        """Move this tab's error events seen so far into ``report``."""
        kept = []
        for event in self.events:
            if event.get("sessionId") != session:
                kept.append(event)
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text")
                report.exceptions.append(str(text))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                report.errors.append(" ".join(str(a.get("value")) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                report.errors.append(f"{entry.get('text')} {entry.get('url', '')}".strip())
        self.events = kept

    def screenshot(self, session: str) -> bytes:
        import base64

        data = self.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        return base64.b64decode(data)
