"""`dmgrd-edge sweep`: the matrix, the settings check, and a real sweep killed and continued."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmgrd_edge.errors import ConfigError, DataError
from dmgrd_edge.options import SweepConfig, split_list
from dmgrd_edge.workflow.sweep import Paths, Variant, check_sweep_folder, finished_result, plan


def tiny(data: Path, out: Path, **changes) -> SweepConfig:
    return SweepConfig(data=str(data), category="washer", out=str(out), **changes)


def test_plan_orders_the_matrix_and_leaves_out_pruned_knn(tmp_path):
    config = tiny(
        tmp_path,
        tmp_path / "s",
        backbones=("efficientnet_lite0", "efficientnet_lite1"),
        models=("default", "knn"),
        ratios=(0.5, 0.0),
        precisions=("fp32", "int8"),
    ).validate()
    variants, skipped = plan(config)
    ids = [v.id for v in variants]
    assert ids[:6] == [
        "efficientnet_lite0-default-p0-fp32",
        "efficientnet_lite0-default-p0-int8",
        "efficientnet_lite0-default-p50-fp32",
        "efficientnet_lite0-default-p50-int8",
        "efficientnet_lite0-knn-p0-fp32",
        "efficientnet_lite0-knn-p0-int8",
    ]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert len(skipped) == 2 and all("knn pruned 50%" in s for s in skipped)
    assert Variant("efficientnet_lite1", "knn", 0.0, "int8").label == "efficientnet_lite1 knn"
    assert Variant("efficientnet_lite0", "default", 0.5, "fp32").label == (
        "efficientnet_lite0 pruned 50%"
    )
    paths = Paths(tmp_path / "s")
    pruned = Variant("efficientnet_lite0", "default", 0.5, "fp32")
    assert paths.run(pruned).name == "efficientnet_lite0-default-p50"
    assert paths.run(Variant("efficientnet_lite0", "default", 0.0, "int8")).name == (
        "efficientnet_lite0-default"
    )


@pytest.mark.fault("option or combination that is not allowed")
@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"backbones": ("efficientnet_lite9",)}, "unknown backbone 'efficientnet_lite9'"),
        ({"models": ("default", "rd")}, "unknown model variant 'rd'"),
        ({"ratios": (0.0, 1.0)}, "--ratios"),
        ({"precisions": ("fp16",)}, "unknown precision 'fp16'"),
        ({"precisions": ("fp32", "fp32")}, "names a value twice"),
        ({"image_size": 100}, "multiple of 32"),
        ({"bench_batches": (1, 16)}, "--bench-batches"),
        ({"workers": "many"}, "--workers"),
        ({"image_score": "max"}, "unknown image score 'max'"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path, changes, needle):
    with pytest.raises(ConfigError) as err:
        tiny(tmp_path, tmp_path / "s", **changes).validate()
    assert needle in str(err.value)
    assert not (tmp_path / "s").exists()


@pytest.mark.fault("option or combination that is not allowed")
def test_split_list_names_the_option():
    assert split_list("--ratios", "0, 0.5,", float) == (0.0, 0.5)
    with pytest.raises(ConfigError, match="bad --ratios 'half'"):
        split_list("--ratios", "half", float)


@pytest.mark.fault("existing output kept, never overwritten")
def test_a_folder_of_other_settings_or_no_sweep_is_refused(tmp_path):
    out = tmp_path / "s"
    config = tiny(tmp_path, out, steps=5)
    check_sweep_folder(Paths(out), config)  # new folder: fine
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"settings": config.settings()}))
    check_sweep_folder(Paths(out), tiny(tmp_path, out, steps=5, ratios=(0.0, 0.5)))  # matrix grows
    with pytest.raises(ConfigError, match="steps: 5 there, 7 now"):
        check_sweep_folder(Paths(out), tiny(tmp_path, out, steps=7))
    with pytest.raises(ConfigError, match="image_score: 'student' there, 'auto' now"):
        check_sweep_folder(Paths(out), tiny(tmp_path, out, steps=5, image_score="auto"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds no sweep"):
        check_sweep_folder(Paths(other), config)


@pytest.mark.fault("result file cut short or of other settings")
def test_only_a_complete_result_of_the_same_settings_counts_as_finished(tmp_path):
    config = tiny(tmp_path, tmp_path / "s")
    v = Variant("efficientnet_lite0", "default", 0.0, "fp32")
    path = tmp_path / "r.json"
    whole = {
        "latency": [{"batch": 1}],
        "backend": {},
        "model": {},
        "sweep": {"id": v.id, "settings": config.settings()},
    }
    text = json.dumps(whole)
    path.write_text(text)
    assert finished_result(path, v, config.settings()) == whole
    path.write_text(text[: len(text) // 2])  # cut short
    assert finished_result(path, v, config.settings()) is None
    path.write_text(json.dumps({k: whole[k] for k in ("latency", "backend", "model")}))
    assert finished_result(path, v, config.settings()) is None  # a bench result, not the sweep's
    path.write_text(text)
    other = tiny(tmp_path, tmp_path / "s", steps=1).settings()
    assert finished_result(path, v, other) is None
    assert (
        finished_result(
            path, Variant("efficientnet_lite0", "default", 0.0, "int8"), config.settings()
        )
        is None
    )  # noqa: E501
    assert finished_result(tmp_path / "missing.json", v, config.settings()) is None


def _sweep_command(data: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dmgrd_edge.cli",
        "sweep",
        "--data",
        str(data),
        "--category",
        "washer",
        "--out",
        str(out),
        "--image-size",
        "64",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--ratios",
        "0,0.5",
        "--precisions",
        "fp32",
        "--prune-steps",
        "2",
        "--calib-count",
        "4",
        "--bench-batches",
        "1",
        "--runs",
        "3",
        "--threads",
        "2",
    ]


@pytest.mark.fault("process killed or stopped mid-run (SIGKILL, SIGTERM)")
@pytest.mark.slow
def test_a_killed_sweep_continues_where_it_stopped(tmp_path, line_root):
    """Two variants (unpruned and pruned 50 %, fp32). The sweep is killed (SIGKILL) as soon as
    the first variant's result is written; started again, it keeps that result as it is, does
    not train again, runs the second variant and writes the report over both."""
    out = tmp_path / "sweep"
    first = out / "results" / "efficientnet_lite0-default-p0-fp32.json"
    second = out / "results" / "efficientnet_lite0-default-p50-fp32.json"
    log1 = tmp_path / "first.log"
    with open(log1, "wb") as handle:
        proc = subprocess.Popen(_sweep_command(line_root, out), stdout=handle, stderr=handle)
        deadline = time.monotonic() + 900
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert alive, "the sweep ended before it could be killed:\n" + log1.read_text()[-3000:]
    assert first.exists() and not second.exists()
    assert not (out / "report").exists()
    before = first.read_bytes(), first.stat().st_mtime_ns

    again = subprocess.run(
        _sweep_command(line_root, out), capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stderr[-3000:]
    log = " ".join(again.stderr.split())  # rich wraps long lines
    assert "1 finished already: efficientnet_lite0-default-p0-fp32" in log
    assert "train efficientnet_lite0-default" not in log and "resume" not in log
    assert "prune efficientnet_lite0-default-p50" in log
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before

    result = json.loads(second.read_text())
    assert result["sweep"]["ratio"] == 0.5 and result["pruning"]["ratio"] == 0.5
    assert result["backend"]["file"] == "model.onnx" and result["latency"][0]["batch"] == 1
    assert 0.0 <= result["accuracy"]["i_auroc"] <= 1.0 and result["accuracy"]["n_test"] == 14
    assert result["sweep"]["checkpoint_eval"]["n_test"] == 14
    assert (out / result["sweep"]["bundle"] / "manifest.json").is_file()
    seconds = result["sweep"]["seconds"]  # this run's stages: wall and CPU seconds
    assert {"prune", "prune_cpu", "export", "bench", "bench_cpu"} <= set(seconds)
    assert "train" not in seconds and seconds["bench_cpu"] > 0  # the bench process's CPU
    assert list((out / result["sweep"]["eval_dir"] / "overlays").rglob("*.png"))
    csv = (out / "report" / "report.csv").read_text().splitlines()
    assert len(csv) == 3  # header and the two variants
    assert any("efficientnet_lite0 pruned 50%" in row for row in csv)
    assert all((out / "report" / name).is_file() for name in ("report.html", "pareto.png"))
    summary = json.loads(again.stdout[again.stdout.index("{\n") :])
    assert summary["variants"] == [
        "efficientnet_lite0-default-p0-fp32",
        "efficientnet_lite0-default-p50-fp32",
    ]

    # a third start has nothing left to do but the report
    third = subprocess.run(
        _sweep_command(line_root, out), capture_output=True, text=True, timeout=300
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert "2 finished already" in " ".join(third.stderr.split())
    assert "bench " not in third.stderr
