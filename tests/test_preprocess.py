"""One image file through every consumer's own code path gives the same tensor, bit for bit:
training, calibration, evaluation, bench and the runtime (source -> capture thread)."""

from __future__ import annotations

import queue
import shutil
from pathlib import Path

import numpy as np
import pytest

from dmgrd_edge.bundle import Bundle
from dmgrd_edge.config import PreprocessConfig
from dmgrd_edge.data.datasets import index_category
from dmgrd_edge.data.preprocess import preprocess

from conftest import write_png

CONFIGS = [
    PreprocessConfig(height=64, width=96),
    PreprocessConfig(height=64, width=64, color_order="BGR", interpolation="area"),
]


def _image() -> np.ndarray:
    """A 131 x 97 picture (not the model's size, so every path resizes): gradients, edges and
    noise in all three channels, stored as BGR for cv2.imwrite."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:97, 0:131]
    image = np.stack([x * 1.9, y * 2.6, (x + y) * 1.1], axis=-1) % 256
    image[30:60, 40:90] = (250, 20, 120)
    image = image + rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture()
def folder_set(tmp_path) -> Path:
    """A `folder` dataset: the same picture four times as good/, once as a defect."""
    root = tmp_path / "set"
    first = write_png(root / "good" / "a.png", _image())
    for name in ("b", "c", "d"):
        shutil.copy(first, root / "good" / f"{name}.png")
    (root / "scratch").mkdir()
    shutil.copy(first, root / "scratch" / "e.png")
    return root


def _training(path: Path, cfg: PreprocessConfig) -> np.ndarray:
    from dmgrd_edge.train.loop import as_tensor, load_images

    return as_tensor(load_images([path], cfg), cfg, "cpu").numpy()


def _calibration(folder: Path, cfg: PreprocessConfig) -> np.ndarray:
    from dmgrd_edge.calib.data import CalibrationReader, collect

    data = collect(folder / "good", None, None, cfg, count=4, guard_count=2, pseudo=False)
    reader = CalibrationReader(data.calibration, cfg, batch_size=1)
    return reader.get_next()["image"]


def _evaluation(folder: Path, cfg: PreprocessConfig) -> np.ndarray:
    from rich.console import Console

    from dmgrd_edge.train.evaluate import read_test_set
    from dmgrd_edge.train.loop import as_tensor

    index = index_category("folder", folder, "")
    images, _ = read_test_set(index.test, cfg, Console(quiet=True), "set")
    return as_tensor(images, cfg, "cpu").numpy()


def _bench(folder: Path, cfg: PreprocessConfig) -> np.ndarray:
    from dmgrd_edge.runtime.bench import test_batch

    return test_batch(index_category("folder", folder, "").test, cfg)


def _runtime(path: Path, cfg: PreprocessConfig) -> np.ndarray:
    from dmgrd_edge.runtime.capture import END, Capture
    from dmgrd_edge.runtime.pipeline import make_preprocess
    from dmgrd_edge.runtime.sources import open_source, parse_uri

    bundle = Bundle(path.parent, {"preprocess": cfg.to_dict()})
    capture = Capture(open_source(parse_uri(str(path))), make_preprocess(bundle))
    capture.start()
    frame = capture.queue.get(timeout=30)
    capture.join(timeout=30)
    assert frame is not END and capture.fatal is None
    try:
        assert capture.queue.get_nowait() is END
    except queue.Empty:
        pytest.fail("the capture thread did not end after the one image")
    return frame.tensor[None]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["rgb-linear", "bgr-area"])
def test_every_consumer_makes_the_same_tensor(folder_set, cfg):
    path = folder_set / "good" / "a.png"
    reference = preprocess(_image()[..., ::-1].copy(), cfg)  # the PNG holds BGR, read as RGB
    assert reference.shape == (1, 3, cfg.height, cfg.width) and reference.dtype == np.float32
    tensors = {
        "training": _training(path, cfg),
        "calibration": _calibration(folder_set, cfg),
        "evaluation": _evaluation(folder_set, cfg),
        "bench": _bench(folder_set, cfg),
        "runtime": _runtime(path, cfg),
    }
    for name, tensor in tensors.items():
        for one in tensor:  # each consumer's batch holds copies of the same file
            assert one.dtype == np.float32, name
            assert np.array_equal(one, reference[0]), f"{name} differs from preprocess()"


def test_the_comparison_sees_a_one_bit_difference():
    """The test above compares exactly: a frame changed in one pixel by one level differs."""
    cfg = CONFIGS[0]
    image = _image()[..., ::-1].copy()
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    assert not np.array_equal(preprocess(image, cfg), preprocess(changed, cfg))
