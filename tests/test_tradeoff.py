"""Trade-off report logic: Pareto front per device and the recommendation."""

import base64
import csv
import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from dmgrd_edge.errors import ConfigError
from dmgrd_edge.tradeoff import (
    Variant,
    budget_sentence,
    mark_pareto,
    recommend,
    within_budget,
    write_report,
)


def variant(name, ms, pro, device="cpu A"):
    return Variant(
        name=name,
        device=device,
        backbone=name,
        image_size=256,
        file="model.onnx",
        precision="fp32",
        backend="onnxruntime",
        ms_b1_p50=ms,
        ms_b1_p99=ms,
        best_images_per_s=1000 / ms,
        best_batch=1,
        peak_host_rss_mib=1.0,
        startup_s=0.1,
        i_auroc=None,
        p_auroc=None,
        pro_30=pro,
        source="x.json",
    )


def test_pareto_front_and_recommendation():
    fast_poor = variant("fast", 10, 0.90)
    slow_good = variant("slow", 40, 0.95)
    dominated = variant("dominated", 45, 0.93)  # slower and worse than "slow"
    middle = variant("middle", 20, 0.945)
    other_device = variant("gpu", 100, 0.80, device="gpu B")  # alone on its device: on its front
    no_accuracy = variant("unscored", 5, None)
    variants = [fast_poor, slow_good, dominated, middle, other_device, no_accuracy]
    mark_pareto(variants, "pro_30")
    assert [v.name for v in variants if v.pareto] == ["fast", "slow", "middle", "gpu", "unscored"]
    picks = recommend(variants, "pro_30", max_drop=1.0)
    assert picks["cpu A"].name == "middle"  # 0.5 points below the best, twice as fast
    assert recommend(variants, "pro_30", max_drop=0.1)["cpu A"].name == "slow"
    assert recommend(variants, "pro_30", max_drop=10)["cpu A"].name == "fast"
    assert picks["gpu B"].name == "gpu"


@pytest.mark.fault("option or combination that is not allowed")
def test_report_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="pro_30"):
        write_report([tmp_path / "x.json"], tmp_path / "out", metric="f1")
    with pytest.raises(ConfigError, match="no bench results"):
        write_report([], tmp_path / "out")


def test_variant_names_tell_pruned_and_labelled_bundles_apart(tmp_path):
    import json

    from dmgrd_edge.tradeoff import load_result

    def bench(name, **extra):
        data = {
            "latency": [{"batch": 1, "ms_p50": 10.0, "ms_p99": 12.0, "images_per_s": 100.0}],
            "backend": {"backend": "onnxruntime", "file": "model.onnx", "precision": "fp32"},
            "model": {"backbone": "efficientnet_lite0", "image_size": 256},
            "device": {"cpu": "A"},
            **extra,
        }
        (tmp_path / name).write_text(json.dumps(data))
        return load_result(tmp_path / name).name

    assert bench("plain.json").startswith("efficientnet_lite0 fp32")
    assert bench("cut.json", pruning={"ratio": 0.5}).startswith(
        "efficientnet_lite0 pruned 50% fp32"
    )
    assert bench("labelled.json", label="line 3 candidate").startswith("line 3 candidate fp32")


RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("folder", ["tradeoff", "pruning"])
def test_report_on_the_committed_bench_results(tmp_path, folder):
    results = sorted((RESULTS / folder).glob("bench_*.json"))
    report = write_report(results, tmp_path, budget_ms=10.0)
    paths = report["paths"]
    assert set(paths) == {"md", "csv", "html", "png"} and all(p.is_file() for p in paths.values())
    png = paths["png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    height, width = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    assert width >= 1200 and height >= 500  # two panels per device, legible at full size
    page = paths["html"].read_text()
    assert base64.b64encode(png).decode() in page  # the plot is inline
    assert "<table class=sortable>" in page and "<script>" in page
    assert "http:" not in page and "https:" not in page  # self-contained: no CDN, no links
    assert page.count("<tr") == len(results) + 1 and page.count("data-type=num") == 9
    markdown = paths["md"].read_text()
    assert "![latency vs accuracy per device](pareto.png)" in markdown
    assert markdown.count("\n| efficientnet_lite0") == len(results)
    assert "Recommended: **" in markdown and (
        "Within 10 ms" in markdown or "No variant fits 10 ms" in markdown
    )
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert sorted(r["source"] for r in rows) == [p.name for p in results]


def test_budget_names_the_most_accurate_variant_that_fits(tmp_path):
    fast = variant("fast", 5, 0.90)
    middle = variant("middle", 9, 0.94)
    tie = variant("tie", 8, 0.94)  # as accurate as middle and faster: chosen over it
    slow = variant("slow", 20, 0.97)
    unscored = variant("unscored", 3, None)
    gpu = variant("gpu", 30, 0.99, device="gpu B")
    variants = [fast, middle, tie, slow, unscored, gpu]
    picks = within_budget(variants, "pro_30", 10)
    assert picks == {"cpu A": tie, "gpu B": None}
    assert within_budget(variants, "pro_30", 8)["cpu A"] is tie  # at the budget is within it
    assert within_budget(variants, "pro_30", 7.99)["cpu A"] is fast
    assert within_budget(variants, "pro_30", 25)["cpu A"] is slow
    assert within_budget(variants, "pro_30", 4)["cpu A"] is None
    assert "No variant fits 10 ms" in budget_sentence(variants, "gpu B", None, "pro_30", 10)
    assert "takes 30.00 ms" in budget_sentence(variants, "gpu B", None, "pro_30", 10)
    assert "has PRO@0.3 to rank by" in budget_sentence(variants, "cpu A", None, "pro_30", 4)
    assert "**tie**" in budget_sentence(variants, "cpu A", tie, "pro_30", 10)
    with pytest.raises(ConfigError, match="--budget-ms"):
        write_report([RESULTS / "tradeoff" / "bench_lite0_fp32.json"], tmp_path, budget_ms=0)


def test_report_command_takes_a_budget(tmp_path):
    from typer.testing import CliRunner

    from dmgrd_edge.cli import app

    results = [str(p) for p in sorted((RESULTS / "tradeoff").glob("bench_*.json"))]

    def report(budget):
        args = ["report", *results, "--out", str(tmp_path), "--budget-ms", budget]
        return CliRunner().invoke(app, args)

    fits = report("20")
    assert fits.exit_code == 0, fits.output
    assert "Within 20 ms (batch-1 p50): **efficientnet_lite0 int8" in fits.output
    none = report("10")
    assert none.exit_code == 0 and "No variant fits 10 ms" in none.output
    bad = report("-1")
    assert isinstance(bad.exception, ConfigError) and "--budget-ms" in str(bad.exception)


def _dense(n: int, device: str) -> list[Variant]:
    """n variants crowded into a small latency/accuracy range, with long labels."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        v = variant(f"v{i}", 8 + rng.uniform(0, 3), 0.93 + rng.uniform(0, 0.01), device=device)
        v.i_auroc = 0.99 + (i % 3) * 0.0001  # nearly the same I-AUC: a crowded row
        v.label = f"efficientnet_lite{i % 3} candidate {i}"
        v.precision = ("fp32", "int8")[i % 2]
        v.file = ("model.onnx", "model.int8-cpu.onnx")[i % 2]
        out.append(v)
    return out


@pytest.mark.parametrize("numbered, count", [(False, 6), (True, 25)])
def test_labels_of_a_dense_set_do_not_overlap(numbered, count):
    """Names where they fit, numbers with a key where they do not: either way no label meets
    another label or a marker, all stay inside their panel, and leaders cross no other label."""
    from matplotlib.path import Path as MplPath
    from matplotlib.text import Text

    from dmgrd_edge.tradeoff_plot import build_figure

    variants = _dense(count, "cpu A") + _dense(3, "gpu B")
    mark_pareto(variants, "pro_30")
    picks = recommend(variants, "pro_30", 1.0)
    budget = within_budget(variants, "pro_30", 9.5)
    fig, panels = build_figure(
        variants,
        ("pro_30", "i_auroc"),
        picks,
        9.5,
        budget,
        "recommended",
        height_scale=1.6,
        numbered=numbered,
    )
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert [(p.device, p.metric) for p in panels] == [
        ("cpu A", "pro_30"),
        ("cpu A", "i_auroc"),
        ("gpu B", "pro_30"),
        ("gpu B", "i_auroc"),
    ]
    for panel in panels:  # one device per latency axis, and the panel says which
        assert panel.device in panel.ax.get_title() and "(ms)" in panel.ax.get_xlabel()
        assert len(panel.labels) == len(panel.variants)
        frame = panel.ax.get_window_extent(renderer)
        boxes = [Text.get_window_extent(t, renderer) for t in panel.labels]
        markers = [m.get_window_extent(renderer) for m in panel.markers]
        for i, box in enumerate(boxes):
            text = panel.labels[i].get_text()
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1, text
            assert frame.y0 <= box.y0 and box.y1 <= frame.y1, text
            assert not any(box.overlaps(other) for other in boxes[i + 1 :]), text
            assert not any(box.overlaps(m) for m in markers), text
        for leader in panel.leaders:
            path = MplPath(leader.get_transform().transform(leader.get_xydata()))
            assert sum(path.intersects_bbox(b, filled=False) for b in boxes) <= 1  # only its own
    assert len(panels[0].leaders) > 0  # the crowded panel needed some
    key_texts = [t.get_text() for t in fig.axes[2].texts] if numbered else []
    if numbered:  # the key of the crowded device names every number, fastest first
        assert [t.split()[0] for t in key_texts] == [str(k) for k in range(1, count + 1)]
        assert panels[0].labels[0].get_text().isdigit()
    else:
        assert all(t.get_text().startswith("efficientnet_lite") for t in panels[0].labels)


def test_plot_numbers_the_points_when_names_do_not_fit(monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from dmgrd_edge import tradeoff_plot
    from dmgrd_edge.errors import DataError

    tried = []

    def build(variants, metrics, picks, budget_ms, budget_picks, rec_text, scale, numbered):
        tried.append((numbered, scale))
        if not numbered or fits_numbers is False:
            raise tradeoff_plot._NoRoom("pruned 75% +150 steps int8-cpu")
        fig = Figure(figsize=(2, 1))
        FigureCanvasAgg(fig)
        return fig, []

    monkeypatch.setattr(tradeoff_plot, "build_figure", build)
    fits_numbers = True
    png = tradeoff_plot.render([], ("pro_30",), {}, None, {}, "recommended")
    assert png.startswith(b"\x89PNG") and tried == [(False, 1.0), (False, 1.6), (True, 1.0)]
    fits_numbers = False
    with pytest.raises(DataError, match="pruned 75% .* even as a number") as info:
        tradeoff_plot.render([], ("pro_30",), {}, None, {}, "recommended")
    assert "fewer bench results" in str(info.value)


@pytest.mark.parametrize(
    "nvpmodel",
    [
        {
            "mode": "MAXN",
            "id": 0,
            "raw": "NV Power Mode: MAXN\n0",
        },  # parsed, as bench writes it now
        "NV Power Mode: MAXN\n0",  # the raw text older bench results carry
        {
            "mode": None,
            "id": None,
            "raw": "NV Power Mode: MAXN\n0",
        },  # a form the parser did not know
    ],
)
def test_report_reads_jetson_results_with_either_power_mode_form(tmp_path, nvpmodel):
    """`dmgrd-edge report` on results recorded on a Jetson: the parsed nvpmodel dict and the
    older raw text give the same device label (no AttributeError on the dict)."""
    import json

    old = {"nvpmodel": "NV Power Mode: MAXN\n0", "l4t": "R36.3.0"}
    paths = []
    new = {"nvpmodel": nvpmodel, "l4t": "R36.3.0"}
    for name, jetson, ms in (("new.json", new, 2.0), ("old.json", old, 3.0)):
        data = {
            "latency": [{"batch": 1, "ms_p50": ms, "ms_p99": ms, "images_per_s": 1000 / ms}],
            "backend": {
                "backend": "tensorrt",
                "file": f"engines/{name}.engine",
                "precision": "int8",
            },
            "model": {"backbone": "efficientnet_lite0", "image_size": 256},
            "device": {"cpu": "ARMv8", "gpu": "Orin", "jetson": jetson},
        }
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(data))
    result = write_report(paths, tmp_path / "out")
    assert {v.device for v in result["variants"]} == {"Orin (R36.3.0, MAXN)"}
    assert "## Orin (R36.3.0, MAXN)" in result["paths"]["md"].read_text()
