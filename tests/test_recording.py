"""File sinks keep what they wrote: the crash-safe Motion-JPEG AVI recording (read back with
OpenCV after a clean close, after SIGKILL, and across roll-over files), no overwriting of an
earlier recording or NG frame."""

import inspect
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dmgrd_edge.runtime.avi import MjpegAviWriter, segment_path
from dmgrd_edge.runtime.events import Event, Latency
from dmgrd_edge.runtime.sinks import FolderSink, SinkError, open_sink


def frame(i: int, size=(96, 128)) -> np.ndarray:
    """A distinct RGB frame: its number drawn big on a colour that changes with it."""
    image = np.zeros((*size, 3), np.uint8)
    image[:] = (i * 37 % 256, i * 91 % 256, 255 - i * 37 % 256)
    cv2.putText(image, str(i), (10, size[0] - 20), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 4)
    return image


def read_all(path) -> list[np.ndarray]:
    reader = cv2.VideoCapture(str(path))
    assert reader.isOpened(), path
    frames = []
    while True:
        ok, image = reader.read()
        if not ok:
            return frames
        frames.append(image[:, :, ::-1])


def avi_counts(path) -> tuple[int, int, int, int]:
    """File size, and from the AVI header: RIFF size + 8, total frames (avih), stream length
    (strh)."""
    data = path.read_bytes()
    riff = struct.unpack_from("<I", data, 4)[0] + 8
    total = struct.unpack_from("<I", data, data.index(b"avih") + 8 + 16)[0]
    length = struct.unpack_from("<I", data, data.index(b"strh") + 8 + 32)[0]
    return len(data), riff, total, length


def assert_same_frames(got, first, count):
    assert len(got) == count
    for i, image in enumerate(got):  # JPEG at quality 90: small error, and each frame is its own
        assert np.abs(image.astype(int) - frame(first + i)).mean() < 4
        if i:
            assert np.abs(image.astype(int) - frame(first + i - 1)).mean() > 10


def test_avi_reads_back_with_opencv(tmp_path):
    writer = MjpegAviWriter(tmp_path / "rec.avi", fps=12.5)
    for i in range(30):
        writer.write(frame(i))
    writer.close()
    reader = cv2.VideoCapture(str(tmp_path / "rec.avi"))
    assert reader.get(cv2.CAP_PROP_FRAME_COUNT) == 30 and reader.get(cv2.CAP_PROP_FPS) == 12.5
    assert (reader.get(cv2.CAP_PROP_FRAME_WIDTH), reader.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (
        128,
        96,
    )
    assert_same_frames(read_all(tmp_path / "rec.avi"), 0, 30)


KILLED = """
import os, signal
import cv2
import numpy as np
from dmgrd_edge.runtime.avi import MjpegAviWriter
{frame_source}
writer = MjpegAviWriter({target!r}, fps=25, max_bytes={max_bytes})
for i in range({count}):
    writer.write(frame(i))
os.kill(os.getpid(), signal.SIGKILL)  # no close: no index, no final sizes
"""


@pytest.mark.fault("process killed or stopped mid-run (SIGKILL, SIGTERM)")
@pytest.mark.parametrize("max_bytes", [1 << 30, 40_000])
def test_avi_survives_kill(tmp_path, max_bytes):
    target = tmp_path / "rec.avi"
    code = KILLED.format(
        frame_source=inspect.getsource(frame), target=str(target), max_bytes=max_bytes, count=23
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    files = [segment_path(target, n) for n in range(100) if segment_path(target, n).exists()]
    assert (len(files) == 1) == (max_bytes == 1 << 30)
    got = [image for path in files for image in read_all(path)]
    assert_same_frames(got, 0, 23)  # every frame written before the kill
    # and the header of each file counts exactly what is in it, the unfinished one included
    for path in files:
        size, riff, total, length = avi_counts(path)
        assert riff == size and total == length == len(read_all(path))
    # a kill in the middle of a chunk leaves bytes after the last counted frame: still 23
    with open(files[-1], "ab") as handle:
        handle.write(b"00dc" + (5000).to_bytes(4, "little") + b"\xff\xd8" + bytes(100))
    assert len([image for path in files for image in read_all(path)]) == 23


def test_avi_rolls_over_without_losing_frames(tmp_path):
    writer = MjpegAviWriter(tmp_path / "rec.avi", fps=25, max_bytes=40_000)
    for i in range(40):
        writer.write(frame(i))
    writer.close()
    assert writer.written[:3] == [
        tmp_path / "rec.avi",
        tmp_path / "rec-0001.avi",
        tmp_path / "rec-0002.avi",
    ]
    first = 0
    for path in writer.written:
        assert path.stat().st_size <= 40_000
        got = read_all(path)
        assert_same_frames(got, first, len(got))
        first += len(got)
    assert first == 40


@pytest.mark.fault("existing output kept, never overwritten")
def test_video_sink_never_overwrites_and_refuses_mp4(tmp_path):
    with pytest.raises(SinkError, match=r"\.avi only") as info:
        open_sink(str(tmp_path / "out.mp4"), headless=True)
    assert "out.avi" in info.value.fix
    old = tmp_path / "out.avi"
    old.write_bytes(b"yesterday's recording")
    with pytest.raises(SinkError, match="already exists"):
        open_sink(str(old), headless=True)
    assert old.read_bytes() == b"yesterday's recording"
    (tmp_path / "b-0003.avi").write_bytes(b"part of an earlier long recording")
    with pytest.raises(SinkError, match="b-0003.avi already exists"):
        open_sink(f"video://{tmp_path / 'b.avi'}", headless=True)
    sink = open_sink(str(tmp_path / "new.avi"), headless=True)
    sink.close()
    assert not (tmp_path / "new.avi").exists()  # no frame, no file


@pytest.mark.fault("existing output kept, never overwritten")
def test_folder_sink_adds_and_never_replaces(tmp_path):
    latency = Latency(preprocess=1.0, inference=2.0, postprocess=0.5)
    ng = Event.judged(7, 1.25, True, [], latency)
    ok = Event.judged(8, 1.25, False, [], latency)
    for _ in range(2):  # two runs into the same folder, possibly within one second
        sink = FolderSink(tmp_path / "ng")
        sink.write(ng, frame(7), None)
        sink.write(ok, frame(8), None)
        sink.close()
    names = sorted(p.name for p in (tmp_path / "ng").iterdir())
    assert len(names) == 2 and all(
        "_frame00000007_1.2500" in n and n.endswith(".png") for n in names
    )


FULL_DISK = """
import resource, signal
import cv2
import numpy as np
from dmgrd_edge.runtime.avi import MjpegAviWriter
{frame_source}
# writes past the limit fail with EFBIG, as on a full disk
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))
writer = MjpegAviWriter({target!r}, fps=25)
written = 0
try:
    for i in range(100):
        writer.write(frame(i))
        written += 1
except OSError as exc:
    print("failed:", exc.errno)
try:
    writer.close()
except OSError:
    pass
print(written)
"""


@pytest.mark.fault("disk full")
def test_avi_stays_readable_when_the_disk_fills_up(tmp_path):
    target = tmp_path / "rec.avi"
    code = FULL_DISK.format(frame_source=inspect.getsource(frame), target=str(target))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    written = int(lines[-1])
    assert "failed:" in proc.stdout and 0 < written < 100
    assert_same_frames(read_all(target), 0, written)  # every frame written before the disk filled
    size, riff, total, length = avi_counts(target)
    assert total == length == written and riff <= size
