"""Shared fixtures: small generated datasets in the documented layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def line_root(tmp_path_factory) -> Path:
    """Synthetic MVTec-layout data: two categories at 64 px."""
    from dmgrd_edge.data.synthetic import generate_line_data

    root = tmp_path_factory.mktemp("line") / "line"
    return generate_line_data(
        root,
        ["washer", "woven_fabric"],
        n_train=12,
        n_test_good=4,
        n_test_per_defect=2,
        size=64,
        seed=0,
    )


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory, line_root) -> Path:
    """A tiny DM-GRD checkpoint (64 px, a few steps) for eval/export tests."""
    from dmgrd_edge.config import PAPER_MODEL_FIELDS, ModelConfig, TrainConfig
    from dmgrd_edge.options import TrainJob
    from dmgrd_edge.train.trainer import train_category

    out = tmp_path_factory.mktemp("run") / "washer"
    # the paper's form, whose structure the export and pruning tests check; the other forms
    # are trained in tests/test_memory_methods.py
    config = ModelConfig(image_size=64, memory_size=4, **PAPER_MODEL_FIELDS)
    job = TrainJob(
        dataset="mvtec",
        root=str(line_root),
        category="washer",
        out_dir=str(out),
        model=config,
        train=TrainConfig(steps=4, batch_size=4, warmup_steps=1, val_every=2, checkpoint_every=2),
    )
    train_category(job)
    return out / "last.pt"


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory, trained_ckpt) -> Path:
    """A bundle of the tiny checkpoint: model.onnx only, batches 1 to 4 (runtime tests)."""
    from dmgrd_edge.options import BatchProfile, ExportOptions
    from dmgrd_edge.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("fp32") / "bundle"
    export_bundle(
        ExportOptions(checkpoint=trained_ckpt, out=out, calib_count=4, batch=BatchProfile(1, 1, 4)),
        log=lambda _: None,
    )
    return out


def write_png(path: Path, image: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path
