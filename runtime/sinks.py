"""Output sinks, parsed from URIs.

| URI | sink |
|---|---|
| `display://` | an OpenCV window (not with --headless) |
| `out.avi`, `video://out.avi` | Motion-JPEG AVI with overlays (crash-safe; .mp4 is refused) |
| `events.jsonl`, `jsonl://events.jsonl?ng_only=1` | one JSON line per frame (or per NG frame) |
| `folder://ng_frames` | NG frames with overlays as PNG, names stamped with the run's start |
| `mqtt://host:port/topic?qos=1` | a JSON message per frame to a broker (runtime/mqtt_sink.py) |
| `opcua://host:port` | the last result and counters for a PLC (runtime/opcua_server.py) |

A sink may also take the line's warnings (``warn(record)``: an implausible NG rate, drift):
the JSONL sink writes them as lines with ``"type": "warning"`` (frame lines have no
``type``), the MQTT sink on ``<topic>/events``.

Every file sink hands each frame to the OS before the next one, so killing the process
loses at most the frame being written.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs

import cv2
import numpy as np

from dmgrd_edge.errors import DmgrdError

from .avi import DEFAULT_MAX_BYTES, MjpegAviWriter, existing_parts
from .events import Event
from .sources import VIDEO_SUFFIXES


class SinkError(DmgrdError):
    """A sink that cannot be opened."""


class Sink(Protocol):
    needs_overlay: bool

    def write(self, event: Event, frame: np.ndarray, overlay: np.ndarray | None) -> None: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def _naming(path: Path):
    """Re-raise an OSError naming the file (a failed write or flush on an open file names none)."""
    try:
        yield
    except OSError as exc:
        if exc.filename:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


class JsonlSink:
    needs_overlay = False

    def __init__(self, path: Path, ng_only: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a", buffering=1)
        self.path, self.ng_only = path, ng_only

    def write(self, event, frame, overlay):
        if self.ng_only and not event.ng:
            return
        # flushed to the kernel per line: a killed process loses nothing already written
        # (fsync per frame would cost a disk flush per frame and only protects against power
        # loss)
        with _naming(self.path):
            self.handle.write(event.to_json() + "\n")
            self.handle.flush()

    def warn(self, record: dict) -> None:
        with _naming(self.path):
            self.handle.write(json.dumps({"type": "warning", **record}) + "\n")
            self.handle.flush()

    def close(self):
        try:
            self.handle.close()
        except OSError:
            pass  # the write that failed has been reported; closing cannot flush more


class VideoSink:
    """Motion-JPEG AVI with overlays, complete on disk after every frame (runtime/avi.py);
    long recordings roll over to numbered files. Refuses to overwrite a recording."""

    needs_overlay = True

    def __init__(self, path: Path, fps: float, max_bytes: int = DEFAULT_MAX_BYTES):
        if path.suffix.lower() != ".avi":
            raise SinkError(
                f"cannot record {path.name}: the video sink writes Motion-JPEG .avi only, "
                "which stays readable up to the last frame when a run is killed or the power "
                "fails (an .mp4 does not)",
                f"name it {path.with_suffix('.avi').name}; convert afterwards if needed, e.g. "
                f"ffmpeg -i {path.with_suffix('.avi').name} {path.name}",
            )
        taken = existing_parts(path)
        if taken:
            raise SinkError(
                f"{', '.join(str(p) for p in taken)} already exists",
                "give a new file name for the recording, or move the old one away (recordings are "
                "never overwritten)",
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.writer = path, MjpegAviWriter(path, fps, max_bytes=max_bytes)

    def write(self, event, frame, overlay):
        with _naming(self.path):
            self.writer.write(overlay if overlay is not None else frame)

    def close(self):
        with _naming(self.path):
            self.writer.close()


class FolderSink:
    needs_overlay = True

    def __init__(self, path: Path):
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        # a second run into the same folder adds files and never replaces the first run's
        self.run = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())

    def write(self, event, frame, overlay):
        if not event.ng:
            return
        image = overlay if overlay is not None else frame
        name = f"{self.run}_frame{event.frame:08d}_{event.score:.4f}"
        target, n = self.path / f"{name}.png", 0
        while target.exists():
            n += 1
            target = self.path / f"{name}-{n}.png"
        tmp = target.with_suffix(".tmp.png")
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(image[:, :, ::-1])):
            raise SinkError(
                f"cannot write {tmp}", "check that the folder is writable and the disk is not full"
            )
        os.replace(tmp, target)

    def close(self):
        pass


class DisplaySink:
    needs_overlay = True

    def __init__(self, name: str = "dmgrd-edge"):
        self.name = name
        try:
            cv2.namedWindow(name, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SinkError(
                "cannot open a display window (no display, or OpenCV built without GUI)",
                "run with --headless, or use a video/folder sink instead of display://",
            ) from exc

    def write(self, event, frame, overlay):
        cv2.imshow(
            self.name, np.ascontiguousarray((overlay if overlay is not None else frame)[:, :, ::-1])
        )
        cv2.waitKey(1)

    def close(self):
        cv2.destroyWindow(self.name)


def open_sink(
    uri: str, headless: bool, fps: float = 25.0, camera: str | None = None, log=print
) -> Sink:
    scheme, sep, rest = uri.partition("://")
    if scheme == "mqtt":
        from .mqtt_sink import MqttSink, parse_mqtt_uri

        return MqttSink(parse_mqtt_uri(uri, camera), log=log)
    if scheme == "opcua":
        from .opcua_server import OpcUaSink

        return OpcUaSink(uri, camera, log=log)
    if not sep:
        scheme, rest = "", uri
    rest, _, query = rest.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    path = Path(rest)
    if scheme == "display":
        if headless:
            raise SinkError("display:// given together with --headless", "drop one of them")
        return DisplaySink()
    if scheme == "jsonl" or (not scheme and path.suffix.lower() == ".jsonl"):
        return JsonlSink(path, options.get("ng_only", "0") in ("1", "true", "yes"))
    if scheme == "folder":
        return FolderSink(path)
    if scheme == "video" or (not scheme and path.suffix.lower() in VIDEO_SUFFIXES):
        return VideoSink(path, float(options.get("fps", fps)))
    raise SinkError(
        f"unknown sink {uri!r}",
        "use display://, a video file (.avi), an events .jsonl file, folder://DIR, "
        "mqtt://host:port/topic or opcua://host:port",
    )
