"""The streaming loop: frames -> backend -> decision, regions -> sinks, with statistics.

Capture and preprocessing run in the capture thread, so they overlap with inference here.
With a backend that takes calls from any thread (ONNX Runtime), ``workers`` inference
threads take frames from the capture queue and infer them, several at once; results are
handled strictly in frame order in the main thread, so post-processing and sinks overlap
with inference. SIGINT/SIGTERM stop the loop cleanly: the frames already read are finished,
sinks are flushed and closed, statistics written.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
import time

import numpy as np

from dmgrd_edge.atomic import atomic_write_bytes
from dmgrd_edge.bundle import Bundle
from dmgrd_edge.data.preprocess import make_preprocess as core_make_preprocess
from dmgrd_edge.errors import ExitCode
from dmgrd_edge.options import RunConfig

from .capture import END, Capture
from .decision import is_ng
from .events import Event, Latency
from .postprocess import draw, regions
from .stats import Stats

EXIT_OK, EXIT_SOURCE_LOST = ExitCode.OK, ExitCode.SOURCE_LOST


def make_preprocess(bundle: Bundle):
    """The capture thread's frame-to-tensor function for this bundle (the core's)."""
    return core_make_preprocess(bundle.preprocess)


class Pipeline:
    def __init__(self, bundle: Bundle, backend, sinks: list, config: RunConfig, log=print):
        self.bundle, self.backend, self.sinks, self.config, self.log = (
            bundle,
            backend,
            sinks,
            config,
            log,
        )
        self.stats = Stats()
        self.stop_event = threading.Event()  # a signal: finish what was read, then stop
        self._abort = threading.Event()  # an error in an inference thread: stop reading at once
        self.needs_overlay = any(getattr(s, "needs_overlay", False) for s in sinks)
        # watches fed with every decided frame (runtime/watch.py): ``decided(score, ng)``
        self.monitors: list = []
        # the live view's camera (runtime/view.py), when one is configured: it gets the frame
        # and its map too
        self.view = None

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def _next_batch(self, capture: Capture) -> tuple[list, bool]:
        """Up to `batch` frames; waits for the first, takes the rest only if ready (live)
        or waits for them (files). Returns (frames, ended)."""
        frames, ended = [], False
        started = time.perf_counter()
        while (
            len(frames) < self.config.batch
            and not self.stop_event.is_set()
            and not self._abort.is_set()
        ):
            try:
                wait = 0.2 if not frames or not capture.live else 0.0
                item = capture.queue.get(timeout=wait) if wait else capture.queue.get_nowait()
            except queue.Empty:
                if frames and capture.live:
                    break
                continue
            if item is END:
                ended = True
                break
            frames.append(item)
        self.stats.add("capture_wait", 1000 * (time.perf_counter() - started))
        return frames, ended

    def _handle(self, frames: list, maps: np.ndarray, scores: np.ndarray, infer_ms: float) -> None:
        for frame, amap, score in zip(frames, maps[:, 0], scores):
            t0 = time.perf_counter()
            h, w = frame.image.shape[:2]
            found = regions(
                amap, self.config.pixel_threshold, (w / amap.shape[1], h / amap.shape[0])
            )
            ng = is_ng(float(score), self.config.threshold)
            overlay = None
            if self.needs_overlay:
                overlay = draw(frame.image, amap, float(score), self.config.threshold, found)
            post_ms = 1000 * (time.perf_counter() - t0)
            latency = Latency(
                preprocess=frame.preprocess_ms,
                inference=infer_ms / len(frames),
                postprocess=post_ms,
            )
            event = Event.judged(frame.index, float(score), ng, found, latency)
            t1 = time.perf_counter()
            for sink in self.sinks:
                sink.write(event, frame.image, overlay)
            sinks_ms = 1000 * (time.perf_counter() - t1)
            self.stats.add("preprocess", frame.preprocess_ms)
            self.stats.add("postprocess", post_ms)
            self.stats.add("sinks", sinks_ms)
            self.stats.add("end_to_end", 1000 * (time.monotonic() - frame.captured_at))
            self.stats.frame_done(ng)
            for monitor in self.monitors:
                monitor.decided(float(score), ng)
            if self.view is not None:
                self.view.decided(frame, amap, float(score), ng, event)

    def _infer(self, frames: list) -> tuple[list, np.ndarray, np.ndarray, float]:
        batch = frames[0].tensor[None] if len(frames) == 1 else np.stack([f.tensor for f in frames])
        t0 = time.perf_counter()
        maps, scores = self.backend.infer(batch)
        return frames, maps, scores, 1000 * (time.perf_counter() - t0)

    def _complete(
        self, frames: list, maps: np.ndarray, scores: np.ndarray, infer_ms: float
    ) -> None:
        self.stats.add("inference", infer_ms / len(frames))
        self._handle(frames, maps, scores, infer_ms)

    def _status(self, capture: Capture) -> None:
        if time.monotonic() - self._last_status >= self.config.status_every_s:
            self._last_status = time.monotonic()
            c = capture.counters
            self.log(
                f"[status] frames {self.stats.frames} NG {self.stats.ng} fps {self.stats.fps:.1f} "
                f"dropped {c.dropped} corrupt {c.corrupt} reconnects {c.reconnects}"
            )

    def run(self, capture: Capture) -> int:
        """With a backend that takes calls from any thread (ONNX Runtime), ``workers``
        inference threads each read the next frames from the capture queue themselves, infer
        them and file the result under the batch's number, while this thread post-processes
        and writes the results strictly in frame order; no thread hand-off sits between one
        inference and the next. Otherwise (TensorRT: its CUDA context belongs to this thread)
        one call at a time, here."""
        capture.start()
        self._last_status = time.monotonic()
        try:
            if self.backend.calls_from_any_thread:
                self._run_threads(capture, max(1, self.config.workers))
            else:
                self._run_here(capture)
        finally:
            capture.stop()
            capture.join(timeout=5)
            for sink in self.sinks:
                sink.close()
        return self._finish(capture)

    def _run_here(self, capture: Capture) -> None:
        while not self.stop_event.is_set() and self._room(self.stats.frames) > 0:
            frames, ended = self._next_batch(capture)
            if frames:
                self._complete(*self._infer(frames[: self._room(self.stats.frames)]))
            self._status(capture)
            if ended:
                break

    def _room(self, read: int) -> int:
        """Frames that may still be read (``--max-frames``) after ``read`` frames."""
        if self.config.max_frames is None:
            return self.config.batch
        return self.config.max_frames - read

    def _run_threads(self, capture: Capture, workers: int) -> None:
        flight = _InFlight(self, capture, workers)
        self._abort.clear()
        flight.start()
        expected = 0
        try:
            while True:
                result = flight.wait_for(expected)
                if result is None:
                    if flight.all_handed(expected):
                        return
                    self._status(capture)
                    continue
                expected += 1
                if isinstance(result, BaseException):
                    raise result
                self._complete(*result)
                self._status(capture)
        finally:
            self._abort.set()  # no-op after a normal end; after an error the threads stop reading
            flight.join()

    def _finish(self, capture: Capture) -> int:
        c = capture.counters
        counters = {
            "captured": c.captured,
            "dropped": c.dropped,
            "corrupt": c.corrupt,
            "reconnects": c.reconnects,
        }
        summary = {
            **self.stats.summary(),
            **counters,
            "backend": {**self.backend.describe(), "workers": self.config.workers},
            "threshold": self.config.threshold,
            "source_error": capture.fatal,
            "stopped_by_signal": self.stop_event.is_set(),
            **self.config.extra,
            **self._line_summary(),
        }
        self.log(self.stats.table(counters))
        if self.config.stats_json is not None:  # whole or not at all, even if killed while writing
            atomic_write_bytes(self.config.stats_json, json.dumps(summary, indent=2).encode())
        self.summary = summary
        if capture.fatal:
            self.log(f"error: {capture.fatal}")
            if capture.fatal_fix:
                self.log(f"  fix: {capture.fatal_fix}")
            return EXIT_SOURCE_LOST
        return EXIT_OK

    def _line_summary(self) -> dict:
        """What the line's watches and plant sinks add to the summary (nothing when none)."""
        out: dict = {}
        for monitor in self.monitors:
            out.update(monitor.summary())
        sinks = {s.name: s.stats() for s in self.sinks if hasattr(s, "stats")}
        if sinks:
            out["sinks"] = sinks
        return out


