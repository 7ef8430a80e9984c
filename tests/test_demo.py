"""`dmgrd-edge demo --quick`: the demo's own code path at a reduced size, and every artefact
it promises on its summary page checked against what is on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from browser import Chromium, chromium_binary

from dmgrd_edge.errors import DataError
from dmgrd_edge.workflow.demo import prepare_out


@pytest.mark.fault("existing output kept, never overwritten")
def test_prepare_out_never_removes_what_is_not_a_demo(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="holds no demo"):
        prepare_out(mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep"
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "demo.json").write_text("{}")
    with pytest.raises(DataError, match="--overwrite"):
        prepare_out(earlier, overwrite=False)
    prepare_out(earlier, overwrite=True)
    assert earlier.is_dir() and not any(earlier.iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        prepare_out(tmp_path / "file", overwrite=True)


def _frames(video: Path) -> int:
    capture = cv2.VideoCapture(str(video))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


@pytest.mark.slow
def test_quick_demo_makes_every_artefact_it_promises(tmp_path):
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "dmgrd_edge.cli", "demo", "--out", str(out), "--quick"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((out / "demo.json").read_text())
    page = (out / "index.html").read_text()

    # every artefact listed is there, not empty, and linked from the page
    assert len(summary["artefacts"]) >= 20
    for artefact in summary["artefacts"]:
        path = out / artefact["path"]
        assert path.exists(), artefact
        assert (path.stat().st_size > 0) if path.is_file() else any(path.iterdir()), artefact
        assert f'href="{artefact["path"]}"' in page, artefact
    assert [s["step"] for s in summary["steps"]][-1].startswith("sweep")
    assert len(summary["steps"]) == 8

    # the stream: every frame of the video judged, NG frames saved, counted against the truth
    truth = json.loads((out / "video_truth.json").read_text())
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    stream = summary["stream"]
    assert (
        len(truth)
        == stream["frames"]
        == stream["judged"]
        == len(events)
        == _frames(out / "line.avi")
    )
    assert sorted(e["frame"] for e in events) == list(range(len(truth)))
    ng = {e["frame"] for e in events if e["decision"] == "NG"}
    defective = {t["frame"] for t in truth if t["truth"] != "good"}
    assert stream["defective_frames"] == len(defective) == 5  # one per defect kind (quick)
    assert stream["ng_found"] == len(ng & defective)
    assert set(stream["false_alarms"]) == ng - defective
    assert set(stream["missed"]) == defective - ng
    assert len(list((out / "ng_frames").glob("*.png"))) == len(ng)
    assert {n["frame"] for n in stream["ng_frames_saved"]} == ng
    truth_of = {t["frame"]: t["truth"] for t in truth}
    assert all(n["truth"] == truth_of[n["frame"]] for n in stream["ng_frames_saved"])
    assert _frames(out / "stream_overlay.avi") == len(truth)
    assert f"NG frames found: {stream['ng_found']} of {len(defective)}" in page
    assert stream["backend"]["file"] == "model.int8-cpu.onnx"

    # the threshold the line ran with is the one calibrated on known-good frames
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    calibrated = json.loads((out / "threshold.json").read_text())["threshold"]
    assert manifest["files"]["model.int8-cpu.onnx"]["threshold"] == calibrated
    assert stream["threshold"] == pytest.approx(calibrated)

    # the sweep: 2 pruning ratios x 2 precisions, each measured, and the report over them
    assert [r["variant"] for r in summary["sweep"]] == [
        "efficientnet_lite0-default-p0-fp32",
        "efficientnet_lite0-default-p0-int8",
        "efficientnet_lite0-default-p50-fp32",
        "efficientnet_lite0-default-p50-int8",
    ]
    assert [r["file"] for r in summary["sweep"]] == ["model.onnx", "model.int8-cpu.onnx"] * 2
    assert all(0 <= r["pro_30"] <= 1 and r["ms_b1_p50"] > 0 for r in summary["sweep"])
    assert len((out / "sweep" / "report" / "report.csv").read_text().splitlines()) == 5
    assert summary["heatmaps"] and all((out / p).is_file() for p in summary["heatmaps"])
    assert "NG found" in done.stdout and "index.html" in done.stdout

    # a second demo into the same folder is refused without --overwrite, the first one kept
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert json.loads((out / "demo.json").read_text()) == summary

    binary = chromium_binary()
    if binary is None:
        pytest.skip("Chromium not installed: the demo's pages were not loaded in a browser")
    with Chromium(binary) as browser:
        for html in (out / "index.html", out / "sweep" / "report" / "report.html"):
            _, report = browser.load(html.as_uri())
            assert report.exceptions == [] and report.errors == [], html
            assert report.images and report.broken_images == [], html
