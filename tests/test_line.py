"""At the line: where the threshold came from, the NG-rate and drift watches, the Prometheus
endpoint (scraped over HTTP), the line configuration, and several cameras and bundles in one
process (real bundles, real videos, real ONNX Runtime)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_runtime import write_video

from dmgrd_edge.errors import ConfigError
from dmgrd_edge.runtime.line_config import load_line_config
from dmgrd_edge.runtime.sources import SourceError, Status
from dmgrd_edge.runtime.watch import (
    Alerts,
    DriftWatch,
    NgRateWatch,
    psi,
    threshold_origin,
)

TORCHLESS = (
    "import sys; sys.modules['torch'] = None\n"
    "sys.argv = ['dmgrd-edge'] + sys.argv[1:]\nfrom dmgrd_edge.cli import main\nmain()"
)


def cli(*args, timeout=240):
    """The command without torch; stdout and stderr with the console's line wrapping undone."""
    proc = subprocess.run(
        [sys.executable, "-c", TORCHLESS, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    proc.stdout, proc.stderr = (" ".join(text.split()) for text in (proc.stdout, proc.stderr))
    return proc


# -- where the threshold came from ---------------------------------------------------------


def test_threshold_origin_says_training_calibrated_elsewhere_or_here():
    trained = {"threshold": 0.79, "threshold_rule": "mean + 3 std of validation normal scores"}
    o = threshold_origin(trained, "model.onnx", 0.79, False, "rtsp")
    assert (o.origin, o.fits_source) == ("training", False)
    assert "set at training (mean + 3 std" in o.message and "(rtsp)" in o.message
    calibrated = {
        "threshold": 1.1,
        "threshold_calibration": {"source": "good/*.png", "count": 500, "calibrated_at": "t"},
    }
    o = threshold_origin(calibrated, "model.onnx", 1.1, False, "rtsp")
    assert (o.origin, o.calibrated_kind, o.fits_source) == ("calibrated", "images", False)
    assert "not on frames of this source kind (rtsp)" in o.message
    calibrated["threshold_calibration"]["source"] = "rtsp://cam/stream"
    o = threshold_origin(calibrated, "model.onnx", 1.1, False, "rtsp")
    assert o.fits_source and "500 good frames from rtsp://cam/stream (rtsp)" in o.message
    assert threshold_origin(calibrated, "m", 0.5, True, "rtsp").origin == "override"


def test_ng_rate_watch_warns_once_over_the_limit_and_not_under_it():
    alerts = Alerts("cam1")
    watch = NgRateWatch(alerts, "FIX", frames=100, max_rate=0.5)
    for i in range(300):
        watch.decided(1.0, i % 10 < 6)  # 60 % NG
    assert [r["kind"] for r in alerts.raised] == ["implausible_ng_rate"]
    assert alerts.raised[0]["ng"] == 60 and "FIX" in alerts.raised[0]["message"]
    quiet = Alerts("cam2")
    watch = NgRateWatch(quiet, "FIX", frames=100, max_rate=0.5)
    for i in range(300):
        watch.decided(1.0, i % 10 < 5)  # 50 %: at the limit, not over it
    assert quiet.raised == []


def test_psi_matches_its_definition():
    edges = np.array([1.0, 2.0, 3.0])  # four bins, a quarter each
    window = np.array([0.5] * 10 + [1.5] * 10 + [2.5] * 10 + [3.5] * 70)
    actual, expected = np.array([0.1, 0.1, 0.1, 0.7]), 0.25
    want = float(np.sum((actual - expected) * np.log(actual / expected)))
    assert psi(edges, window) == pytest.approx(want)
    assert psi(edges, np.array([0.5, 1.5, 2.5, 3.5] * 5)) == pytest.approx(0.0, abs=1e-12)


def test_drift_watch_warns_when_good_scores_move_and_clears_when_back():
    rng = np.random.default_rng(0)
    reference = list(np.quantile(rng.normal(1.0, 0.1, 5000), np.arange(1, 10) / 10))
    alerts = Alerts("cam1")
    watch = DriftWatch(alerts, reference, window=200, max_psi=0.25, every=50)
    for score in rng.normal(1.0, 0.1, 1000):
        watch.decided(float(score), False)
    assert alerts.raised == [] and watch.value < 0.1
    for score in rng.normal(1.15, 0.1, 400):  # brighter light: every score up 1.5 sigma
        watch.decided(float(score), False)
    assert [r["kind"] for r in alerts.raised] == ["score_drift"] and watch.active
    assert alerts.raised[0]["median_shift"] > 0
    for score in rng.normal(1.0, 0.1, 400):
        watch.decided(float(score), False)
    assert [r["kind"] for r in alerts.raised] == ["score_drift", "score_drift_cleared"]


def test_drift_watch_without_calibration_takes_the_first_window_as_reference():
    alerts = Alerts("cam1")
    watch = DriftWatch(alerts, None, window=100, every=10)
    rng = np.random.default_rng(1)
    for score in rng.normal(0.5, 0.05, 100):
        watch.decided(float(score), False)
    assert watch.edges is not None and watch.reference_from == "first frames of the run"
    for score in rng.normal(0.8, 0.05, 100):
        watch.decided(float(score), False)
    assert [r["kind"] for r in alerts.raised] == ["score_drift"]


# -- the run command: uncalibrated thresholds, NG-rate warning, metrics ----------------------


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    out = {}
    for name, n in (("a", 24), ("b", 16), ("c", 12)):
        write_video(folder / f"{name}.avi", n)
        out[name] = folder / f"{name}.avi"
    return out


def test_run_says_the_threshold_was_never_calibrated_then_warns_on_the_ng_rate(
    tmp_path, videos, fp32_bundle
):
    events, stats = tmp_path / "events.jsonl", tmp_path / "stats.json"
    proc = cli(
        "run", fp32_bundle, "--source", videos["a"], "--sink", events, "--headless",
        "--threshold", "0", "--ng-warn-frames", "20", "--stats-json", stats, "--workers", "1",
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "from --threshold" in out and "not checked against frames of this source" in out
    assert "24 of the first 20" not in out and "20 of the first 20 frames were NG" in out
    assert f"dmgrd-edge calibrate-threshold {fp32_bundle} --source '{videos['a']}'" in out
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    warnings = [line for line in lines if line.get("type") == "warning"]
    assert [w["kind"] for w in warnings] == ["implausible_ng_rate"]
    assert sum(1 for line in lines if "frame" in line) == 24
    summary = json.loads(stats.read_text())
    assert summary["warnings"][0]["kind"] == "implausible_ng_rate"
    assert summary["threshold_origin"]["origin"] == "override"

    proc = cli("run", fp32_bundle, "--source", videos["a"], "--headless", "--workers", "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "was set at training" in out and "never calibrated on frames of this source kind" in out


def test_after_calibrate_threshold_on_this_source_kind_run_says_so(tmp_path, videos, fp32_bundle):
    bundle = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, bundle)
    proc = cli("calibrate-threshold", bundle, "--source", videos["b"], "--false-alarm-rate", "0.1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    record = manifest["files"]["model.onnx"]["threshold_calibration"]
    assert record["source_kind"] == "file" and len(record["deciles"]) == 9
    stats = tmp_path / "stats.json"
    proc = cli(
        "run", bundle, "--source", videos["a"], "--headless", "--workers", "1",
        "--drift-window", "20", "--stats-json", stats,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "calibrated on 16 good frames from" in out and "never calibrated" not in out
    summary = json.loads(stats.read_text())
    assert summary["threshold_origin"]["fits_source"] is True
    assert summary["drift"]["reference"] == "threshold calibration"
    assert summary["drift"]["psi"] is not None


def _scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_prometheus_endpoint_serves_per_camera_figures(videos, fp32_bundle):
    pytest.importorskip("prometheus_client")
    from dmgrd_edge.bundle import load_bundle
    from dmgrd_edge.runtime.capture import Capture
    from dmgrd_edge.runtime.metrics_server import CameraView, LineMetrics
    from dmgrd_edge.runtime.pipeline import Pipeline, make_preprocess
    from dmgrd_edge.options import RunConfig
    from dmgrd_edge.runtime.select import create_backend
    from dmgrd_edge.runtime.sources import open_source, parse_uri
    from dmgrd_edge.runtime.watch import watch_for_run

    loaded = load_bundle(fp32_bundle)
    backend = create_backend(loaded, "onnxruntime", "fp32", log=lambda *_: None, workers=1).backend
    spec = parse_uri(str(videos["a"]))
    pipeline = Pipeline(
        loaded,
        backend,
        [],
        RunConfig(threshold=0.0, pixel_threshold=0.0, status_every_s=1e9),
        log=lambda *_: None,
    )
    watch = watch_for_run(
        "cam1", loaded, "B", "model.onnx", 0.0, True, spec, str(videos["a"]), [],
        log=lambda *_: None, ng_frames=10, drift_window=20,
    )  # fmt: skip
    pipeline.monitors.append(watch)
    capture = Capture(open_source(spec), make_preprocess(loaded))
    metrics = LineMetrics("127.0.0.1:0", log=lambda *_: None).start()
    try:
        metrics.add(CameraView("cam1", pipeline, capture, watch))
        assert _scrape(metrics.port)[("dmgrd_frames_total", (("camera", "cam1"),))] == 0
        assert pipeline.run(capture) == 0
        got = _scrape(metrics.port)
    finally:
        metrics.close()
        backend.close()
    cam = (("camera", "cam1"),)
    assert got[("dmgrd_frames_total", cam)] == 24 == got[("dmgrd_ng_total", cam)]
    assert got[("dmgrd_ng_rate", cam)] == 1.0 and got[("dmgrd_fps", cam)] > 0
    assert got[("dmgrd_threshold", cam)] == 0.0
    assert got[("dmgrd_threshold_fits_source", cam)] == 0.0
    assert got[("dmgrd_warnings_total", (("camera", "cam1"), ("kind", "implausible_ng_rate")))] == 1
    p50 = got[
        ("dmgrd_latency_ms", (("camera", "cam1"), ("quantile", "0.5"), ("stage", "inference")))
    ]
    p99 = got[
        ("dmgrd_latency_ms", (("camera", "cam1"), ("quantile", "0.99"), ("stage", "inference")))
    ]
    assert 0 < p50 <= p99
    assert got[("dmgrd_dropped_total", cam)] == 0 and got[("dmgrd_reconnects_total", cam)] == 0
    assert ("dmgrd_drift_psi", cam) in got


# -- the line configuration ------------------------------------------------------------------


def _toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CAM = '[[camera]]\nname = "a"\nsource = "x.mp4"\nbundle = "b"\n'


@pytest.mark.fault("configuration file or record that is not valid")
@pytest.mark.parametrize(
    "text, needle",
    [
        ("[line]\nbatch = 4\n", "camera: no camera"),
        ('[[camera]]\nname = "a"\nbundle = "b"\n', r"camera\[0\].source: missing"),
        (CAM + "sorce = 1\n", r"camera\[0\].sorce: unknown key"),
        (CAM + 'threshold = "high"\n', r"camera\[0\].threshold"),
        (CAM + 'sinks = "e.jsonl"\n', r"camera\[0\].sinks: 'e.jsonl' is not a list"),
        (CAM + CAM, r"camera\[1\].name: 'a' is used twice"),
        ("[line]\nbatch = 0\n" + CAM, "line.batch"),
        ("[line]\nbach = 2\n", "line.bach: unknown key"),
        (CAM + "drift_window = 5\n", r"camera\[0\].drift_window"),
        ("[[camera]\n", "not valid TOML"),
    ],
)
def test_line_config_errors_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        load_line_config(_toml(tmp_path / "line.toml", text))


def test_line_config_reads_cameras_with_defaults_and_relative_bundles(tmp_path):
    path = _toml(
        tmp_path / "line.toml",
        '[line]\nbatch = 8\nmetrics = "9108"\n'
        '[[camera]]\nname = "left"\nsource = "l.mp4"\nbundle = "bundles/w"\nthreshold = 0.8\n'
        'sinks = ["l.jsonl"]\ninput_fps = 30\n'
        '[[camera]]\nname = "right"\nsource = "r.mp4"\nbundle = "/abs/w"\n',
    )
    cfg = load_line_config(path)
    assert (cfg.batch, cfg.metrics, cfg.backend) == (8, "9108", "auto")
    left, right = cfg.cameras
    assert left.bundle == tmp_path / "bundles/w" and right.bundle == Path("/abs/w")
    assert (left.threshold, left.sinks, left.input_fps) == (0.8, ("l.jsonl",), 30)
    assert (right.threshold, right.sinks, right.queue_size) == (None, (), 4)


@pytest.mark.fault("option or combination that is not allowed")
def test_run_config_refuses_single_source_options(tmp_path):
    path = _toml(tmp_path / "line.toml", '[[camera]]\nname = "a"\nsource = "x.mp4"\nbundle = "b"\n')
    proc = cli("run", "--config", path, "--threshold", "0.5")
    assert proc.returncode == 2 and "--threshold does not go with --config" in proc.stderr


# -- several cameras and bundles in one process ------------------------------------------------


def _line(tmp_path, videos, fp32_bundle, extra=""):
    other = tmp_path / "other_bundle"
    shutil.copytree(fp32_bundle, other)
    text = f'[line]\nbatch = 4\nworkers = "2"\n{extra}\n'
    for name, video, bundle in (
        ("left", videos["a"], fp32_bundle),
        ("right", videos["b"], fp32_bundle),
        ("third", videos["c"], other),
    ):
        text += (
            f'[[camera]]\nname = "{name}"\nsource = "{video}"\nbundle = "{bundle}"\n'
            f'sinks = ["{tmp_path / name}.jsonl"]\n'
        )
    return _toml(tmp_path / "line.toml", text)


def _frames(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if "frame" in line]


def test_several_cameras_and_bundles_one_process(tmp_path, videos, fp32_bundle):
    """Three cameras, two bundles: each camera decides every one of its frames in order, with
    the scores a single-camera run gives (batching across cameras changes nothing), and the
    cameras sharing a bundle share its backend calls."""
    config = _line(tmp_path, videos, fp32_bundle)
    stats = tmp_path / "stats.json"
    proc = cli("run", "--config", config, "--stats-json", stats)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    single = tmp_path / "single.jsonl"
    proc = cli("run", fp32_bundle, "--source", videos["a"], "--sink", single, "--headless")
    assert proc.returncode == 0
    for name, n in (("left", 24), ("right", 16), ("third", 12)):
        assert [e["frame"] for e in _frames(tmp_path / f"{name}.jsonl")] == list(range(n))
    np.testing.assert_allclose(
        [e["score"] for e in _frames(tmp_path / "left.jsonl")],
        [e["score"] for e in _frames(single)],
        rtol=1e-4,
    )
    summary = json.loads(stats.read_text())
    assert {k: v["frames"] for k, v in summary["cameras"].items()} == {
        "left": 24,
        "right": 16,
        "third": 12,
    }
    shared = next(b for b in summary["bundles"] if len(b["cameras"]) == 2)
    alone = next(b for b in summary["bundles"] if len(b["cameras"]) == 1)
    assert shared["frames"] == 40 and shared["calls"] < 40  # frames of both cameras per call
    assert alone["frames"] == 12 and alone["cameras"] == ["third"]


class HungCamera:
    """A camera that never delivers again (its read blocks until released)."""

    live = camera = True

    def __init__(self):
        self.release = threading.Event()

    def read(self):
        self.release.wait()
        return Status.END, None

    def reopen(self):
        pass

    def close(self):
        self.release.set()


class LostCamera:
    """A camera whose reads fail and whose reopen fails too: given up after the retries."""

    live = camera = True
    dropped = 0
    fps = None

    def read(self):
        return Status.ERROR, None

    def reopen(self):
        raise SourceError("connection refused", "check the camera")

    def close(self):
        pass


@pytest.mark.fault("camera failing or lost mid-stream")
def test_a_dead_camera_never_stalls_the_others(tmp_path, videos, fp32_bundle):
    from dmgrd_edge.runtime.multicam import Line

    config = load_line_config(_line(tmp_path, videos, fp32_bundle))
    line = Line(config, log=lambda *_: None).open()
    by_name = {cam.config.name: cam for cam in line.cameras}
    hung = HungCamera()
    by_name["right"].capture.source.close()
    by_name["right"].capture.source = hung
    by_name["third"].capture.source.close()
    by_name["third"].capture.source = LostCamera()
    by_name["third"].capture.backoff_s = by_name["third"].capture.max_backoff_s = 0.01
    done = threading.Event()
    # the hung camera is released once the others are finished, as a camera that comes back
    threading.Thread(target=lambda: (done.wait(120), hung.release.set()), daemon=True).start()
    watcher = threading.Thread(
        target=lambda: (_wait_decided(by_name["left"], 24), done.set()), daemon=True
    )
    watcher.start()
    code = line.run()
    assert code == 3  # a camera was given up; the others ran to their end
    assert [e["frame"] for e in _frames(tmp_path / "left.jsonl")] == list(range(24))
    lost = line.summary["cameras"]["third"]
    assert "not recovered after 5 reconnect attempts" in lost["source_error"]
    assert line.summary["cameras"]["right"]["frames"] == 0


def _wait_decided(cam, n, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while cam.pipeline.stats.frames < n and time.monotonic() < deadline:
        time.sleep(0.05)


# -- product changeover --------------------------------------------------------------------


def _bundle_copy(src: Path, dst: Path, threshold: float | None = None, corrupt=False) -> Path:
    shutil.copytree(src, dst)
    if threshold is not None:
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["threshold"] = threshold
        for entry in manifest["files"].values():
            if "threshold" in entry:
                entry["threshold"] = threshold
        (dst / "manifest.json").write_text(json.dumps(manifest))
    if corrupt:
        with open(dst / "model.onnx", "r+b") as handle:
            handle.seek(200)
            byte = handle.read(1)
            handle.seek(200)
            handle.write(bytes([byte[0] ^ 0xFF]))
    return dst


def _until(predicate, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


@pytest.mark.fault("bundle file tampered, truncated or not a bundle")
def test_changeover_switches_bundles_while_frames_flow_and_refuses_a_broken_one(
    tmp_path, videos, fp32_bundle
):
    from dmgrd_edge.bundle import load_bundle
    from dmgrd_edge.runtime.multicam import Line

    first = _bundle_copy(fp32_bundle, tmp_path / "product_a")
    second = _bundle_copy(fp32_bundle, tmp_path / "product_b", threshold=0.0)  # all NG
    broken = _bundle_copy(fp32_bundle, tmp_path / "broken", corrupt=True)
    events = tmp_path / "cam.jsonl"

    def write(bundle):
        _toml(
            tmp_path / "line.toml",
            f'[line]\nworkers = "1"\n[[camera]]\nname = "cam"\nsource = "{videos["a"]}"\n'
            f'bundle = "{bundle}"\ninput_fps = 25\nloop = true\nsinks = ["{events}"]\n',
        )

    write(first)
    logs: list[str] = []
    line = Line(load_line_config(tmp_path / "line.toml"), log=logs.append).open()
    cam = line.cameras[0]
    runner = threading.Thread(target=line.run, daemon=True)
    runner.start()
    try:
        assert _until(lambda: cam.pipeline.stats.frames >= 8)
        write(broken)
        line.reload_requested.set()
        assert _until(lambda: line.changeovers)
        assert line.changeovers[-1]["what"] == "refused"
        assert "sha256" in line.changeovers[-1]["reason"]
        decided = cam.pipeline.stats.frames
        assert _until(lambda: cam.pipeline.stats.frames >= decided + 5)  # the old one runs on
        assert cam.group.root == first.resolve()
        write(second)
        line.reload_requested.set()
        assert _until(lambda: len(line.changeovers) == 2)
        assert line.changeovers[-1]["what"] == "bundle"
        decided = cam.pipeline.stats.frames
        assert _until(lambda: cam.pipeline.stats.frames >= decided + 10)
    finally:
        line.stop_event.set()
        runner.join(60)
    assert not runner.is_alive()
    assert any("changeover to" in m and "refused" in m for m in logs)
    history = line.summary["cameras"]["cam"]["bundles_used"]
    assert [Path(b).name for _, b in history] == ["product_a", "product_b"]
    switched_at = history[1][0]
    threshold_a = load_bundle(first).threshold_for("model.onnx")
    frames = _frames(events)
    before = [e for e in frames if e["frame"] < switched_at]
    after = [e for e in frames if e["frame"] >= switched_at]
    assert len(before) >= 13 and len(after) >= 10
    # no frame after the switch decided by the old model, none before by the new one
    assert all(e["decision"] == "NG" for e in after)
    assert all((e["decision"] == "NG") == (e["score"] > threshold_a) for e in before)
    assert [e["frame"] for e in frames] == sorted(e["frame"] for e in frames)
