"""The HTML pages in a real browser: headless Chromium loads the trade-off report and the
demo's summary page from disk (file://) and the test checks that no script fails, nothing
fails to load, every image decodes, and the report's table sorts when its head is clicked.

Needs Chromium (Debian: `apt-get install chromium`; `.ci/run` installs it where apt is
available); skipped, saying so, when it is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from browser import Chromium, chromium_binary

REPO = Path(__file__).resolve().parents[1]
BINARY = chromium_binary()
pytestmark = pytest.mark.skipif(
    BINARY is None,
    reason="Chromium is not installed (apt-get install chromium): the pages were not "
    "checked in a browser",
)


@pytest.fixture(scope="module")
def browser():
    with Chromium(BINARY) as b:
        yield b


def report_page(tmp_path: Path) -> Path:
    """The trade-off report over bench results committed in benchmarks/results (measured)."""
    from dmgrd_edge.tradeoff import write_report

    results = sorted((REPO / "benchmarks" / "results" / "pruning").glob("bench_*.json"))
    assert len(results) >= 4
    return write_report(results, tmp_path / "report", budget_ms=12)["paths"]["html"]


def png(path: Path, value: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((48, 64, 3), value, np.uint8)
    cv2.rectangle(image, (8, 8), (40, 30), (0, 0, 255), 2)
    assert cv2.imwrite(str(path), image)
    return path.name


def summary_page(tmp_path: Path) -> Path:
    """The demo's page, rendered from a summary whose images are real PNG files in place."""
    from dmgrd_edge.workflow.demo import index_html

    out = tmp_path / "demo"
    png(out / "ng_frames" / "run_frame00000003_0.9000.png", 200)
    png(out / "sweep" / "eval" / "overlays" / "washer" / "scratch_000.png", 120)
    png(out / "sweep" / "report" / "pareto.png", 250)
    summary = {
        "size": "quick",
        "machine": {"cpu": "test CPU", "cores": 2},
        "seconds": 12.0,
        "created": "2026-01-01T00:00:00+00:00",
        "steps": [{"step": "train the default model", "command": "dmgrd-edge train", "seconds": 3}],
        "stream": {
            "frames": 10,
            "judged": 10,
            "defective_frames": 2,
            "ng_found": 1,
            "missed": [5],
            "false_alarms": [],
            "ng_frames_saved": [
                {"path": "ng_frames/run_frame00000003_0.9000.png", "frame": 3, "truth": "scratch"}
            ],
            "fps": 30.0,
            "backend": {"file": "model.int8-cpu.onnx", "backend": "onnxruntime"},
            "threshold": 0.5,
            "end_to_end_ms_p50": 20.0,
            "inference_ms_p50": 10.0,
        },
        "threshold": {"count": 10},
        "sweep": [
            {
                "variant": "v",
                "label": "efficientnet_lite0 fp32",
                "file": "model.onnx",
                "i_auroc": 0.9,
                "p_auroc": 0.8,
                "pro_30": 0.7,
                "ms_b1_p50": 10.0,
                "images_per_s_b1": 100.0,
                "result": "sweep/results/v.json",
            }
        ],
        "recommended": {"test CPU": "efficientnet_lite0 fp32"},
        "heatmaps": ["sweep/eval/overlays/washer/scratch_000.png"],
        "artefacts": [{"path": "sweep/report/pareto.png", "what": "plot"}],
    }
    page = out / "index.html"
    page.write_text(index_html(summary))
    return page


def test_the_report_renders_sorts_and_shows_its_plot(browser, tmp_path):
    session, report = browser.load(report_page(tmp_path).as_uri())
    assert report.exceptions == [] and report.errors == []
    assert report.title == "dmgrd-edge trade-off report"
    assert len(report.images) == 1 and report.broken_images == []
    assert report.images[0]["naturalWidth"] > 400  # the matplotlib figure, decoded
    rows = "Array.from(document.querySelectorAll('tbody tr')).map(r => r.cells[2].dataset.sort)"
    before = browser.evaluate(session, rows)
    assert len(before) == 10
    browser.evaluate(session, "document.querySelectorAll('th')[2].click()")
    state = browser.evaluate(
        session, "document.querySelectorAll('th')[2].getAttribute('aria-sort')"
    )
    after = browser.evaluate(session, rows)
    assert state in ("ascending", "descending")
    numbers = [float(x) for x in after]
    assert numbers == sorted(numbers, reverse=state == "descending")
    browser.collect(session, report)
    assert report.exceptions == [] and report.errors == []


def test_the_demo_summary_renders_with_its_images(browser, tmp_path):
    page = summary_page(tmp_path)
    _, report = browser.load(page.as_uri())
    assert report.exceptions == [] and report.errors == []
    assert report.title == "dmgrd-edge demo"
    assert len(report.images) == 3 and report.broken_images == []


def test_the_check_sees_a_broken_image_and_a_script_error(browser, tmp_path):
    """The check itself: a missing image and a failing script are reported, not passed."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><title>bad</title><img src='missing.png' alt=x>"
        f"<img src='{png(tmp_path / 'fine.png', 90)}' alt=y><script>undefinedFunction()</script>"
    )
    _, report = browser.load(page.as_uri())
    assert report.broken_images == ["missing.png"]
    assert any("undefinedFunction" in e for e in report.exceptions)
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in report.errors)


def test_a_demo_folder_if_one_was_made(browser):
    """DMGRD_DEMO_DIR=<a folder made by dmgrd-edge demo>: its own pages in the browser."""
    import os

    folder = os.environ.get("DMGRD_DEMO_DIR")
    if not folder:
        pytest.skip("set DMGRD_DEMO_DIR to a folder made by dmgrd-edge demo to check its pages")
    for page in (Path(folder) / "index.html", Path(folder) / "sweep" / "report" / "report.html"):
        _, report = browser.load(page.resolve().as_uri())
        assert report.exceptions == [] and report.errors == [], page
        assert report.images and report.broken_images == [], page
    summary = json.loads((Path(folder) / "demo.json").read_text())
    assert summary["stream"]["judged"] == summary["stream"]["frames"]
