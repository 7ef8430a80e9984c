"""The torch-free runtime: URI parsing, capture behaviour, reconnect, sinks, the whole
pipeline on a real generated video, signals, and the run CLI without torch."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dmgrd_edge.data.synthetic import make_image
from dmgrd_edge.errors import ConfigError
from dmgrd_edge.runtime.capture import END, Capture
from dmgrd_edge.runtime.postprocess import regions
from dmgrd_edge.runtime.events import Event, Latency
from dmgrd_edge.runtime.sinks import SinkError, open_sink
from dmgrd_edge.runtime.sources import (
    ImageFolderSource,
    SourceError,
    Status,
    VideoCaptureSource,
    csi_pipeline,
    open_source,
    parse_uri,
)

DEFECT_EVERY = 7


def write_video(path, n, size=64, defect_every=DEFECT_EVERY):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (size, size))
    truth = []
    for i in range(n):
        bad = i % defect_every == 3
        image, _ = make_image("washer", 0, "video", i, size, "foreign" if bad else None)
        writer.write(np.ascontiguousarray(image[:, :, ::-1]))
        truth.append(bad)
    writer.release()
    return truth


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "line.avi"
    return path, write_video(path, 40)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, trained_ckpt):
    from dmgrd_edge.options import BatchProfile, ExportOptions
    from dmgrd_edge.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("rb") / "bundle"
    export_bundle(
        ExportOptions(
            checkpoint=trained_ckpt, out=out, int8=True, calib_count=8, batch=BatchProfile(1, 1, 4)
        ),
        log=lambda _: None,
    )
    return out


@pytest.mark.parametrize(
    "uri, kind, location",
    [
        ("0", "v4l2", "0"),
        ("/dev/video2", "v4l2", "/dev/video2"),
        ("csi://1", "csi", "1"),
        ("rtsp://cam.local/stream", "rtsp", "rtsp://cam.local/stream"),
        (
            "gst://videotestsrc ! videoconvert ! appsink",
            "gst",
            "videotestsrc ! videoconvert ! appsink",
        ),
        ("line.mp4", "file", "line.mp4"),
        ("file://line.avi", "file", "line.avi"),
        ("frames/*.png", "images", "frames/*.png"),
    ],
)
def test_parse_uri(uri, kind, location):
    spec = parse_uri(uri)
    assert (spec.kind, spec.location) == (kind, location)
    assert spec.live == (kind in ("v4l2", "csi", "rtsp", "gst"))


@pytest.mark.fault("source or sink URI that cannot be used")
@pytest.mark.parametrize(
    "uri, needle",
    [
        ("csi://left", "csi://N"),
        ("ftp://x", "unknown source scheme"),
        ("notes.txt", "cannot tell"),
        ("gst://videotestsrc", "appsink"),
        ("", "empty"),
    ],
)
def test_parse_uri_errors(uri, needle):
    with pytest.raises(SourceError, match=needle):
        parse_uri(uri)


def test_csi_pipeline_and_gstreamer_check():
    spec = parse_uri("csi://0", 1280, 720, 60)
    text = csi_pipeline(spec)
    assert (
        "sensor-id=0" in text
        and "width=1280" in text
        and "framerate=60/1" in text
        and "appsink" in text
    )
    from dmgrd_edge.runtime.sources import gstreamer_available

    if not gstreamer_available():
        with pytest.raises(SourceError, match="GStreamer"):
            VideoCaptureSource(spec)


def test_csi_pipeline_scales_on_the_converter_before_the_cpu_converts(monkeypatch):
    """With the model's input size, nvvidconv scales the NVMM frame to it and videoconvert
    (CPU) only repacks frames of that size; the sensor mode stays as asked. open_source
    hands the size to the pipeline it opens."""
    from dmgrd_edge.runtime import sources

    opened = []

    class FakeCapture:
        def __init__(self, pipeline, api):
            opened.append((pipeline, api))

        def isOpened(self):
            return True

        def get(self, prop):  # the frame size is checked at open (a stream before it starts: 0)
            return 0.0

        def release(self):
            pass

    monkeypatch.setattr(sources, "gstreamer_available", lambda: True)
    monkeypatch.setattr(sources.cv2, "VideoCapture", FakeCapture)
    open_source(parse_uri("csi://0"), (64, 48)).close()
    assert opened == [(csi_pipeline(parse_uri("csi://0"), (64, 48)), cv2.CAP_GSTREAMER)]
    text = csi_pipeline(parse_uri("csi://1", 1920, 1080, 30), (256, 224))
    steps = [step.strip() for step in text.split("!")]
    assert steps[1] == "video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1"
    scaled = steps.index("video/x-raw,width=256,height=224,format=BGRx")
    assert steps[scaled - 1] == "nvvidconv" and steps[scaled + 1] == "videoconvert"
    assert [s for s in steps if s.startswith("video/x-raw,") and "width" in s] == [steps[scaled]]


def test_video_file_source_reads_every_frame(video):
    path, truth = video
    source = VideoCaptureSource(parse_uri(str(path)))
    frames = []
    while True:
        status, frame = source.read()
        if status is Status.END:
            break
        frames.append(frame)
    assert len(frames) == len(truth) and frames[0].shape == (64, 64, 3)


def test_every_source_implements_the_protocol(video, tmp_path):
    """Each kind open_source makes has what the capture thread and the CLI read of it."""
    from dmgrd_edge.runtime.sources import PacedSource, Source, open_source

    path, _ = video
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    opened = [
        open_source(parse_uri(str(path))),
        open_source(parse_uri(str(tmp_path))),
        open_source(parse_uri(str(path), fps=50)),
        open_source(parse_uri(str(tmp_path), fps=50)),
    ]
    assert [type(s).__name__ for s in opened] == [
        "VideoCaptureSource",
        "ImageFolderSource",
        "PacedSource",
        "PacedSource",
    ]
    for source in opened:
        assert isinstance(source, Source), type(source).__name__
        assert source.dropped == 0 and not source.camera
        assert source.live is isinstance(source, PacedSource)
        if isinstance(source, PacedSource):
            assert source.fps == 50
        else:  # the rate the file reports (a video), or none (a folder)
            assert source.fps is None or source.fps > 0
        source.close()

    class Incomplete:  # no camera, dropped, spec: not a source
        live = False

        def read(self):
            return Status.END, None

    assert not isinstance(Incomplete(), Source)


@pytest.mark.fault("image file corrupt or truncated")
def test_folder_skips_corrupt_files(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((16, 16, 3), i * 50, np.uint8))
    (tmp_path / "1.png").write_bytes(b"garbage")
    capture = Capture(ImageFolderSource(parse_uri(str(tmp_path))))
    capture.start()
    items = []
    while (item := capture.queue.get(timeout=5)) is not END:
        items.append(item)
    assert len(items) == 2 and capture.counters.corrupt == 1


class SlowConsumerLive(VideoCaptureSource):
    """A real video file presented as a live camera."""

    def __init__(self, spec):
        super().__init__(spec)
        self.live = True


@pytest.mark.fault("live source faster than inference (frames drop)")
def test_live_source_drops_oldest_but_file_never_drops(video):
    path, truth = video
    live = Capture(SlowConsumerLive(parse_uri(str(path))), queue_size=2, max_retries=0)
    live.start()
    live.join(timeout=10)  # nobody consumes: the live capture keeps only the newest frames
    kept = []
    while (item := live.queue.get(timeout=1)) is not END:
        kept.append(item.index)
    assert live.counters.dropped > 0 and kept[-1] == live.counters.captured - 1
    file_capture = Capture(VideoCaptureSource(parse_uri(str(path))), queue_size=2)
    file_capture.start()
    time.sleep(0.3)
    got = []
    while (item := file_capture.queue.get(timeout=5)) is not END:
        got.append(item.index)
    assert got == list(range(len(truth))) and file_capture.counters.dropped == 0


class FlakyCamera(VideoCaptureSource):
    """A real video stream that dies after `fail_at` frames; reopening works `recoveries` times."""

    def __init__(self, spec, fail_at, recoveries):
        self.fail_at, self.recoveries, self.served, self.opens = fail_at, recoveries, 0, 0
        super().__init__(spec)
        self.live = self.camera = True

    def open(self):
        self.opens += 1
        if self.opens > 1 + self.recoveries:
            raise SourceError("camera unplugged")
        super().open()

    def read(self):
        self.served += 1
        if self.served % self.fail_at == 0:
            return Status.ERROR, None
        return super().read()


@pytest.mark.fault("camera failing or lost mid-stream")
def test_source_failing_mid_stream_reconnects_then_exits_cleanly(video, bundle):
    from dmgrd_edge.bundle import load_bundle
    from dmgrd_edge.runtime.pipeline import EXIT_SOURCE_LOST, Pipeline, make_preprocess
    from dmgrd_edge.options import RunConfig
    from dmgrd_edge.runtime.select import create_backend

    path, _ = video
    loaded = load_bundle(bundle)
    camera = FlakyCamera(parse_uri(str(path)), fail_at=6, recoveries=1)
    capture = Capture(
        camera,
        make_preprocess(loaded),
        queue_size=64,
        max_retries=2,
        backoff_s=0.01,
        errors_before_reconnect=1,
    )
    logs = []
    pipeline = Pipeline(
        loaded,
        create_backend(loaded, "onnxruntime", log=logs.append).backend,
        [],
        RunConfig(threshold=loaded.threshold, pixel_threshold=loaded.threshold, status_every_s=0),
        log=logs.append,
    )
    code = pipeline.run(capture)
    assert code == EXIT_SOURCE_LOST
    assert (
        capture.counters.reconnects == 3 and camera.opens == 4
    )  # 1 recovery, then 2 failed attempts
    assert pipeline.stats.frames == 10  # 5 frames before each failure
    assert "not recovered" in pipeline.summary["source_error"]


class RecordingSink:
    def __init__(self):
        self.events = []

    def write(self, event, frame, overlay):
        self.events.append(event.to_dict())  # the record as the JSONL sink writes it

    def close(self):
        pass


def _stream(bundle, path, workers, batch=1, max_frames=None):
    from dmgrd_edge.bundle import load_bundle
    from dmgrd_edge.runtime.pipeline import Pipeline, make_preprocess
    from dmgrd_edge.options import RunConfig
    from dmgrd_edge.runtime.select import create_backend

    loaded = load_bundle(bundle)
    chosen = create_backend(loaded, "onnxruntime", "fp32", log=lambda *_: None, workers=workers)
    sink = RecordingSink()
    config = RunConfig(
        threshold=loaded.threshold,
        pixel_threshold=loaded.threshold,
        batch=batch,
        max_frames=max_frames,
        status_every_s=1e9,
        workers=chosen.workers,
    )
    pipeline = Pipeline(loaded, chosen.backend, [sink], config, log=lambda *_: None)
    assert (
        pipeline.run(
            Capture(open_source(parse_uri(str(path))), make_preprocess(loaded), queue_size=8)
        )
        == 0
    )
    return chosen, sink.events, pipeline.summary


def test_calls_in_flight_keep_frame_order_and_results(video, bundle):
    """Several inference calls at once: every frame, in order, with the scores of one call at
    a time."""
    path, truth = video
    one, serial, _ = _stream(bundle, path, workers=1)
    three, overlapped, summary = _stream(bundle, path, workers=3, batch=2)
    assert one.workers == 1 and three.workers == 3 and summary["backend"]["workers"] == 3
    assert (
        [e["frame"] for e in overlapped] == [e["frame"] for e in serial] == list(range(len(truth)))
    )
    np.testing.assert_allclose(
        [e["score"] for e in overlapped], [e["score"] for e in serial], rtol=1e-5
    )
    assert [e["decision"] for e in overlapped] == [e["decision"] for e in serial]
    _, limited, summary = _stream(bundle, path, workers=3, batch=2, max_frames=7)
    assert [e["frame"] for e in limited] == list(range(7)) and summary["frames"] == 7


def test_every_backend_declares_the_batches_it_takes(bundle):
    """``batch_range`` is part of the Backend protocol, read by bench from every backend (the
    TensorRT one: tests/test_tensorrt_fake.py); a class without it is not a Backend."""
    import typing

    from dmgrd_edge.runtime.backend import Backend
    from dmgrd_edge.runtime.onnx_backend import OnnxBackend

    assert "batch_range" in typing.get_type_hints(Backend)
    backend = OnnxBackend(bundle / "model.onnx")
    assert isinstance(backend, Backend) and backend.batch_range == (1, None)

    class Undeclared:
        name, precision, calls_from_any_thread = "undeclared", "fp32", True

        def infer(self, batch): ...

        def describe(self): ...

        def close(self): ...

    assert not isinstance(Undeclared(), Backend)


@pytest.mark.fault("inference error in a worker thread")
def test_inference_error_in_a_worker_stops_the_run(video, bundle):
    """An exception in an inference thread ends the run with that error; sinks are closed and
    capture stops; nothing hangs."""
    import threading

    from dmgrd_edge.bundle import load_bundle
    from dmgrd_edge.runtime.backend import BackendError
    from dmgrd_edge.runtime.pipeline import Pipeline, make_preprocess
    from dmgrd_edge.options import RunConfig

    class FailingBackend:
        name, precision, calls_from_any_thread = "failing", "fp32", True
        batch_range = (1, None)

        def __init__(self):
            self.calls, self.lock = 0, threading.Lock()

        def infer(self, batch):
            with self.lock:
                self.calls += 1
                if self.calls > 4:  # every call from the fifth on
                    raise BackendError("device lost")
            return np.zeros((len(batch), 1, 64, 64), np.float32), np.zeros(len(batch), np.float32)

        def describe(self):
            return {"backend": self.name}

    class ClosingSink(RecordingSink):
        closed = False

        def close(self):
            self.closed = True

    loaded = load_bundle(bundle)
    sink = ClosingSink()
    pipeline = Pipeline(
        loaded,
        FailingBackend(),
        [sink],
        RunConfig(threshold=1.0, pixel_threshold=1.0, status_every_s=1e9, workers=2),
        log=lambda *_: None,
    )
    capture = Capture(open_source(parse_uri(str(video[0]))), make_preprocess(loaded), queue_size=4)
    with pytest.raises(BackendError, match="device lost"):
        pipeline.run(capture)
    # two calls run at once, so the fifth call may carry frame 3 or 4: the frames before it are
    # written, in order
    assert sink.closed and not capture.is_alive() and len(sink.events) in (3, 4)
    assert [e["frame"] for e in sink.events] == list(range(len(sink.events)))


@pytest.mark.fault("inference threads ahead of a slow main thread (a busy CPU)")
def test_inference_threads_stay_two_batches_each_ahead_of_a_slow_main_thread(video, bundle):
    """A main thread that falls behind holds the inference threads back: at most 2 x workers
    batches are taken and not yet handed over, so results do not pile up in memory. The
    first frame's sink waits (up to 2 s) for the threads to run further ahead than that."""
    import threading

    from dmgrd_edge.bundle import load_bundle
    from dmgrd_edge.runtime.pipeline import Pipeline, RunConfig, make_preprocess
    from dmgrd_edge.runtime.select import create_backend

    loaded = load_bundle(bundle)
    chosen = create_backend(loaded, "onnxruntime", "fp32", log=lambda *_: None, workers=2)
    limit, real = 2 * chosen.workers, chosen.backend
    lock, ran_ahead, calls, ahead = threading.Lock(), threading.Event(), [0], []
    first_written = threading.Event()

    class CountingBackend:  # the real ONNX Runtime backend, its calls counted
        calls_from_any_thread = True

        def infer(self, batch):
            with lock:
                calls[0] += 1
                # while frame 0 is in its sink, batch 0 is handed and at most `limit` others
                if calls[0] > limit + 1 and not first_written.is_set():
                    ran_ahead.set()
            return real.infer(batch)

        def describe(self):
            return real.describe()

    class SlowSink(RecordingSink):
        def write(self, event, frame, overlay):
            if event.frame == 0:
                ran_ahead.wait(timeout=2)
            with lock:
                ahead.append(calls[0] - (event.frame + 1))  # calls made beyond this frame's
                first_written.set()
            super().write(event, frame, overlay)

    sink = SlowSink()
    config = RunConfig(
        threshold=loaded.threshold,
        pixel_threshold=loaded.threshold,
        status_every_s=1e9,
        workers=chosen.workers,
    )
    pipeline = Pipeline(loaded, CountingBackend(), [sink], config, log=lambda *_: None)
    capture = Capture(open_source(parse_uri(str(video[0]))), make_preprocess(loaded), queue_size=4)
    try:
        assert pipeline.run(capture) == 0
    finally:
        chosen.close()
    assert chosen.workers == 2 and not ran_ahead.is_set()
    assert [e["frame"] for e in sink.events] == list(range(len(video[1])))
    assert max(ahead) <= limit, ahead