class NumberedResults:
    """Results of numbered calls that several threads make, for one taker that wants them
    in number order: each thread files what its call gave (a result or the exception it
    raised) and says when it stops; ``running`` counts those still running. The taker
    waits on ``filed``. Shared by the single-camera pipeline and the line's bundle groups
    (runtime/multicam.py)."""

    def __init__(self, threads: int):
        self.filed = threading.Condition()
        self.results: dict[int, object] = {}
        self.running = threads

    def file(self, number: int, result: object) -> None:
        with self.filed:
            self.results[number] = result
            self.filed.notify_all()

    def thread_stopped(self) -> None:
        with self.filed:
            self.running -= 1
            self.filed.notify_all()


class _InFlight(NumberedResults):
    """The inference threads of a run: each takes the next frames from the capture queue
    itself (under a lock, so batches are numbered in the order their frames were read),
    infers them and files the result (or its exception) under the batch's number for the
    main thread, which handles them strictly in that order.

    At most ``2 * workers`` batches are taken and not yet handed to the main thread (one in
    each call, one waiting behind it); a thread waits for the main thread before it takes
    more. Without that bound the inference threads run ahead whenever the main thread is
    slower or descheduled (a busy CPU): results pile up, each with its frame, tensor and map,
    and glibc keeps the grown heaps of the threads that allocated them resident after the
    backlog is handled, so resident memory grows with every such burst (measured in
    benchmarks/runtime_soak.py; docs/RELIABILITY.md, "Soak")."""

    def __init__(self, pipeline: Pipeline, capture: Capture, workers: int):
        super().__init__(workers)  # batch number -> _infer's result or its exception
        self.pipeline, self.capture = pipeline, capture
        self.read_lock = threading.Lock()
        self.issued, self.read, self.ended = 0, 0, False
        self.handed, self.most_pending = 0, 2 * workers
        self.threads = [
            threading.Thread(target=self._infer_loop, name=f"dmgrd-infer-{i}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)

    def _take(self) -> tuple[int, list] | None:
        """The next batch and its number; (-1, []) when no frame came this time; None when
        nothing more will be read (the source ended, or --max-frames is reached)."""
        pipeline = self.pipeline
        with self.read_lock:
            if not self._wait_for_room() or self.ended or pipeline._room(self.read) <= 0:
                return None
            frames, self.ended = pipeline._next_batch(self.capture)
            frames = frames[: max(0, pipeline._room(self.read))]
            if not frames:
                return -1, []
            number = self.issued
            self.issued += 1
            self.read += len(frames)
            return number, frames

    def _wait_for_room(self) -> bool:
        """Wait (holding the read lock) until fewer than ``most_pending`` batches are taken
        and not handed; False when the run stops meanwhile."""
        pipeline = self.pipeline
        with self.filed:
            while self.issued - self.handed >= self.most_pending:
                if pipeline.stop_event.is_set() or pipeline._abort.is_set():
                    return False
                self.filed.wait(timeout=0.2)
        return True

    def _infer_loop(self) -> None:
        pipeline = self.pipeline
        try:
            while not pipeline.stop_event.is_set() and not pipeline._abort.is_set():
                taken = self._take()
                if taken is None:
                    return
                number, frames = taken
                if not frames:
                    continue
                try:
                    result = pipeline._infer(frames)
                except BaseException as exc:  # noqa: BLE001 - the main thread raises it
                    result = exc
                self.file(number, result)
        finally:
            self.thread_stopped()

    def wait_for(self, number: int):
        """Batch ``number``'s result, or None after a wait without it (a thread's end, or
        time for the status line)."""
        with self.filed:
            if number not in self.results and (self.running or number < self.issued):
                self.filed.wait(timeout=0.5)
            result = self.results.pop(number, None)
            if result is not None:
                self.handed += 1
                self.filed.notify_all()  # room for a thread waiting to take more frames
            return result

    def all_handed(self, number: int) -> bool:
        """No thread runs and every batch before ``number`` was handed over."""
        return not self.running and number >= self.issued
