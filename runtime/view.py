"""The line's live view in the browser and its control interface (``[view]`` in the line
configuration, ``run --view`` for one source; off unless configured).

A small HTTP server (aiohttp, imported only when the view is configured: the ``line``
extra) in a thread of its own serves a page with, per camera, the latest frame and its heat
map (pushed over a WebSocket as JPEG), OK/NG counters, fps, latency, the last NG frames and a
threshold slider that shows, on the camera's recent scores, how many frames a threshold
would call NG. The control interface (JSON; runtime/changeover.py does the work):

- ``POST /api/cameras/NAME/threshold`` ``{"threshold": 0.8}``: the threshold written into
  the camera's bundle as ``calibrate-threshold`` writes one, and applied to the running
  camera through the changeover (logged and recorded);
- ``POST /api/cameras/NAME/changeover`` ``{"bundle": "bundles/b"}``: a product changeover
  (the bundle verified first; a refused one leaves the old running, the reply says why);
- ``GET /api/cameras``, ``GET /api/cameras/NAME`` (with the recent scores),
  ``GET /api/cameras/NAME/ng/FRAME.jpg``, ``GET /api/changeovers``; ``GET /ws`` the stream.

Cost: the pipeline hands every decided frame to its camera here (its score appended to a
bounded window; an NG frame's map copied and kept, the last ``ng_frames``); a frame and its
map are kept for the stream only while a client watches, at most ``max_fps`` a second, and
JPEG-encoded in the server's threads, never in the inference path. A slow client gets fewer
frames (each send waits for it, then the newest frame is sent); inference never waits.

With a ``token``, every request needs it: ``Authorization: Bearer TOKEN``, or once in the
page's address (``/?token=TOKEN``), which sets a same-site cookie for the page's own
requests. Bound to 127.0.0.1 unless another address is given; another address without a
token is warned about at start.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import ipaddress
import math
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from dmgrd_edge import checks
from dmgrd_edge.errors import ConfigError, DmgrdError

from .metrics_server import parse_address
from .postprocess import draw

COOKIE = "dmgrd_view"
INSTALL = 'pip install "dmgrd-edge[line]" (in a checkout: pip install -e ".[line]")'
STATUS_EVERY_S = 1.0  # counters pushed to each client


@dataclass(frozen=True)
class ViewConfig:
    listen: str = "127.0.0.1:8090"
    token: str | None = None
    max_fps: float = 5.0  # stream frames per second and camera, at most
    window: int = 500  # recent scores per camera for the threshold slider
    ng_frames: int = 8  # last NG frames kept per camera

    def __post_init__(self):
        for key in ("listen", "token", "max_fps", "window", "ng_frames"):
            check_view_value(key, getattr(self, key))


def check_view_value(key: str, value):
    """One setting of the view, checked (the line configuration names the key)."""
    if key == "listen":
        parse_address(value, "view", "127.0.0.1:8090")
    elif key == "token":
        if value is not None and (not isinstance(value, str) or len(value.strip()) < 8):
            raise ConfigError(
                "the view's token is too short", "give a token of at least 8 characters"
            )
    elif key == "max_fps":
        checks.number("max_fps", value, 0, 30, lo_open=True)
    elif key == "window":
        checks.integer("window", value, 10, 100_000)
    elif key == "ng_frames":
        checks.integer("ng_frames", value, 1, 100)
    return value


def _aiohttp_web():
    try:
        from aiohttp import web
    except ImportError as exc:
        raise ConfigError(
            "the live view needs the aiohttp package, which is not installed", INSTALL
        ) from exc
    return web


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


class Snapshot:
    """One decided frame as the view shows it; encoded once, on first use, in a server
    thread."""

    __slots__ = ("frame", "time", "score", "ng", "threshold", "image", "amap", "regions",
                 "version", "_jpegs", "_lock")  # fmt: skip

    def __init__(self, frame: int, when: str, score: float, ng: bool, threshold: float,
                 image: np.ndarray, amap: np.ndarray, regions) -> None:  # fmt: skip
        self.frame, self.time, self.score, self.ng = frame, when, score, ng
        self.threshold, self.image, self.amap, self.regions = threshold, image, amap, regions
        self.version = 0
        self._jpegs = None
        self._lock = threading.Lock()

    def jpegs(self) -> tuple[bytes, bytes]:
        """(the frame, the frame with its heat map, regions and decision) as JPEG."""
        with self._lock:
            if self._jpegs is None:
                heat = draw(self.image, self.amap, self.score, self.threshold, list(self.regions))
                self._jpegs = (_jpeg(self.image), _jpeg(heat))
            return self._jpegs

    def message(self, camera: str) -> dict:
        image, heat = self.jpegs()
        return {
            "type": "frame",
            "camera": camera,
            "frame": self.frame,
            "time": self.time,
            "score": self.score,
            "decision": "NG" if self.ng else "OK",
            "threshold": self.threshold,
            "image": "data:image/jpeg;base64," + base64.b64encode(image).decode(),
            "heat": "data:image/jpeg;base64," + base64.b64encode(heat).decode(),
        }


class LiveCamera:
    """What the view keeps of one camera, handed every decided frame by its pipeline."""

    def __init__(self, name: str, pipeline, capture, source: str, config: ViewConfig, where):
        self.name, self.pipeline, self.capture, self.source = name, pipeline, capture, source
        self.where = where  # () -> (bundle folder, model file) the camera runs now
        self.scores: collections.deque = collections.deque(maxlen=config.window)
        self.ng: collections.deque = collections.deque(maxlen=config.ng_frames)
        # the NG frames a status listed, kept until twice as many newer ones were listed, so
        # an image named in a status can be fetched after more NG frames came
        self.listed: collections.OrderedDict = collections.OrderedDict()
        self.period = 1.0 / config.max_fps
        self.watchers = 0  # open streams that show this camera (changed in the server's loop)
        self.latest: Snapshot | None = None
        self.version = 0
        self._due = 0.0

    def decided(self, frame, amap: np.ndarray, score: float, ng: bool, event) -> None:
        """The pipeline's call after each decision (in its post-processing thread): no
        encoding here; a frame is kept only when NG, or for a watching client on time."""
        self.scores.append((frame.index, score))
        now = time.monotonic()
        streamed = self.watchers > 0 and now >= self._due
        if not (ng or streamed):
            return
        snap = Snapshot(
            frame.index, event.time, score, ng, self.pipeline.config.threshold, frame.image,
            np.array(amap, np.float32, copy=True), event.regions,
        )  # fmt: skip
        if ng:
            self.ng.append(snap)
        if streamed:
            self._due = now + self.period
            self.version += 1
            snap.version = self.version
            self.latest = snap

    def ng_frame(self, frame: int) -> Snapshot | None:
        """An NG frame still kept or listed lately (called in the server's loop)."""
        snap = self.listed.get(frame)
        return snap or next((s for s in list(self.ng) if s.frame == frame), None)

    def status(self, scores: bool = False) -> dict:
        """The camera's figures (called in the server's loop)."""
        stats, counters = self.pipeline.stats, self.capture.counters
        latency = {}
        for stage in ("end_to_end", "inference"):
            sketch = stats.sketches.get(stage)
            if sketch is not None and sketch.count:
                p50, p99 = sketch.quantiles((0.5, 0.99))
                latency[stage] = {"p50": p50, "p99": p99}
        bundle, file = self.where()
        last_ng = list(reversed(list(self.ng)))
        for snap in reversed(last_ng):
            self.listed[snap.frame] = snap
            self.listed.move_to_end(snap.frame)
        while len(self.listed) > 2 * (self.ng.maxlen or 1):
            self.listed.popitem(last=False)
        out = {
            "camera": self.name,
            "source": self.source,
            "bundle": str(bundle),
            "file": file,
            "frames": stats.frames,
            "ok": stats.frames - stats.ng,
            "ng": stats.ng,
            "fps": stats.fps if math.isfinite(stats.fps) else 0.0,
            "dropped": counters.dropped,
            "latency_ms": latency,
            "threshold": self.pipeline.config.threshold,
            "watchers": self.watchers,
            "last_ng": [
                {
                    "frame": s.frame,
                    "score": s.score,
                    "time": s.time,
                    "url": f"/api/cameras/{self.name}/ng/{s.frame}.jpg",
                }
                for s in last_ng
            ],  # fmt: skip
        }
        if scores:
            out["scores"] = [[f, s] for f, s in list(self.scores)]
        return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may be reachable from elsewhere
        return False


class LiveView:
    """The server: a thread with its own event loop; ``start`` returns once it listens (a
    port that is taken is a ConfigError then), ``close`` stops it."""

    def __init__(self, config: ViewConfig, control, log=print):
        _aiohttp_web()  # a clear error naming the extra before anything else starts
        self.config, self.control, self.log = config, control, log
        self.host, self.port = parse_address(config.listen, "view", "127.0.0.1:8090")
        self.cameras: dict[str, LiveCamera] = {}
        self.sockets: set = set()  # open WebSockets, closed at shutdown
        self.clients: dict[int, dict] = {}  # per open stream: cameras, frames sent, last sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None

    def watch(self, name: str, pipeline, capture, source: str, where) -> LiveCamera:
        """Shows a camera: its pipeline hands it every decided frame from now on."""
        camera = LiveCamera(name, pipeline, capture, source, self.config, where)
        self.cameras[name] = camera
        pipeline.view = camera
        return camera

    def start(self) -> LiveView:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="dmgrd-view", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=30)
        except OSError as exc:
            self.close()
            raise ConfigError(
                f"cannot serve the live view on {self.host}:{self.port}: {exc.strerror or exc}",
                "give a free port in [view] listen (or run --view HOST:PORT)",
            ) from exc
        if self.config.token is None and not is_loopback(self.host):
            self.log(
                f"warning: the live view listens on {self.host}:{self.port} without a token: "
                "anyone who reaches it can watch the cameras and change thresholds and "
                "bundles; set token in [view] (run --view-token)"
            )
        self.log(f"live view: http://{self.host}:{self.port}/")
        return self

    async def _serve(self) -> None:
        from .view_routes import make_app

        web = _aiohttp_web()
        self._runner = web.AppRunner(make_app(self), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._runner is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=15)
            except Exception as exc:  # noqa: BLE001 - stopping: say it, then stop the loop
                self.log(f"live view: stopping: {type(exc).__name__}: {exc}")
            self._runner = None
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=15)
        if not self._thread.is_alive():
            loop.close()

    def authorized(self, request) -> bool:
        token = self.config.token
        if token is None:
            return True
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else None
        for candidate in (given, request.cookies.get(COOKIE), request.query.get("token")):
            if candidate and hmac.compare_digest(candidate.encode(), token.encode()):
                return True
        return False


def control_error(exc: BaseException) -> tuple[int, str, str | None]:
    """(HTTP status, problem, fix) of an error a control request raised."""
    from .changeover import ChangeoverRefused, UnknownCamera

    if isinstance(exc, UnknownCamera):
        return 404, exc.problem, exc.fix
    if isinstance(exc, ChangeoverRefused):
        return 409, exc.problem, exc.fix
    if isinstance(exc, DmgrdError):
        return 400, exc.problem, exc.fix
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return (
            500,
            f"cannot write{where}: {exc.strerror or exc}",
            "check that the bundle folder is writable and the disk has room; nothing was changed",
        )
    raise exc