@pytest.mark.fault("option or combination that is not allowed")
def test_tensorrt_engine_refuses_calls_in_flight(bundle, monkeypatch):
    """With a usable engine, --workers 2 is an error, not a quiet switch to ONNX Runtime."""
    from dmgrd_edge.bundle import load_bundle
    from dmgrd_edge.runtime import select

    loaded = load_bundle(bundle)
    monkeypatch.setattr(
        select, "_engine_for", lambda *_: ("model.onnx", {"precision": "fp32", "trt_version": "10"})
    )
    with pytest.raises(ConfigError, match="one call at a time"):
        select.create_backend(loaded, "auto", workers=2, log=lambda *_: None)


@pytest.mark.fault("option or combination that is not allowed")
def test_workers_option():
    from dmgrd_edge.runtime.select import auto_workers
    from dmgrd_edge.options import parse_workers

    assert parse_workers("auto") is None and parse_workers(None) is None and parse_workers("3") == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(ConfigError, match="auto or a number"):
            parse_workers(bad)
    assert (
        auto_workers(accelerated=False, cores=2) == 2
        and auto_workers(accelerated=False, cores=8) == 2
    )
    assert (
        auto_workers(accelerated=False, cores=1) == 1
        and auto_workers(accelerated=True, cores=8) == 1
    )


