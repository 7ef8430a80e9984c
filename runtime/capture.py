"""Capture in its own thread with a bounded queue.

Live sources never stall the line: when inference falls behind, the oldest queued frame is
dropped (and counted). Files and folders never drop a frame: capture waits instead. A live
source that errors is reopened with exponential backoff, a bounded number of times; then
the capture ends with a fatal error the pipeline turns into a clear exit code. Frames are
preprocessed in this thread, so preprocessing overlaps with inference.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dmgrd_edge.errors import DmgrdError

from .sources import Source, SourceError, Status

log = logging.getLogger("dmgrd_edge.runtime")


@dataclass
class Frame:
    index: int
    captured_at: float
    image: np.ndarray  # RGB uint8
    tensor: np.ndarray | None  # preprocessed (3, H, W) float32
    preprocess_ms: float


@dataclass
class CaptureCounters:
    captured: int = 0
    dropped: int = 0
    corrupt: int = 0
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)


END = object()


class Capture(threading.Thread):
    def __init__(
        self,
        source: Source,
        preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
        queue_size: int = 4,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        errors_before_reconnect: int = 3,
    ):
        super().__init__(daemon=True, name="dmgrd-capture")
        self.source, self.preprocess = source, preprocess
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.errors_before_reconnect = errors_before_reconnect
        self.counters = CaptureCounters()
        self.stop_event = threading.Event()
        self.fatal: str | None = None
        self.fatal_fix: str | None = None

    @property
    def live(self) -> bool:
        return bool(self.source.live)

    def stop(self) -> None:
        self.stop_event.set()

    def _put(self, item) -> None:
        """Live frames replace the oldest queued frame when the queue is full; everything
        else (file frames, the end marker) waits for space."""
        if self.live and item is not END:
            while True:
                try:
                    self.queue.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        self.queue.get_nowait()
                        self.counters.dropped += 1
                    except queue.Empty:
                        pass
        while not self.stop_event.is_set() or item is END:
            try:
                self.queue.put(item, timeout=0.05)
                return
            except queue.Full:
                if item is END and self.stop_event.is_set():
                    try:
                        self.queue.get_nowait()  # the consumer is stopping: make room for END
                    except queue.Empty:
                        pass

    def _reconnect(self) -> bool:
        delay = self.backoff_s
        for attempt in range(1, self.max_retries + 1):
            if self.stop_event.wait(delay):
                return False
            self.counters.reconnects += 1
            try:
                self.source.reopen()
                log.warning("source reopened after %d attempt(s)", attempt)
                return True
            except SourceError as exc:
                log.warning(
                    "reopen attempt %d/%d failed: %s", attempt, self.max_retries, exc.problem
                )
            delay = min(delay * 2, self.max_backoff_s)
        self.fatal = f"source lost and not recovered after {self.max_retries} reconnect attempts"
        return False

    def _frame(self, image: np.ndarray) -> Frame | None:
        if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
            self.counters.corrupt += 1
            return None
        captured_at, started = (
            time.monotonic(),
            time.perf_counter(),
        )  # latency counts preprocessing too
        tensor = self.preprocess(image) if self.preprocess else None
        frame = Frame(
            self.counters.captured,
            captured_at,
            image,
            tensor,
            1000 * (time.perf_counter() - started),
        )
        self.counters.captured += 1
        return frame

    def run(self) -> None:
        consecutive_errors = 0
        try:
            while not self.stop_event.is_set():
                source_dropped = self.source.dropped
                status, image = self.source.read()
                # frames a camera-like source produced while capture was busy (PacedSource)
                self.counters.dropped += self.source.dropped - source_dropped
                if status is Status.OK:
                    consecutive_errors = 0
                    frame = self._frame(image)
                    if frame is not None:
                        self._put(frame)
                elif status is Status.TIMEOUT:
                    continue
                elif status is Status.END:
                    if not self.counters.captured and self.counters.corrupt:
                        self.fatal = (
                            f"the source ended without a readable frame "
                            f"({self.counters.corrupt} corrupt)"
                        )
                        self.fatal_fix = "check the source's files; give one with readable frames"
                    break
                else:
                    if not self.source.camera:
                        self.counters.corrupt += (
                            1  # a corrupt image or frame in a file: skipped, counted
                        )
                        continue
                    consecutive_errors += 1
                    if consecutive_errors >= self.errors_before_reconnect:
                        log.warning(
                            "source failing (%d errors in a row); reconnecting", consecutive_errors
                        )
                        if not self._reconnect():
                            break
                        consecutive_errors = 0
        except DmgrdError as exc:  # e.g. a folder whose every file is corrupt
            self.fatal, self.fatal_fix = exc.problem, exc.fix
        except Exception as exc:  # noqa: BLE001 - report any capture crash to the pipeline
            self.fatal = f"capture failed: {type(exc).__name__}: {exc}"
        finally:
            self.source.close()
            self._put(END)
