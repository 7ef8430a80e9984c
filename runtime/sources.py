"""Frame sources: one pure URI parser and a factory keyed on the scheme.

| URI | source |
|---|---|
| `0`, `/dev/video0`, `v4l2:///dev/video0` | V4L2 camera (live) |
| `csi://0` | Jetson CSI camera through a GStreamer nvarguscamerasrc pipeline (live) |
| `rtsp://host/path` | network stream (live) |
| `gst://<pipeline ending in appsink>` | any GStreamer pipeline (live) |
| `file:///x.mp4`, `x.mp4` | video file |
| `folder/`, `images/*.png` | image folder or glob, sorted |

A file or folder given a frame rate (``--input-fps``) is replayed at that rate and treated
like a camera (frames drop when inference falls behind); without one, no frame is dropped.

Every source implements the `Source` protocol: ``read()`` tells OK, TIMEOUT, END (of
stream) and ERROR apart, and frames are RGB uint8 (H, W, 3).
"""

from __future__ import annotations

import enum
import glob as globlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from dmgrd_edge import checks
from dmgrd_edge.data.imageio import IMAGE_SUFFIXES, check_pixels, max_pixels, to_rgb8
from dmgrd_edge.errors import DataError, DmgrdError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mjpeg", ".h264", ".h265")


class SourceError(DmgrdError):
    """A source that cannot be opened or parsed."""


class Status(enum.Enum):
    OK = "ok"
    TIMEOUT = "timeout"
    END = "end"
    ERROR = "error"


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # v4l2, csi, rtsp, gst, file, images
    location: str
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    loop: bool = False

    @property
    def camera(self) -> bool:
        return self.kind in ("v4l2", "csi", "rtsp", "gst")

    @property
    def live(self) -> bool:
        """Frames arrive on a clock the runtime does not control: a camera, or a file or folder
        replayed at ``fps`` (which then behaves like a camera: frames drop when inference is
        behind)."""
        return self.camera or self.fps is not None


@runtime_checkable
class Source(Protocol):
    """What the capture thread, the threshold calibration and the CLI use of a source."""

    spec: SourceSpec
    live: bool  # frames arrive on a clock the runtime does not control (they may drop)
    camera: bool  # a device or stream: a failed read means it is failing (reconnect)
    dropped: int  # frames the source itself skipped to keep up with its clock (so far)

    @property
    def fps(self) -> float | None:
        """The frame rate asked for or reported; None when unknown."""

    def read(self) -> tuple[Status, np.ndarray | None]: ...

    def reopen(self) -> None: ...

    def close(self) -> None: ...


def parse_uri(
    uri: str,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    loop: bool = False,
) -> SourceSpec:
    """Turn a source string into a SourceSpec without touching any device; options that do
    not apply to the kind of source are an error, not ignored."""
    checks.integer("--input-width", width, 1, optional=True, error=SourceError)
    checks.integer("--input-height", height, 1, optional=True, error=SourceError)
    checks.number("--input-fps", fps, 0, lo_open=True, optional=True, error=SourceError)
    spec = _parse(uri, width, height, fps, loop)
    if spec.kind == "gst" and (width or height or fps):
        raise SourceError(
            "--input-width/--input-height/--input-fps do not apply to a gst:// pipeline",
            "set them inside the pipeline, e.g. ... ! video/x-raw,width=1280,height=720,"
            "framerate=60/1 ! ... ! appsink",
        )
    if not spec.camera and (width or height):
        raise SourceError(
            "--input-width/--input-height apply to cameras (V4L2, CSI, RTSP) only",
            "frames from files keep their size; the runtime resizes them to the model's input",
        )
    if spec.camera and loop:
        raise SourceError(
            "--loop applies to video files and image folders only", "drop --loop for a camera"
        )
    return spec


def _parse(
    uri: str, width: int | None, height: int | None, fps: float | None, loop: bool
) -> SourceSpec:
    text = str(uri).strip()
    if not text:
        raise SourceError(
            "empty --source",
            "give a camera index, csi://0, rtsp://..., a video file or an image folder",
        )
    opts = dict(width=width, height=height, fps=fps, loop=loop)
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme == "csi":
            if not _DIGITS.fullmatch(rest):
                raise SourceError(
                    f"bad CSI source {text!r}", "use csi://N with N the sensor id, e.g. csi://0"
                )
            return SourceSpec("csi", rest, **opts)
        if scheme in ("rtsp", "rtsps", "http", "https"):
            return SourceSpec("rtsp", text, **opts)
        if scheme == "gst":
            if "appsink" not in rest:
                raise SourceError(
                    "a gst:// pipeline must end in an appsink",
                    "e.g. gst://videotestsrc ! videoconvert ! appsink",
                )
            return SourceSpec("gst", rest, **opts)
        if scheme == "v4l2":
            if not _V4L2.fullmatch(rest):
                raise SourceError(
                    f"bad V4L2 source {text!r}",
                    "use v4l2://N or v4l2:///dev/videoN, e.g. v4l2:///dev/video0",
                )
            return SourceSpec("v4l2", rest, **opts)
        if scheme == "file":
            if not rest.strip():
                raise SourceError(f"no path in {text!r}", "use file:///path/to/video.mp4")
            return _path_spec(rest, opts)
        raise SourceError(
            f"unknown source scheme {scheme!r}",
            "choose one of csi://, rtsp://, gst://, v4l2://, file://, a camera index or a path",
        )
    if _V4L2.fullmatch(text):
        return SourceSpec("v4l2", text, **opts)
    return _path_spec(text, opts)


