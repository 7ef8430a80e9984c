"""A recording that survives a kill: Motion-JPEG in AVI, written by hand.

OpenCV's video writer buffers about 256 KiB in FFmpeg before anything reaches the file, and
an MP4 is unreadable until its index is written at a clean close; a killed run or a power cut
loses the last seconds, or the whole MP4. Here every frame is one JPEG chunk handed to the OS
at once, and the header's sizes and frame counts are rewritten in place after each chunk, so
the file on disk is always a complete AVI of every frame written so far (the optional index
is added at a clean close; players and OpenCV read the file with or without it). A kill
loses at most the frame being written.

AVI 1.0 sizes are 32-bit and many readers stop near 1 GiB, so a long recording rolls over to
numbered files: ``line.avi``, ``line-0001.avi``, ``line-0002.avi``, ... No file that exists
is ever overwritten.
"""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from pathlib import Path
from typing import IO

import cv2
import numpy as np

# byte offsets of the fields rewritten after every frame (layout written by _header)
_RIFF_SIZE, _AVIH_FLAGS, _AVIH_FRAMES, _AVIH_BUFFER = 4, 44, 48, 60
_STRH_LENGTH, _STRH_BUFFER, _MOVI_SIZE = 140, 144, 216
_MOVI_DATA = 224  # first chunk; the 'movi' fourcc (the index's reference point) sits at 220
_HAS_INDEX, _KEYFRAME = 0x10, 0x10
_ENTRY = struct.Struct("<4sIII")  # one idx1 entry: chunk id, flags, offset, length
DEFAULT_MAX_BYTES = 1 << 30


def _header(width: int, height: int, fps: float) -> bytes:
    rate, scale = int(round(fps * 1000)), 1000
    avih = struct.pack(
        "<14I", int(round(1e6 / fps)), 0, 0, 0, 0, 0, 1, 0, width, height, 0, 0, 0, 0
    )
    strh = struct.pack(
        "<4s4sIHHIIIIIIiI4h",
        b"vids",
        b"MJPG",
        0,
        0,
        0,
        0,
        scale,
        rate,
        0,
        0,
        0,
        -1,
        0,
        0,
        0,
        width,
        height,
    )
    strf = struct.pack(
        "<IiiHH4sIiiII", 40, width, height, 1, 24, b"MJPG", width * height * 3, 0, 0, 0, 0
    )
    strl = b"strl" + _chunk(b"strh", strh) + _chunk(b"strf", strf)
    hdrl = b"hdrl" + _chunk(b"avih", avih) + _chunk(b"LIST", strl)
    head = b"RIFF" + struct.pack("<I", 0) + b"AVI " + _chunk(b"LIST", hdrl)
    head += b"LIST" + struct.pack("<I", 4) + b"movi"
    assert len(head) == _MOVI_DATA, len(head)
    return head


def _chunk(tag: bytes, payload: bytes) -> bytes:
    """A RIFF chunk: its tag, its payload's length (little-endian 32 bits), the payload."""
    return tag + struct.pack("<I", len(payload)) + payload


