"""Output sinks, parsed from URIs.

| URI | sink |
|---|---|
| `display://` | an OpenCV window (not with --headless) |
| `out.mp4`, `video://out.avi` | video file with overlays |
| `events.jsonl`, `jsonl://events.jsonl?ng_only=1` | one JSON line per frame (or per NG frame) |
| `folder://ng_frames` | NG frames with overlays as PNG |

Every file sink hands each frame to the OS before the next one, so killing the process
loses at most the frame being written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs

import cv2
import numpy as np

from dmgrd_edge.errors import DmgrdError

from .sources import VIDEO_SUFFIXES


class SinkError(DmgrdError):
    """A sink that cannot be opened."""


class Sink(Protocol):
    needs_overlay: bool

    def write(self, event: dict, frame: np.ndarray, overlay: np.ndarray | None) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    needs_overlay = False

    def __init__(self, path: Path, ng_only: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a", buffering=1)
        self.ng_only = ng_only

    def write(self, event, frame, overlay):
        if self.ng_only and event["decision"] != "NG":
            return
        # flushed to the kernel per line: a killed process loses nothing already written
        # (fsync per frame would cost ~1 ms and only protects against power loss)
        self.handle.write(json.dumps(event, separators=(",", ":")) + "\n")
        self.handle.flush()

    def close(self):
        self.handle.close()


class VideoSink:
    needs_overlay = True

    def __init__(self, path: Path, fps: float):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.writer = path, fps, None

    def write(self, event, frame, overlay):
        image = overlay if overlay is not None else frame
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() in (".mp4", ".m4v", ".mov") else "MJPG"))
            self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (image.shape[1], image.shape[0]))
            if not self.writer.isOpened():
                raise SinkError(f"cannot write video {self.path}", "use .avi (MJPG) or .mp4 (mp4v)")
        self.writer.write(np.ascontiguousarray(image[:, :, ::-1]))

    def close(self):
        if self.writer is not None:
            self.writer.release()


class FolderSink:
    needs_overlay = True

    def __init__(self, path: Path):
        path.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, event, frame, overlay):
        if event["decision"] != "NG":
            return
        image = overlay if overlay is not None else frame
        target = self.path / f"frame{event['frame']:08d}_{event['score']:.4f}.png"
        tmp = target.with_suffix(".tmp.png")
        cv2.imwrite(str(tmp), np.ascontiguousarray(image[:, :, ::-1]))
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
            raise SinkError("cannot open a display window (no display, or OpenCV built without GUI)",
                            "run with --headless, or use a video/folder sink instead of display://") from exc

    def write(self, event, frame, overlay):
        cv2.imshow(self.name, np.ascontiguousarray((overlay if overlay is not None else frame)[:, :, ::-1]))
        cv2.waitKey(1)

    def close(self):
        cv2.destroyWindow(self.name)


def open_sink(uri: str, headless: bool, fps: float = 25.0) -> Sink:
    scheme, sep, rest = uri.partition("://")
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
    raise SinkError(f"unknown sink {uri!r}",
                    "use display://, a video file (.mp4/.avi), an events .jsonl file, or folder://DIR")
