"""Several cameras and bundles in one process (``dmgrd-edge run --config line.toml``).

Each camera has its own capture thread (source, preprocessing with its bundle's preprocess,
bounded queue, drops, reconnect with backoff) and its own ``Pipeline`` for the decision,
regions, sinks, statistics and watches, so everything it reports is its own. Cameras that
share a bundle share one backend: its inference threads (``workers`` calls in flight) take
the frames that are ready from all of its cameras, one per camera in turn and up to
``batch``, into one backend call; nothing waits for a camera that has no frame, so a camera
that is dead (hung, reconnecting or given up) never stalls the others. A handler thread per
bundle hands each call's results back to the cameras in the order the calls were made, so
every camera decides its frames in the order they were captured.

A camera given up after its reconnects ends with its error while the others run on; the
run then exits with code 3. SIGINT/SIGTERM stop every camera, flush the sinks and write the
summary (``--stats-json``: per camera the single-source summary and the bundles it used
from which frame on, per bundle the calls made and frames per call, the changeovers).
SIGHUP (or a change of the file with ``watch_config = true``) is a product changeover
(``Line.switch``, runtime/changeover.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dmgrd_edge.atomic import atomic_write_bytes, check_target
from dmgrd_edge.bundle import load_bundle
from dmgrd_edge.errors import ConfigError, DmgrdError
from dmgrd_edge.options import CameraConfig, RunConfig, parse_workers

from .capture import END, Capture
from .line_config import LineConfig, load_line_config
from .pipeline import EXIT_OK, EXIT_SOURCE_LOST, NumberedResults, Pipeline, make_preprocess
from .select import create_backend
from .sinks import open_sink
from .sources import open_source, parse_uri
from .watch import watch_for_run


class _NotifyingQueue(queue.Queue):
    """A capture queue that wakes its bundle's inference threads when a frame arrives."""

    def __init__(self, maxsize: int, ready: threading.Condition):
        super().__init__(maxsize)
        self.ready = ready

    def put(self, item, block=True, timeout=None):
        # notified after the queue's own lock is released: an inference thread holds
        # ``ready`` while it takes frames from the queues (the other lock order)
        super().put(item, block, timeout)
        with self.ready:
            self.ready.notify_all()


class _Tagged:
    """A preprocessed frame and the bundle group whose preprocess made it: a frame queued
    before its camera switched bundles is preprocessed again for the new one."""

    __slots__ = ("array", "group")

    def __init__(self, array, group):
        self.array, self.group = array, group


class _CameraPreprocess:
    """The capture thread's preprocess: that of the camera's bundle at the time."""

    def __init__(self, run: "CameraRun"):
        self.run = run

    def __call__(self, image):
        group = self.run.group
        return _Tagged(group.preprocess(image), group)


@dataclass
class CameraRun:
    config: CameraConfig
    pipeline: Pipeline
    capture: Capture
    watch: object
    max_frames: int | None
    taken: int = 0  # frames taken into backend calls
    dispatched: int = 0  # of those, decided
    done: bool = False  # no frame will be taken any more (end, lost, --max-frames)
    group: "BundleGroup | None" = None
    history: list = field(default_factory=list)  # [first frame index, bundle] per bundle used

    def room(self) -> int:
        return 1 << 30 if self.max_frames is None else self.max_frames - self.taken

    def where(self) -> tuple[Path, str]:
        """The bundle folder and model file the camera runs now."""
        group = self.group
        return group.root, group.file


@dataclass
class BundleGroup:
    root: Path
    bundle: object
    backend: object
    batch: int
    file: str = ""  # the bundle file the backend runs
    workers: int = 1  # backend calls in flight
    cameras: list[CameraRun] = field(default_factory=list)
    ready: threading.Condition = field(default_factory=threading.Condition)
    calls: int = 0
    frames: int = 0
    turn: int = 0
    threads: list = field(default_factory=list)

    def __post_init__(self):
        self.preprocess = make_preprocess(self.bundle)

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def gather(self) -> list[tuple[CameraRun, object]]:
        """Frames ready now, one per camera per round (starting one camera further each
        call), up to ``batch``; call with ``ready`` held."""
        taken: list = []
        order = self.cameras[self.turn :] + self.cameras[: self.turn]
        self.turn = (self.turn + 1) % max(1, len(self.cameras))
        progressed = True
        while progressed and len(taken) < self.batch:
            progressed = False
            for cam in order:
                if cam.done or len(taken) >= self.batch:
                    continue
                if cam.room() <= 0:
                    cam.done = True
                    continue
                try:
                    item = cam.capture.queue.get_nowait()
                except queue.Empty:
                    continue
                if item is END:
                    cam.done = True
                    continue
                taken.append((cam, item))
                cam.taken += 1
                progressed = True
        return taken

    def summary(self) -> dict:
        return {
            "bundle": str(self.root),
            "cameras": [c.config.name for c in self.cameras],
            "backend": self.backend.describe(),
            "calls": self.calls,
            "frames": self.frames,
            "frames_per_call": self.frames / self.calls if self.calls else None,
            "max_batch": self.batch,
        }