_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() takes '²', which int() refuses
_V4L2 = re.compile(r"[0-9]+|/dev/video[0-9]+")


def v4l2_index(spec: SourceSpec) -> int:
    """The device number of a V4L2 source ('2' or '/dev/video2' -> 2)."""
    return int(re.search(r"[0-9]+$", spec.location).group())


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _path_spec(text: str, opts: dict) -> SourceSpec:
    if any(ch in text for ch in "*?["):
        return SourceSpec("images", text, **opts)
    path = Path(text)
    if _is_dir(path):
        return SourceSpec("images", text, **opts)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return SourceSpec("file", text, **opts)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return SourceSpec("images", text, **opts)
    raise SourceError(
        f"cannot tell what source {text!r} is",
        f"give a folder, a glob, a video ({', '.join(VIDEO_SUFFIXES)}), a camera or a URI",
    )


def gstreamer_available() -> bool:
    info = cv2.getBuildInformation()
    match = re.search(r"GStreamer:\s*(\w+)", info)
    return bool(match and match.group(1).upper() == "YES")


def csi_pipeline(spec: SourceSpec, frame_size: tuple[int, int] | None = None) -> str:
    """nvarguscamerasrc at the sensor mode asked for (``--input-width/--input-height/--input-fps``);
    with ``frame_size`` (width, height: the model's input), nvvidconv scales each frame to it
    in NVMM memory on the Jetson's converter before the CPU sees it, so ``videoconvert`` (CPU)
    only repacks BGRx to BGR on frames of that size, not on full sensor frames. Frames then
    arrive at the model's size, and overlays, recordings and NG images are at that size too."""
    w, h, fps = spec.width or 1920, spec.height or 1080, int(spec.fps or 30)
    scaled = f"width={frame_size[0]},height={frame_size[1]}," if frame_size else ""
    return (
        f"nvarguscamerasrc sensor-id={spec.location} ! "
        f"video/x-raw(memory:NVMM),width={w},height={h},"
        f"framerate={fps}/1 ! nvvidconv ! video/x-raw,{scaled}format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=1 max-buffers=1"
    )


