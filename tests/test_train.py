"""Training end to end on tiny generated data: checkpoints, resume, eval, CLI errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dmgrd_edge.config import PAPER_MODEL_FIELDS, ModelConfig, TrainConfig
from dmgrd_edge.data.synthesis import AnomalySynthesizer
from dmgrd_edge.errors import CheckpointError, DataError
from dmgrd_edge.train.checkpoint import load_model, read_checkpoint
from dmgrd_edge.train.evaluate import evaluate_checkpoint
from dmgrd_edge.options import TrainJob
from dmgrd_edge.train.loop import BatchSource, lr_at
from dmgrd_edge.train.trainer import train_category


def _job(root, out, steps, **kw):
    config = ModelConfig(image_size=64, memory_size=4, **PAPER_MODEL_FIELDS)
    return TrainJob(
        dataset="mvtec",
        root=str(root),
        category="washer",
        out_dir=str(out),
        model=config,
        train=TrainConfig(
            steps=steps, batch_size=4, warmup_steps=1, val_every=2, checkpoint_every=2
        ),
        **kw,
    )


def test_checkpoint_is_weights_only_and_complete(trained_ckpt):
    payload = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    assert payload["step"] == 4
    meta = payload["metadata"]
    assert meta["selection_rule"] == "nearest" and "ImageNet" in meta["teacher_weights"]
    assert meta["memory"]["size"] == 4 and len(meta["memory"]["train_indices"]) == 4
    assert {"threshold", "p99", "mean"} <= set(meta["score_stats"])
    assert len(meta["history"]) == 2
    assert "normal_memory.maps0" in payload["state_dict"]
    model, _ = load_model(trained_ckpt)
    torch.testing.assert_close(
        model.normal_memory.maps0, payload["state_dict"]["normal_memory.maps0"]
    )
    assert (trained_ckpt.parent / "best.pt").is_file()


def test_resume_is_bit_for_bit(tmp_path, line_root):
    straight = tmp_path / "straight"
    train_category(_job(line_root, straight, 4))
    resumed = tmp_path / "resumed"
    train_category(_job(line_root, resumed, 2))
    job = _job(line_root, resumed, 4, resume=True)
    train_category(job)
    a = read_checkpoint(straight / "last.pt")["state_dict"]
    b = read_checkpoint(resumed / "last.pt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.fault("existing output kept, never overwritten")
def test_existing_run_is_not_overwritten(tmp_path, line_root):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        train_category(_job(line_root, out, 2))
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(DataError, match="--resume"):
        train_category(_job(line_root, tmp_path / "fresh", 2, resume=True))


def test_batches_are_a_function_of_the_step():
    images = np.random.default_rng(0).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    cfg = TrainConfig(batch_size=4)
    source = BatchSource(images, AnomalySynthesizer(64, 64), cfg)
    a, b = source.batch(7), source.batch(7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    aug, clean, masks, is_anom = a
    assert is_anom.tolist() == [False, False, True, True]
    assert (aug[:2] == clean[:2]).all() and masks[2:].any(axis=(1, 2)).all()


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=0.005, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(0.0005)
    assert lr_at(9, cfg) == pytest.approx(0.005)
    assert lr_at(10, cfg) == pytest.approx(0.005)
    assert lr_at(99, cfg) == pytest.approx(1e-4, rel=0.05)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))


@pytest.mark.fault("checkpoint with damaged or mistyped fields")
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, trained_ckpt):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(trained_ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(broken)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "none.pt")


def test_evaluate_writes_metrics_and_overlays(tmp_path, trained_ckpt):
    result = evaluate_checkpoint(trained_ckpt, out_dir=tmp_path, overlays_per_type=1)
    row = result["row"]
    assert {"i_auroc", "p_auroc", "pro_30", "pro_full", "ms_per_image"} <= set(row)
    assert 0 <= row["pro_30"] <= 1 and row["n_test"] == 4 + 10
    overlays = sorted(p.name for p in (tmp_path / "overlays" / "washer").iterdir())
    assert len(overlays) == 6 and overlays[0].startswith("color_")


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "dmgrd_edge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def test_cli_eval_writes_reports(tmp_path, trained_ckpt):
    result = _cli("eval", trained_ckpt, "--out", tmp_path / "ev", "--overlays", "1")
    assert result.returncode == 0, result.stderr
    assert "| washer |" in result.stdout
    data = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert data["rows"][0]["category"] == "washer"
    assert (tmp_path / "ev" / "report.csv").read_text().startswith("category,i_auroc")


@pytest.mark.fault("option or combination that is not allowed")
@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--data", "nowhere"], "dataset root not found"),
        (["train", "--data", ".", "--backbone", "vgg"], "choose one of"),
        (["train", "--data", ".", "--dataset", "kolektor"], "choose one of"),
        (["eval", "missing.pt"], "checkpoint not found"),
    ],
)
def test_cli_errors_exit_non_zero_with_a_fix(tmp_path, args, needle):
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_cli_train_and_generate(tmp_path):
    gen = _cli(
        "generate-data",
        tmp_path / "d",
        "--categories",
        "granite",
        "--n-train",
        "6",
        "--n-test-good",
        "2",
        "--n-test-per-defect",
        "1",
        "--size",
        "64",
    )
    assert gen.returncode == 0, gen.stderr
    result = _cli(
        "train",
        "--data",
        tmp_path / "d",
        "--category",
        "all",
        "--out",
        tmp_path / "runs",
        "--image-size",
        "64",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--memory-size",
        "2",
        "--val-every",
        "2",
        "--checkpoint-every",
        "2",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (
        summary[0]["category"] == "granite"
        and (tmp_path / "runs" / "granite" / "last.pt").is_file()
    )


@pytest.mark.fault("image file corrupt or truncated")
def test_overwrite_replaces_a_run_only_once_the_new_run_has_a_checkpoint(tmp_path, line_root):
    import shutil

    from dmgrd_edge.errors import DataError

    out = tmp_path / "run"
    train_category(_job(line_root, out, 2))
    before = (out / "last.pt").read_bytes()
    bad = tmp_path / "bad"
    shutil.copytree(line_root, bad)
    broken = sorted((bad / "washer" / "train" / "good").glob("*.png"))[3]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated: the new run fails on its data
    with pytest.raises(DataError, match="truncated"):
        train_category(_job(bad, out, 2, overwrite=True))
    assert (out / "last.pt").read_bytes() == before  # the old run is untouched
    train_category(_job(line_root, out, 4, overwrite=True))
    assert read_checkpoint(out / "last.pt")["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "run"]  # nothing left beside it
