"""Pseudo-anomaly synthesis settings (SynthesisConfig): set from `train --synthesis`, stored in
the checkpoint, used again by a resumed run and by the stages that synthesise again (the
fine-tune after pruning, rescore); a checkpoint without them means the defaults."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from dmgrd_edge.train.checkpoint import read_checkpoint
from dmgrd_edge.options import TrainJob
from dmgrd_edge.train.trainer import train_category
from typer.testing import CliRunner

from dmgrd_edge.cli import app
from dmgrd_edge.config import PAPER_MODEL_FIELDS, ModelConfig, SynthesisConfig, TrainConfig
from dmgrd_edge.errors import ConfigError

CHANGED = SynthesisConfig(
    beta_range=(0.6, 0.9), fourier_probability=0.0, other_image_probability=0.0
)


def _job(root, out, steps, synthesis=None, **kw) -> TrainJob:
    return TrainJob(
        dataset="mvtec",
        root=str(root),
        category="washer",
        out_dir=str(out),
        model=ModelConfig(image_size=64, memory_size=4, **PAPER_MODEL_FIELDS),
        train=TrainConfig(
            steps=steps,
            batch_size=4,
            warmup_steps=1,
            val_every=2,
            checkpoint_every=2,
            synthesis=synthesis or SynthesisConfig(),
        ),
        **kw,
    )


def _weights(path):
    return read_checkpoint(path)["state_dict"]


def test_synthesis_is_stored_used_and_kept_on_resume(tmp_path, line_root):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_category(_job(line_root, straight, 4, CHANGED))
    train_category(_job(line_root, resumed, 2, CHANGED))
    after_two = tmp_path / "after_two.pt"
    shutil.copy(resumed / "last.pt", after_two)
    stored = read_checkpoint(after_two)["metadata"]["train_config"]["synthesis"]
    assert SynthesisConfig.from_dict(stored) == CHANGED
    # the settings are used: the defaults give other pseudo-anomalies, hence other weights
    train_category(_job(line_root, tmp_path / "defaults", 2))
    default_weights, changed_weights = (
        _weights(tmp_path / "defaults" / "last.pt"),
        _weights(after_two),
    )
    assert any(not torch.equal(default_weights[k], changed_weights[k]) for k in changed_weights)
    # resumed without asking for them, the run goes on with its own: bit for bit
    summary = train_category(_job(line_root, resumed, 4, resume=True))
    a, b = _weights(straight / "last.pt"), _weights(resumed / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stored = read_checkpoint(resumed / "last.pt")["metadata"]["train_config"]["synthesis"]
    assert SynthesisConfig.from_dict(stored) == CHANGED
    assert summary["job_digest"] == _job(line_root, resumed, 4, resume=True).digest()
    # other settings asked for on a resume are refused, the run is left as it was
    before = (resumed / "last.pt").read_bytes()
    other = SynthesisConfig(beta_range=(0.2, 0.3))
    with pytest.raises(ConfigError, match="was trained with the synthesis"):
        train_category(_job(line_root, resumed, 6, other, resume=True))
    assert (resumed / "last.pt").read_bytes() == before


def test_old_checkpoints_mean_the_defaults_and_re_synthesis_uses_the_stored():
    from dmgrd_edge.train.prune import finetune_config
    from dmgrd_edge.train.rescore import _train_config

    old = TrainConfig().to_dict()
    del old["synthesis"]  # a checkpoint from before the settings were stored
    assert TrainConfig.from_dict(old).synthesis == SynthesisConfig()
    assert finetune_config(old, 5, 0.001).synthesis == SynthesisConfig()
    new = TrainConfig(synthesis=CHANGED).to_dict()
    assert finetune_config(new, 5, 0.001).synthesis == CHANGED
    assert _train_config({"train_config": new}).synthesis == CHANGED
    assert _train_config({}).synthesis == SynthesisConfig()


def test_int8_calibration_synthesises_as_the_checkpoint_was_trained(tmp_path, line_root):
    """The export's calibration and guard pseudo-anomalies are made with the checkpoint's
    synthesis settings (recorded in the manifest's calibration summary); a checkpoint
    without them means the defaults."""
    import numpy as np
    from dmgrd_edge.export.pipeline import _collect

    from dmgrd_edge.config import PreprocessConfig
    from dmgrd_edge.options import ExportOptions

    pre = PreprocessConfig(height=64, width=64)
    opts = ExportOptions(checkpoint=tmp_path / "x.pt", out=tmp_path / "b", calib_count=8)
    opts.guard_count, opts.calib_pseudo = 8, True
    meta = {"root": str(line_root), "dataset": "mvtec", "category": "washer"}
    changed = {**meta, "train_config": TrainConfig(synthesis=CHANGED).to_dict()}
    found = {}
    for name, given in (("old", meta), ("changed", changed)):
        found[name] = _collect(opts, given, pre, {}, lambda _: None, None)
    assert found["old"].summary()["synthesis"] == SynthesisConfig().to_dict()
    assert found["changed"].summary()["synthesis"] == CHANGED.to_dict()
    old, new = found["old"], found["changed"]
    assert np.array_equal(old.guard_labels, new.guard_labels)
    normal = old.guard_labels == 0
    assert np.array_equal(old.guard_images[normal], new.guard_images[normal])
    # the same seed, other settings: other pseudo-anomalies
    assert not np.array_equal(old.guard_images[~normal], new.guard_images[~normal])


def test_a_default_synthesis_keeps_the_digest_finished_runs_have():
    job = _job("root", "out", 4)
    train = {k: v for k, v in job.train.to_dict().items() if k not in ("threads", "synthesis")}
    fields = {
        "dataset": job.dataset,
        "category": job.category,
        "model": job.model.to_dict(),
        "train": train,
        "pretrained": job.pretrained,
        "teacher_weights": None,
        "init_from": None,
    }
    before = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert job.digest() == before
    assert _job("root", "out", 4, CHANGED).digest() != before


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("beta_range=0.9,0.1", "LOW above HIGH"),
        ("beta_range=0.5", "bad --synthesis"),
        ("fourier_probability=2", "synthesis fourier_probability"),
        ("nope=1", "bad --synthesis"),
    ],
)
def test_cli_refuses_bad_synthesis_settings_before_any_work(tmp_path, line_root, item, message):
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app, ["train", "--data", str(line_root), "--out", str(out), "--synthesis", item]
    )
    assert isinstance(result.exception, ConfigError) and message in result.exception.problem
    if message == "bad --synthesis":  # the fix names the keys or the form
        assert "beta_range" in result.exception.fix
    assert not out.exists()


def test_cli_trains_with_the_synthesis_asked_for(tmp_path, line_root):
    out = tmp_path / "runs"
    args = ["train", "--data", str(line_root), "--category", "washer", "--out", str(out)]
    args += ["--image-size", "64", "--memory-size", "4", "--steps", "2", "--batch-size", "4"]
    args += ["--val-every", "2", "--checkpoint-every", "2", "--random-teacher"]
    args += ["--synthesis", "beta_range=0.6,0.9", "--synthesis", "fourier-probability=0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stored = read_checkpoint(out / "washer" / "last.pt")["metadata"]["train_config"]
    assert SynthesisConfig.from_dict(stored["synthesis"]) == SynthesisConfig(
        beta_range=(0.6, 0.9), fourier_probability=0.0
    )