class Line:
    def __init__(self, config: LineConfig, log=print, max_frames: int | None = None):
        self.config, self.log = config, log
        self.stop_event = threading.Event()
        self.groups: dict[Path, BundleGroup] = {}
        self.cameras: list[CameraRun] = []
        self.metrics = None
        self.max_frames = max_frames
        self._opened: list = []  # sinks and sources to close if the start fails
        self.errors: list[BaseException] = []  # a backend call that failed
        self.retired: list[BundleGroup] = []  # bundles no camera uses any more
        self.reload_requested = threading.Event()
        self.wake = threading.Event()  # the run loop: a reload or a request is waiting
        self._requests: queue.Queue = queue.Queue()  # (function, future) for the run loop
        self._running = False
        self.changeovers: list[dict] = []
        self.view = None  # the live view (runtime/view.py), when configured
        self._bundles = 1
        try:
            self._config_stamp = config.path.stat().st_mtime_ns
        except OSError:
            self._config_stamp = None

    # -- start -----------------------------------------------------------------------------
    def open(self) -> "Line":
        try:
            self._open()
        except BaseException:
            self._close_opened()
            raise
        return self

    def _open(self) -> None:
        cfg = self.config
        roots = {}
        for cam in cfg.cameras:
            roots.setdefault(cam.bundle.resolve(), []).append(cam)
        if cfg.metrics:
            from .metrics_server import LineMetrics

            self.metrics = LineMetrics(cfg.metrics, log=self.log).start()
        if cfg.view is not None:
            from .changeover import LineControl
            from .view import LiveView

            self.view = LiveView(cfg.view, LineControl(self), log=self.log).start()
        self._bundles = len(roots)
        for root, cams in roots.items():
            group = self._group(root, cams[0])
            for cam in cams:
                self._camera(cam, group)

    def _group(self, root: Path, cam: CameraConfig) -> BundleGroup:
        """A bundle (verified: every file's hash) and its backend."""
        cfg = self.config
        loaded = _named(cam, "bundle", lambda: load_bundle(root))
        lo, hi = _batch_range(loaded.manifest)
        batch = max(lo, min(cfg.batch, hi))
        workers = parse_workers(cfg.workers)
        threads = cfg.threads
        if not threads and self._bundles > 1:  # the cores shared between the bundles
            threads = max(1, (os.cpu_count() or 1) // (self._bundles * (workers or 2)))
        chosen = _named(
            cam,
            "bundle",
            lambda: create_backend(
                loaded,
                cfg.backend,
                cfg.precision,
                max_batch=batch,
                threads=threads,
                log=lambda m, r=root: self.log(f"[{r.name}] {m}"),
                spin_between_runs=False,
                workers=workers,
            ),
        )
        self._opened.append(chosen.backend)
        group = BundleGroup(
            root, loaded, chosen.backend, batch, file=chosen.file, workers=chosen.workers
        )
        self.groups[root] = group
        return group

    def _camera(self, cam: CameraConfig, group: BundleGroup) -> None:
        say = lambda m, n=cam.name: self.log(f"[{n}] {m}")  # noqa: E731
        loaded, backend = group.bundle, group.backend
        spec, source, sinks = self._open_source_and_sinks(cam, loaded, say)
        override = cam.threshold is not None
        thr = cam.threshold if override else loaded.threshold_for(group.file)
        run_config = RunConfig(
            threshold=thr,
            pixel_threshold=thr if cam.pixel_threshold is None else cam.pixel_threshold,
            batch=group.batch,
            status_every_s=self.config.status_every_s,
            extra={"camera": cam.name, "source": cam.source, "bundle": str(cam.bundle)},
            workers=group.workers,
        )
        capture = Capture(source, None, cam.queue_size, cam.max_retries)
        capture.name = f"dmgrd-capture-{cam.name}"
        capture.queue = _NotifyingQueue(max(1, cam.queue_size), group.ready)
        pipeline = Pipeline(loaded, backend, sinks, run_config, log=say)
        pipeline.stop_event = self.stop_event
        watch = watch_for_run(
            cam.name,
            loaded,
            str(cam.bundle),
            group.file,
            thr,
            override,
            spec,
            cam.source,
            sinks,
            log=self.log,
            ng_frames=cam.ng_warn_frames,
            ng_rate=cam.ng_warn_rate,
            drift_window=cam.drift_window,
            drift_psi=cam.drift_psi,
        )
        pipeline.monitors.append(watch)
        limit = cam.max_frames if cam.max_frames is not None else self.max_frames
        run = CameraRun(cam, pipeline, capture, watch, limit, group=group)
        capture.preprocess = _CameraPreprocess(run)
        group.cameras.append(run)
        self.cameras.append(run)
        if self.metrics is not None:
            from .metrics_server import CameraView

            self.metrics.add(CameraView(cam.name, pipeline, capture, watch))
        if self.view is not None:
            self.view.watch(cam.name, pipeline, capture, cam.source, lambda r=run: r.where())

    def _open_source_and_sinks(self, cam: CameraConfig, loaded, say):
        """The camera's source spec, its source (frames at the model's input size) and its
        sinks (a recording plays at the source's rate), each kept for closing."""
        spec = _named(
            cam,
            "source",
            lambda: parse_uri(
                cam.source, cam.input_width, cam.input_height, cam.input_fps, cam.loop
            ),
        )
        source = _named(
            cam,
            "source",
            lambda: open_source(spec, (loaded.preprocess.width, loaded.preprocess.height)),
        )
        self._opened.append(source)
        sinks = []
        for uri in cam.sinks:
            fps = getattr(source, "fps", None) or 25.0
            sink = _named(
                cam, "sinks", lambda u=uri: open_sink(u, True, fps=fps, camera=cam.name, log=say)
            )
            sinks.append(sink)
            self._opened.append(sink)
        return spec, source, sinks

    def _close_opened(self) -> None:
        for thing in reversed(self._opened):
            try:
                thing.close()
            except Exception:  # noqa: BLE001 - closing after a failed start: keep the first error
                pass
        if self.metrics is not None:
            self.metrics.close()
        if self.view is not None:
            self.view.close()

    # -- run -------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop_event.set())
            if hasattr(signal, "SIGHUP"):  # reload the configuration (product changeover)
                signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def request_reload(self) -> None:
        self.reload_requested.set()
        self.wake.set()

    def call(self, function, timeout: float = 120.0):
        """``function()`` run in the run loop's thread, where every changeover is made one at
        a time (reloads and requests on the control interface alike); its result, or the
        exception it raised."""
        from .changeover import ChangeoverRefused

        future: Future = Future()
        if not self._running:
            raise ChangeoverRefused(
                "the line is not running (starting or stopped)", "ask again while it runs"
            )
        self._requests.put((function, future))
        self.wake.set()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return future.result(timeout=0.5)
            except FutureTimeout:
                if not self._running:  # stopped after the request was queued
                    self._serve_requests(_stopped())
                elif time.monotonic() > deadline:
                    raise ChangeoverRefused(
                        f"the line did not answer within {timeout:.0f} s", "ask again"
                    ) from None

    def _serve_requests(self, error: BaseException | None = None) -> None:
        """Runs the waiting requests (or fails them with ``error`` once the line stops)."""
        while True:
            try:
                function, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            if error is not None:
                future.set_exception(error)
                continue
            try:
                future.set_result(function())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                future.set_exception(exc)

    def _all_groups(self) -> list[BundleGroup]:
        return [*self.groups.values(), *self.retired]

    def run(self) -> int:
        for cam in self.cameras:
            cam.pipeline._last_status = time.monotonic()
            cam.capture.start()
        for group in list(self.groups.values()):
            group.threads = self._start_group(group)
        self._running = True
        try:
            while any(g.alive for g in self._all_groups()):
                self.wake.wait(timeout=0.2)
                self.wake.clear()
                if self.reload_requested.is_set() or self._config_changed():
                    self.reload_requested.clear()
                    self.reload()
                self._serve_requests()
        finally:
            self._running = False
            self._serve_requests(_stopped())
            if any(g.alive for g in self._all_groups()):  # interrupted: stop the threads
                self.stop_event.set()
                for group in self._all_groups():
                    with group.ready:
                        group.ready.notify_all()
                for group in self._all_groups():
                    for t in group.threads:
                        t.join(timeout=30)
            for cam in self.cameras:
                cam.capture.stop()
            for cam in self.cameras:
                cam.capture.join(timeout=5)
                for sink in cam.pipeline.sinks:
                    sink.close()
        try:
            if self.errors:
                raise self.errors[0]
            return self._finish()
        finally:
            if self.view is not None:
                self.view.close()
            for group in self._all_groups():
                group.backend.close()
            if self.metrics is not None:
                self.metrics.close()

    # -- product changeover ------------------------------------------------------------------
    def _config_changed(self) -> bool:
        if not self.config.watch_config:
            return False
        try:
            stamp = self.config.path.stat().st_mtime_ns
        except OSError:
            return False
        if stamp != self._config_stamp:
            self._config_stamp = stamp
            return True
        return False

    def reload(self) -> None:
        """Reads the line configuration again and applies, per camera, a new bundle (or a new
        model file in the same folder) and a new threshold (given, or recalibrated in the
        bundle's manifest) while frames keep flowing. A file that does not parse, a change of
        the cameras themselves, or a bundle that fails verification is refused, logged, and
        what runs keeps running."""
        from .changeover import apply_reload

        apply_reload(self)

    def switch(self, cam: CameraRun, group: BundleGroup, thresholds=None) -> dict:
        """Moves a camera to another bundle's backend. The old one takes no more of its
        frames; those already in its backend calls are decided by it, and only then does the
        new one take the camera's frames (queued frames preprocessed again for it), so the
        camera's frames stay in order and none after the switch meets the old model.
        ``thresholds`` (image, pixel) are set between the two, so the old model's frames are
        decided by its thresholds and the new one's by the new. Returns when the old one
        stopped taking frames, how many were in its calls then, and the wait for them."""
        old = cam.group
        with old.ready:
            old.cameras.remove(cam)
            old.ready.notify_all()  # an old group left without cameras ends its threads
            in_flight = cam.taken - cam.dispatched
        switched_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        started = time.perf_counter()
        deadline = time.monotonic() + 60
        while cam.dispatched < cam.taken and time.monotonic() < deadline:
            time.sleep(0.002)  # the old calls not yet decided: at most ``2 * workers``
        waited_ms = 1000 * (time.perf_counter() - started)
        if thresholds is not None:
            cam.pipeline.config.threshold, cam.pipeline.config.pixel_threshold = thresholds
        with group.ready:
            group.cameras.append(cam)
            cam.group = group
            cam.capture.queue.ready = group.ready
            cam.pipeline.bundle, cam.pipeline.backend = group.bundle, group.backend
            group.ready.notify_all()
        if not group.threads:
            group.threads = self._start_group(group)
        if not old.cameras and old not in self.retired:
            if self.groups.get(old.root) is old:
                del self.groups[old.root]
            self.retired.append(old)
        return {"switched_at": switched_at, "in_flight": in_flight, "waited_ms": waited_ms}

    def _start_group(self, group: BundleGroup) -> list[threading.Thread]:
        return _GroupThreads(self, group).start()

    def _dispatch(self, group, taken, maps, scores, call_ms) -> None:
        group.calls += 1
        group.frames += len(taken)
        by_camera: dict[int, list[int]] = {}
        cameras = {}
        for i, (cam, _) in enumerate(taken):
            by_camera.setdefault(id(cam), []).append(i)
            cameras[id(cam)] = cam
        for key, rows in by_camera.items():
            cam = cameras[key]  # a camera that switched since still gets these, in order
            frames = [taken[i][1] for i in rows]
            if not cam.history or cam.history[-1][1] != str(group.root):
                cam.history.append([frames[0].index, str(group.root)])
            # each frame's share of the call: call time / frames in the call
            share = call_ms * len(rows) / len(taken)
            cam.pipeline._complete(frames, maps[rows], scores[rows], share)
            cam.dispatched += len(rows)
            cam.pipeline._status(cam.capture)

    def _finish(self) -> int:
        code, cameras = EXIT_OK, {}
        for cam in self.cameras:
            cam.pipeline.log(f"{cam.config.name}:")
            if cam.pipeline._finish(cam.capture) != EXIT_OK:
                code = EXIT_SOURCE_LOST
            cameras[cam.config.name] = {**cam.pipeline.summary, "bundles_used": cam.history}
        self.summary = {
            "cameras": cameras,
            "bundles": [g.summary() for g in self._all_groups()],
            "changeovers": self.changeovers,
            "stopped_by_signal": self.stop_event.is_set(),
        }
        return code


class _GroupThreads(NumberedResults):
    """One bundle's threads: ``workers`` inference loops that gather frames from the group's
    cameras and call the backend, numbering the calls, and one handler that takes the
    results in that order (so each camera's frames stay in order) and dispatches them.
    At most ``2 * workers`` calls are made and not yet handled, as in the single-camera
    pipeline (runtime/pipeline.py, ``_InFlight``): results do not pile up in memory while
    the handler is slower or descheduled."""

    def __init__(self, line: Line, group: BundleGroup):
        super().__init__(max(1, group.workers))
        self.line = line
        self.group = group
        self.issued = self.handled = 0
        self.most_pending = 2 * self.running

    def start(self) -> list[threading.Thread]:
        name = self.group.root.name
        workers = [
            threading.Thread(target=self.infer_loop, name=f"dmgrd-infer-{name}-{i}")
            for i in range(self.running)
        ]
        handler = threading.Thread(target=self.handle_loop, name=f"dmgrd-handle-{name}")
        for t in (*workers, handler):
            t.daemon = True
            t.start()
        return [*workers, handler]

    def _take(self):
        """(the call's number, the frames gathered for it); None once the line stops or
        every camera of the group is done (or none is left: all moved to another bundle)."""
        group = self.group
        with group.ready:
            while True:
                if self.line.stop_event.is_set():
                    return None
                if self.issued - self.handled < self.most_pending:
                    taken = group.gather()
                    if taken:
                        break
                    if all(c.done for c in group.cameras):
                        return None
                group.ready.wait(timeout=0.2)  # a frame, or room after the handler's next
            number = self.issued
            self.issued += 1
        return number, taken

    def _infer(self, taken):
        """(frames, maps, scores, call ms), or the exception the call raised."""
        try:
            batch = np.stack([_tensor(frame, self.group) for _, frame in taken])
            t0 = time.perf_counter()
            maps, scores = self.group.backend.infer(batch)
            return (taken, maps, scores, 1000 * (time.perf_counter() - t0))
        except BaseException as exc:  # handed to the handler, which reports it
            return exc

    def infer_loop(self) -> None:
        try:
            while (call := self._take()) is not None:
                number, taken = call
                self.file(number, self._infer(taken))
        finally:
            self.thread_stopped()

    def handle_loop(self) -> None:
        expected = 0
        while True:
            with self.filed:
                while expected not in self.results and (self.running or expected < self.issued):
                    self.filed.wait(timeout=0.5)
                    for cam in self.group.cameras:
                        cam.pipeline._status(cam.capture)
                result = self.results.pop(expected, None)
                self.handled += result is not None
            if result is None:
                return
            with self.group.ready:
                self.group.ready.notify_all()  # room for an inference loop waiting to gather
            expected += 1
            if isinstance(result, BaseException):
                self.line.errors.append(result)
                self.line.stop_event.set()
                return
            self.line._dispatch(self.group, *result)


def _with_view_token(config: LineConfig, token: str | None, log) -> LineConfig:
    if token is None:
        return config
    if config.view is None:
        raise ConfigError(
            f"a view token was given (--view-token or DMGRD_VIEW_TOKEN) but {config.path} has "
            "no [view] table",
            'add [view] with listen = "127.0.0.1:8090", or unset the token',
        )
    if config.view.token is not None:
        raise ConfigError(
            f"the view's token is given twice: in {config.path} ([view] token) and by "
            "--view-token or DMGRD_VIEW_TOKEN",
            "keep one of them",
        )
    log("live view: the token from --view-token / DMGRD_VIEW_TOKEN")
    return replace(config, view=replace(config.view, token=token))


def _stopped() -> BaseException:
    from .changeover import ChangeoverRefused

    return ChangeoverRefused("the line stopped before the request was made", None)


def _tensor(frame, group: BundleGroup):
    """The frame's input for ``group``: made again when another bundle's preprocess made it."""
    tagged = frame.tensor
    if isinstance(tagged, _Tagged):
        return tagged.array if tagged.group is group else group.preprocess(frame.image)
    return tagged


def _batch_range(manifest: dict) -> tuple[int, int]:
    from dmgrd_edge import checks

    return checks.batch_range(manifest)


def _named(cam: CameraConfig, key: str, make):
    """``make()``, with an error naming the camera and its key."""
    try:
        return make()
    except DmgrdError as exc:
        raise type(exc)(f"camera {cam.name!r} ({key}): {exc.problem}", exc.fix) from exc


def run_line(
    path: Path,
    log=print,
    stats_json: Path | None = None,
    max_frames: int | None = None,
    view_token: str | None = None,
) -> int:
    """``view_token`` (``--view-token``, ``DMGRD_VIEW_TOKEN``): the token of a [view] table
    that has none."""
    if stats_json is not None:
        check_target(stats_json)
    config = _with_view_token(load_line_config(path), view_token, log)
    line = Line(config, log=log, max_frames=max_frames).open()
    line.install_signal_handlers()
    code = line.run()
    if stats_json is not None:
        atomic_write_bytes(stats_json, json.dumps(line.summary, indent=2, default=str).encode())
    return code