class _Segment:
    """One AVI file, created exclusively, complete on disk after every frame."""

    def __init__(self, path: Path, width: int, height: int, fps: float):
        self.path, self.size = path, (width, height)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(self.fd, _header(width, height, fps))
        self.end, self.frames, self.biggest = _MOVI_DATA, 0, 0
        # the idx1 entries, 16 bytes a frame, go to an unlinked file beside the recording, not
        # to memory, where they would grow with every frame of a run of days; if it cannot be
        # written (a full disk) the recording goes on without an index
        try:
            self.index: IO[bytes] | None = tempfile.TemporaryFile(dir=path.parent)
        except OSError:
            self.index = None

    def _put(self, offset: int, value: int) -> None:
        os.pwrite(self.fd, struct.pack("<I", value), offset)

    def write(self, jpeg: bytes) -> None:
        chunk = _chunk(b"00dc", jpeg) + (b"\0" if len(jpeg) % 2 else b"")
        if os.pwrite(self.fd, chunk, self.end) != len(chunk):
            raise OSError(errno.ENOSPC, "short write: no room for the frame", str(self.path))
        if self.index is not None:
            try:
                self.index.write(
                    _ENTRY.pack(b"00dc", _KEYFRAME, self.end - (_MOVI_DATA - 4), len(jpeg))
                )
            except OSError:
                self._drop_index()
        self.end += len(chunk)
        self.frames += 1
        # the chunk is in the file before the header counts it: a kill between the two leaves
        # the previous complete file plus bytes no reader looks at
        if len(jpeg) > self.biggest:
            self.biggest = len(jpeg)
            self._put(_AVIH_BUFFER, self.biggest + 8)
            self._put(_STRH_BUFFER, self.biggest + 8)
        self._put(_MOVI_SIZE, self.end - (_MOVI_DATA - 4))
        self._put(_AVIH_FRAMES, self.frames)
        self._put(_STRH_LENGTH, self.frames)
        self._put(_RIFF_SIZE, self.end - 8)

    def _drop_index(self) -> None:
        if self.index is not None:
            self.index.close()
            self.index = None

    def close(self) -> None:
        """Add the index; if that fails (a full disk), the file stays the complete AVI it was."""
        try:
            if self.index is not None:
                try:
                    self._write_index(self.index)
                except OSError:
                    pass  # no room for the index: the file without it is the AVI it was
            os.fsync(self.fd)
        finally:
            self._drop_index()
            os.close(self.fd)

    def _write_index(self, index: IO[bytes]) -> None:
        """Copy the entries after the last frame, then let the header count them."""
        index.flush()
        size = index.tell()
        index.seek(0)
        at = self.end + 8
        if os.pwrite(self.fd, b"idx1" + struct.pack("<I", size), self.end) != 8:
            return
        while block := index.read(1 << 20):
            if os.pwrite(self.fd, block, at) != len(block):
                return
            at += len(block)
        if at == self.end + 8 + size:
            self._put(_AVIH_FLAGS, _HAS_INDEX)
            self._put(_RIFF_SIZE, at - 8)


def segment_path(path: Path, number: int) -> Path:
    return path if number == 0 else path.with_name(f"{path.stem}-{number:04d}{path.suffix}")


def existing_parts(path: Path) -> list[Path]:
    """Files of a recording at ``path`` that already exist (the first and any numbered part)."""
    numbered = path.parent.glob(f"{path.stem}-[0-9][0-9][0-9][0-9]{path.suffix}")
    return sorted(p for p in [path, *numbered] if p.exists())


class MjpegAviWriter:
    """RGB frames -> Motion-JPEG AVI, crash-safe, rolling over at ``max_bytes``."""

    def __init__(
        self, path: Path, fps: float, quality: int = 90, max_bytes: int = DEFAULT_MAX_BYTES
    ):
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path, self.fps, self.quality, self.max_bytes = (
            Path(path),
            float(fps),
            int(quality),
            int(max_bytes),
        )
        self.segment: _Segment | None = None
        self.written: list[Path] = []

    def write(self, rgb: np.ndarray) -> None:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise OSError(f"JPEG encoding failed for a frame of shape {rgb.shape}")
        jpeg = encoded.tobytes()
        size = (rgb.shape[1], rgb.shape[0])
        if (
            self.segment is not None
            and self.segment.frames
            and (
                self.segment.size != size
                or (self.segment.end + len(jpeg) + 16 * (self.segment.frames + 2) > self.max_bytes)
            )
        ):
            self.segment.close()
            self.segment = None
        if self.segment is None:
            target = segment_path(self.path, len(self.written))
            self.segment = _Segment(target, size[0], size[1], self.fps)
            self.written.append(target)
        self.segment.write(jpeg)

    def close(self) -> None:
        if self.segment is not None:
            self.segment.close()
            self.segment = None