class VideoCaptureSource:
    """OpenCV VideoCapture for cameras, streams, GStreamer pipelines and files."""

    dropped = 0  # OpenCV drops frames of a camera inside its buffer, unseen and uncounted

    def __init__(self, spec: SourceSpec, frame_size: tuple[int, int] | None = None):
        self.spec, self.frame_size = spec, frame_size
        self.live = self.camera = spec.camera
        self.cap: cv2.VideoCapture | None = None
        self.open()

    def open(self) -> None:
        spec = self.spec
        if spec.kind in ("csi", "gst") and not gstreamer_available():
            raise SourceError(
                f"{spec.kind} sources need OpenCV built with GStreamer; this OpenCV is not",
                "on a Jetson use JetPack's OpenCV (python3-opencv) and remove pip's "
                "opencv-python(-headless) from the environment; check with "
                'python3 -c "import cv2; print(cv2.getBuildInformation())" | grep GStreamer',
            )
        if spec.kind == "file" and not Path(spec.location).is_file():
            raise SourceError(
                f"video file not found: {spec.location}",
                "check the path; for a camera give its index, /dev/videoN, csi://N or rtsp://...",
            )
        if spec.kind == "csi":
            cap = cv2.VideoCapture(csi_pipeline(spec, self.frame_size), cv2.CAP_GSTREAMER)
        elif spec.kind == "gst":
            cap = cv2.VideoCapture(spec.location, cv2.CAP_GSTREAMER)
        elif spec.kind == "v4l2":
            cap = cv2.VideoCapture(v4l2_index(spec), cv2.CAP_V4L2)
        else:
            cap = cv2.VideoCapture(spec.location)
        if spec.kind in ("v4l2", "rtsp"):
            for prop, value in (
                (cv2.CAP_PROP_FRAME_WIDTH, spec.width),
                (cv2.CAP_PROP_FRAME_HEIGHT, spec.height),
                (cv2.CAP_PROP_FPS, spec.fps),
            ):
                if value:
                    cap.set(prop, value)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"cannot open {spec.kind} source {spec.location!r}",
                "check the device/URL and that nothing else holds the camera",
            )
        width, height = (
            int(cap.get(p)) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT)
        )
        try:  # the size the container or stream reports, before a frame is decoded
            check_pixels(f"{spec.kind} source {spec.location!r}: its frame", width, height)
        except DataError as exc:
            cap.release()
            raise SourceError(exc.problem, exc.fix) from None
        self.cap = cap

    def read(self) -> tuple[Status, np.ndarray | None]:
        if self.cap is None:
            return Status.ERROR, None
        ok, frame = self.cap.read()
        if not ok or frame is None:
            if self.spec.kind == "file" and self.spec.loop:
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self.cap.read()
                if ok and frame is not None:
                    return self._checked(frame)
            # a file ends (replayed at a rate or not); a camera that returns nothing has failed
            return (Status.ERROR if self.spec.camera else Status.END), None
        return self._checked(frame)

    def _checked(self, frame: np.ndarray) -> tuple[Status, np.ndarray | None]:
        """A frame above the decode limit (a stream that changed its size) is not judged."""
        if frame.shape[0] * frame.shape[1] > max_pixels():
            return Status.ERROR, None
        return Status.OK, to_rgb8(frame)

    @property
    def fps(self) -> float | None:
        """The rate asked for, else the one the stream or file reports (None when unknown)."""
        if self.spec.fps:
            return self.spec.fps
        reported = self.cap.get(cv2.CAP_PROP_FPS) if self.cap is not None else 0.0
        return float(reported) if 0 < reported < 1000 else None

    def reopen(self) -> None:
        self.close()
        self.open()

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class ImageFolderSource:
    """Sorted image files from a folder or glob; an unreadable file is reported and skipped,
    but a whole pass over the files without a readable one is a SourceError (with --loop the
    source would otherwise read the broken files forever)."""

    live = camera = False
    dropped = 0

    def __init__(self, spec: SourceSpec):
        self.spec, self.fps = spec, spec.fps
        location = spec.location
        if any(ch in location for ch in "*?["):
            files = sorted(globlib.glob(location))
        elif Path(location).is_dir():
            files = sorted(str(p) for p in Path(location).iterdir())
        else:
            files = [location]
        self.files = [
            f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES and os.path.isfile(f)
        ]
        if not self.files:
            raise SourceError(
                f"no images found for {location!r}", f"expected {', '.join(IMAGE_SUFFIXES)} files"
            )
        self.position = 0
        self.read_in_pass = 0  # files read in the current pass over the list
        self.last_error: str | None = None

    def read(self) -> tuple[Status, np.ndarray | None]:
        from dmgrd_edge.data.imageio import read_image

        if self.position >= len(self.files):
            if not self.read_in_pass:
                raise SourceError(
                    f"none of the {len(self.files)} image files of "
                    f"{self.spec.location!r} can be read "
                    f"(the last: {self.last_error})",
                    "the files are corrupt, truncated or not images: copy them again "
                    "or give another folder",
                )
            if not self.spec.loop:
                return Status.END, None
            self.position, self.read_in_pass = 0, 0
        path = self.files[self.position]
        self.position += 1
        try:
            image = read_image(path)
        except DataError as exc:
            self.last_error = exc.problem
            return Status.ERROR, None  # a corrupt file: counted and skipped by the capture loop
        except OSError as exc:  # unreadable (permissions, a vanished mount): skipped the same way
            self.last_error = f"{path}: {exc.strerror or exc}"
            return Status.ERROR, None
        self.read_in_pass += 1
        return Status.OK, image

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


class PacedSource:
    """A file or folder replayed at a fixed frame rate, like a camera: frame k is due at
    start + k / fps. A read waits for its frame's time; one that comes later than the next
    frame's time finds the frames in between gone, as a camera's would be (read and thrown
    away to keep the picture in step with the clock, and counted in ``dropped``)."""

    live, camera = True, False

    def __init__(self, inner: Source, fps: float, clock=time.monotonic, sleep=time.sleep):
        self.inner, self.fps, self.period, self.clock, self.sleep = (
            inner,
            fps,
            1.0 / fps,
            clock,
            sleep,
        )
        self.spec = inner.spec
        self.due: float | None = None
        self.dropped = 0

    def read(self) -> tuple[Status, np.ndarray | None]:
        now = self.clock()
        if self.due is None:
            self.due = now
        elif now < self.due:
            self.sleep(self.due - now)
        else:
            missed = int((now - self.due) / self.period)
            for _ in range(missed):
                status, _ = self.inner.read()
                if status is Status.END:
                    return status, None
                self.dropped += 1
            self.due += missed * self.period
        self.due += self.period
        return self.inner.read()

    def reopen(self) -> None:
        self.inner.reopen()

    def close(self) -> None:
        self.inner.close()


def open_source(spec: SourceSpec, frame_size: tuple[int, int] | None = None) -> Source:
    """Factory keyed on the source kind. ``frame_size`` (the model's input, width and height)
    lets a CSI camera scale frames on the Jetson's converter (see csi_pipeline); other
    sources deliver frames at their own size."""
    if spec.kind == "images":
        inner = ImageFolderSource(spec)
    else:
        inner = VideoCaptureSource(spec, frame_size)
    return PacedSource(inner, spec.fps) if spec.fps is not None and not spec.camera else inner