def test_regions_boxes_and_peaks():
    amap = np.zeros((32, 32), np.float32)
    amap[2:6, 3:9] = 1.0
    amap[20:30, 20:22] = 2.0
    found = regions(amap, 0.5, scale=(2.0, 2.0))
    assert [r.as_dict()["box"] for r in found] == [[40, 40, 4, 20], [6, 4, 12, 8]]
    assert found[0].peak == 2.0 and found[1].area == 24 * 4


@pytest.mark.fault("source or sink URI that cannot be used")
def test_sink_uris(tmp_path):
    with pytest.raises(SinkError, match="--headless"):
        open_sink("display://", headless=True)
    with pytest.raises(SinkError, match="unknown sink"):
        open_sink("kafka://topic", headless=True)
    sink = open_sink(f"jsonl://{tmp_path}/e.jsonl?ng_only=1", headless=True)
    latency = Latency(preprocess=1.0, inference=2.0, postprocess=0.5)
    sink.write(Event.judged(0, 0.1, False, [], latency), None, None)
    sink.write(Event.judged(1, 0.9, True, [], latency), None, None)
    # flushed per line: readable before close
    assert [json.loads(l)["frame"] for l in (tmp_path / "e.jsonl").read_text().splitlines()] == [1]
    sink.close()


def _run_cli(*args, block_torch=True, **kwargs):
    prelude = "import sys; sys.modules['torch'] = None\n" if block_torch else ""
    code = (
        prelude
        + f"sys.argv = ['dmgrd-edge'] + {list(map(str, args))!r}\n"
        + "from dmgrd_edge.cli import main\nmain()"
    )
    return subprocess.Popen(
        [sys.executable, "-c", "import sys\n" + code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_run_end_to_end_without_torch(tmp_path, video, bundle):
    path, truth = video
    proc = _run_cli(
        "run",
        bundle,
        "--source",
        path,
        "--sink",
        tmp_path / "events.jsonl",
        "--sink",
        tmp_path / "out.avi",
        "--sink",
        f"folder://{tmp_path / 'ng'}",
        "--batch",
        "4",
        "--headless",
        "--stats-json",
        tmp_path / "stats.json",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    events = [json.loads(l) for l in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["frame"] for e in events] == list(range(len(truth)))
    assert all(set(e["latency_ms"]) == {"preprocess", "inference", "postprocess"} for e in events)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["frames"] == len(truth) and stats["dropped"] == 0
    assert {"p50", "p90", "p99"} <= set(stats["stages_ms"]["inference"])
    assert stats["backend"]["backend"] == "onnxruntime" and "ONNX Runtime" in err
    ng = sum(e["decision"] == "NG" for e in events)
    assert len(list((tmp_path / "ng").iterdir())) == ng
    reader = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(reader.get(cv2.CAP_PROP_FRAME_COUNT)) == len(truth)
    assert reader.get(cv2.CAP_PROP_FPS) == 25  # the source video's rate


@pytest.mark.fault("existing output kept, never overwritten")
def test_run_keeps_an_earlier_recording_and_says_so_before_loading_the_model(
    tmp_path, video, bundle
):
    old = tmp_path / "out.avi"
    old.write_bytes(b"yesterday's recording")
    proc = _run_cli("run", bundle, "--source", video[0], "--sink", old, "--headless")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "already exists" in err and "new file name" in err
    assert "backend:" not in out + err  # refused before the model was loaded
    assert old.read_bytes() == b"yesterday's recording"


@pytest.mark.fault("disk full")
def test_a_full_disk_is_a_clear_error_not_a_traceback(tmp_path, video, bundle):
    proc = _run_cli(
        "run", bundle, "--source", video[0], "--sink", "jsonl:///dev/full", "--headless"
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 4, err
    assert "No space left on device" in err and "/dev/full" in err and "Traceback" not in out + err


@pytest.mark.fault("process killed or stopped mid-run (SIGKILL, SIGTERM)")
def test_sigterm_flushes_and_exits_cleanly(tmp_path, video, bundle):
    path, _ = video
    proc = _run_cli(
        "run",
        bundle,
        "--source",
        path,
        "--loop",
        "--sink",
        tmp_path / "events.jsonl",
        "--headless",
        "--stats-json",
        tmp_path / "stats.json",
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (
        (tmp_path / "events.jsonl").exists() and (tmp_path / "events.jsonl").stat().st_size > 0
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    stats = json.loads((tmp_path / "stats.json").read_text())
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert stats["stopped_by_signal"] and len(lines) == stats["frames"]
    json.loads(lines[-1])  # the last line is complete


@pytest.mark.fault("bundle file tampered, truncated or not a bundle")
def test_tampered_bundle_fails_at_start(tmp_path, video, bundle):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    with open(copy / "model.int8.onnx", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    proc = _run_cli("run", copy, "--source", video[0], "--headless")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "modified" in err and "Traceback" not in err
    proc = _run_cli("run", bundle, "--source", video[0], "--headless", "--workers", "0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--workers" in err and "auto or a number" in err


def test_bench_without_torch(tmp_path, bundle, line_root):
    proc = _run_cli(
        "bench",
        bundle,
        "--batch",
        "1,2",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--data",
        line_root,
        "--workers",
        "2",
        "--out",
        tmp_path / "bench.json",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = json.loads((tmp_path / "bench.json").read_text())
    assert [r["batch"] for r in result["latency"]] == [1, 2]
    assert all(
        r["workers"] == 2 and r["images_per_s"] > 0 and r["images_per_s_one_call"] > 0
        for r in result["latency"]
    )
    assert result["backend"]["workers"] == 2 and result["backend"]["threads"] >= 1
    assert all(r["ms_p50"] <= r["ms_p99"] for r in result["latency"])
    assert result["device"]["cpu_count"] >= 1 and result["device"]["onnxruntime"]
    assert result["accuracy"]["category"] == "washer" and 0 <= result["accuracy"]["i_auroc"] <= 1
    assert result["startup_s"] > 0 and result["peak_host_rss_mib"] > 0
    # a second variant of the same bundle, then the trade-off report over both (no torch)
    proc = _run_cli(
        "bench",
        bundle,
        "--precision",
        "fp32",
        "--batch",
        "1",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--data",
        line_root,
        "--out",
        tmp_path / "bench_fp32.json",
    )
    assert proc.communicate(timeout=120) and proc.returncode == 0
    proc = _run_cli(
        "report",
        tmp_path / "bench.json",
        tmp_path / "bench_fp32.json",
        "--out",
        tmp_path / "report",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    for name in ("report.md", "report.csv", "report.html", "pareto.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    height, width, _ = cv2.imread(str(tmp_path / "report" / "pareto.png")).shape
    assert width >= 1200 and height >= 500  # one device: a row of two panels (PRO@0.3, I-AUC)
    table = (tmp_path / "report" / "report.md").read_text()
    assert "model.int8-cpu.onnx" in table and "model.onnx" in table and "Recommended:" in table
    assert "data:image/png;base64," in (tmp_path / "report" / "report.html").read_text()
    (tmp_path / "not_bench.json").write_text(json.dumps({"frames": 3}))
    proc = _run_cli("report", tmp_path / "not_bench.json", "--out", tmp_path / "r2")
    out, err = proc.communicate(timeout=60)
    assert (
        proc.returncode == 2
        and "not a dmgrd-edge bench result" in err
        and not (tmp_path / "r2").exists()
    )


def test_calibrate_threshold_from_good_frames(tmp_path, bundle):
    import shutil

    from dmgrd_edge.bundle import load_bundle

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    good = tmp_path / "good"
    good.mkdir()
    for i in range(20):
        image, _ = make_image("washer", 5, "video", i, 64)
        cv2.imwrite(str(good / f"{i:03d}.png"), np.ascontiguousarray(image[:, :, ::-1]))
    proc = _run_cli(
        "calibrate-threshold",
        copy,
        "--source",
        good,
        "--false-alarm-rate",
        "0.05",
        "--backend",
        "onnxruntime",
        "--precision",
        "fp32",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    loaded = load_bundle(copy)  # manifest rewritten, every file still verifies
    assert loaded.threshold_for("model.onnx") == summary["threshold"] and summary["count"] == 20
    assert "cannot resolve" not in err
    proc = _run_cli(
        "run",
        copy,
        "--source",
        good,
        "--precision",
        "fp32",
        "--sink",
        tmp_path / "e.jsonl",
        "--headless",
        "--no-spin",
    )
    proc.communicate(timeout=120)
    events = [json.loads(l) for l in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert sum(e["decision"] == "NG" for e in events) <= 1  # at most 5 % of 20 good frames


def test_onnx_file_choice_follows_the_provider(bundle):
    """auto takes the INT8 form the provider runs as integer kernels; a bundle with only the
    TensorRT-shaped file falls back to fp32 on CPU for auto and says so for an explicit int8."""
    import copy

    from dmgrd_edge.bundle import Bundle, load_bundle
    from dmgrd_edge.runtime.select import onnx_file_for

    loaded = load_bundle(bundle)
    assert onnx_file_for(loaded, "auto", accelerated=False) == ("model.int8-cpu.onnx", "int8")
    assert onnx_file_for(loaded, "auto", accelerated=True) == ("model.int8.onnx", "int8")
    assert onnx_file_for(loaded, "int8", accelerated=False) == ("model.int8-cpu.onnx", "int8")
    assert onnx_file_for(loaded, "fp32", accelerated=False) == ("model.onnx", "fp32")
    manifest = copy.deepcopy(loaded.manifest)
    del manifest["files"]["model.int8-cpu.onnx"]
    for entry in manifest["files"].values():
        entry.pop("target", None)  # as written before the CPU file existed
    older, notes = Bundle(bundle, manifest), []
    assert onnx_file_for(older, "auto", accelerated=False, log=notes.append) == (
        "model.onnx",
        "fp32",
    )
    assert onnx_file_for(older, "int8", accelerated=False, log=notes.append) == (
        "model.int8.onnx",
        "int8",
    )
    assert notes and "quantized for TensorRT" in notes[0]


def test_jetson_release_and_power_mode_are_parsed():
    from dmgrd_edge.runtime.device_info import device_info, parse_l4t, parse_nvpmodel

    line = (
        "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
        "DATE: Tue Aug  1 2023\n"
    )
    assert parse_l4t(line) == "R35.4.1"
    assert parse_l4t("# R36 (release), REVISION: 3.0, GCID: 1\nmore") == "R36.3.0"
    assert parse_l4t("# something else\n") == "something else"  # kept as written, not guessed
    mode = parse_nvpmodel("NV Power Mode: MAXN\n0")
    assert (mode["mode"], mode["id"]) == ("MAXN", 0)
    assert parse_nvpmodel("NV Power Mode: 15W\n2")["id"] == 2 and parse_nvpmodel(None) is None
    info = device_info()  # this machine: no Jetson, but the CPU and ONNX Runtime are recorded
    assert (
        info["cpu"]
        and info["onnxruntime"]
        and ("jetson" in info) == Path("/etc/nv_tegra_release").is_file()
    )


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_a_file_replayed_at_a_frame_rate_behaves_like_a_camera(video):
    from dmgrd_edge.runtime.sources import PacedSource

    spec = parse_uri(str(video[0]), fps=25.0)
    assert spec.live and not spec.camera
    source = open_source(spec)
    assert isinstance(source, PacedSource) and source.live and not source.camera
    clock = FakeClock()
    source.clock, source.sleep = clock, clock.sleep
    reference = VideoCaptureSource(parse_uri(str(video[0])))
    frames = [reference.read()[1] for _ in range(40)]
    got = [source.read()[1] for _ in range(3)]  # on time: frames 0, 1, 2, each 40 ms apart
    assert clock.now == pytest.approx(100.08)
    # capture busy until 100.21: frames 3 and 4 are gone, 5 (taken at 100.20) is the newest
    clock.now += 0.13
    got.append(source.read()[1])
    assert source.dropped == 2 and clock.now == pytest.approx(100.21)
    assert [int(np.abs(g.astype(int) - frames[i]).sum()) for g, i in zip(got, [0, 1, 2, 5])] == [
        0,
        0,
        0,
        0,
    ]
    got.append(source.read()[1])  # back on the clock: frame 6 at its time
    assert source.dropped == 2 and clock.now == pytest.approx(100.0 + 6 * 0.04)
    assert np.array_equal(got[-1], frames[6])
    # a file replayed at a rate still ends (no reconnect), and a camera-only option is an error
    while source.read()[0] is Status.OK:
        pass
    assert source.read()[0] is Status.END
    with pytest.raises(SourceError, match="cameras"):
        parse_uri(str(video[0]), width=640)
    with pytest.raises(SourceError, match="inside the pipeline"):
        parse_uri("gst://videotestsrc ! appsink", fps=30)
    with pytest.raises(SourceError, match="--loop"):
        parse_uri("csi://0", loop=True)
    with pytest.raises(SourceError, match="> 0"):
        parse_uri(str(video[0]), fps=0)


def test_replay_at_a_frame_rate_through_the_cli(tmp_path, video, bundle):
    proc = _run_cli(
        "run",
        bundle,
        "--source",
        video[0],
        "--input-fps",
        200,
        "--sink",
        tmp_path / "e.jsonl",
        "--sink",
        tmp_path / "rec.avi",
        "--headless",
        "--stats-json",
        tmp_path / "stats.json",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    stats = json.loads((tmp_path / "stats.json").read_text())
    events = (tmp_path / "e.jsonl").read_text().splitlines()
    # every frame of the file was either decided or counted as dropped, none twice
    assert stats["frames"] == len(events) and stats["frames"] + stats["dropped"] == len(video[1])
    assert (
        cv2.VideoCapture(str(tmp_path / "rec.avi")).get(cv2.CAP_PROP_FPS) == 200
    )  # recorded at the replay rate


def test_bench_peak_memory_is_its_own_not_its_parents():
    """A process started by a large one: its peak resident memory is its own (VmHWM), not the
    parent's size at fork (ru_maxrss carries that over exec)."""
    ballast = np.ones(300 * 2**20 // 8)  # 300 MiB resident in this process
    code = (
        "from dmgrd_edge.runtime.bench import _peak_rss_mib; import resource; "
        "print(_peak_rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    own, inherited = map(
        float,
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split(),
    )
    assert ballast.sum() > 0 and own < 250
    assert own <= inherited


@pytest.mark.fault("no permission (not root)")
def test_jetson_clocks_state_says_unknown_without_root(monkeypatch):
    """`jetson_clocks --show` reads the clocks only as root: without root, or when it fails,
    the device record says the state is unknown and why, never the tool's error text."""
    import subprocess as sp

    from dmgrd_edge.runtime import device_info

    calls = []

    def fake_run(cmd, **_):
        calls.append(cmd)
        return sp.CompletedProcess(cmd, reply[0], stdout=reply[1], stderr=reply[2])

    monkeypatch.setattr(device_info.shutil, "which", lambda name: name)
    monkeypatch.setattr(device_info.subprocess, "run", fake_run)
    reply = (
        0,
        "SOC family:tegra234  Machine:Jetson AGX Orin\nCPU Cluster Switching: Disabled\n",
        "",
    )
    state = device_info.jetson_clocks_state(euid=1000)
    assert state.startswith("unknown (jetson_clocks --show needs root")
    assert not calls  # not even run without root
    assert device_info.jetson_clocks_state(euid=0).startswith("SOC family:tegra234")
    reply = (1, "", "Error: permission denied\n")
    state = device_info.jetson_clocks_state(euid=0)
    assert state.startswith("unknown (jetson_clocks --show failed with exit status 1")
    assert "permission" in state
    monkeypatch.setattr(device_info.shutil, "which", lambda name: None)
    assert device_info.jetson_clocks_state(euid=0) == "unknown (jetson_clocks is not installed)"
    # nvpmodel's error text is not parsed as a power mode either
    monkeypatch.setattr(device_info.shutil, "which", lambda name: name)
    assert device_info._output(["nvpmodel", "-q"]) is None
