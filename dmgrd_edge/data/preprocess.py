"""THE frame-to-tensor function, in two halves with the parameters of the checkpoint or
bundle manifest:

- `model_frames` / `read_frames`: RGB uint8 image(s) of any size (or image files) -> uint8
  (N, H, W, 3) at the model's size. Training and calibration stop here, because the
  pseudo-anomaly synthesis works on these frames;
- `normalize`: those frames -> float32 (N, 3, H, W), what the model takes.

`preprocess` is the two in one call, `frame_to_tensor` the same for one frame (the runtime's
capture thread). Training, calibration, evaluation, bench and the runtime all go through
these functions; `tests/test_preprocess.py` feeds one image file through each of them and
compares the tensors bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from ..config import PreprocessConfig
from ..errors import DataError
from .imageio import read_image, read_mask_of

_INTERP = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}


def resize_rgb(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Resize an RGB uint8 image to the model's input size (no-op when already there)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(
            f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}",
            "read images with dmgrd_edge.data.read_image",
        )
    if image.shape[:2] == (cfg.height, cfg.width):
        return image
    return cv2.resize(image, (cfg.width, cfg.height), interpolation=_INTERP[cfg.interpolation])


def normalize(batch_hwc: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB at model size -> float32 (N, 3, H, W) normalised:
    (x - 255 mean) / (255 std) per channel, computed as x * a + b written straight into the
    NCHW output, one plane at a time (several times faster than converting the whole batch
    to float and transposing it, which matters at the line: it runs for every frame)."""
    scale = np.asarray(cfg.std, np.float32) * np.float32(255.0)
    shift = np.asarray(cfg.mean, np.float32) * np.float32(255.0)
    gain, bias = (np.float32(1.0) / scale).astype(np.float32), (-shift / scale).astype(np.float32)
    n, h, w, _ = batch_hwc.shape
    out = np.empty((n, 3, h, w), np.float32)
    for c in range(3):
        source = 2 - c if cfg.color_order == "BGR" else c
        np.multiply(batch_hwc[..., source], gain[c], out=out[:, c], dtype=np.float32)
        out[:, c] += bias[c]
    return out


def model_frames(images: np.ndarray | Sequence[np.ndarray], cfg: PreprocessConfig) -> np.ndarray:
    """RGB uint8 image(s) of any size -> uint8 (N, H, W, 3) at the model's size."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    if len(images) == 0:
        raise DataError("preprocess got no images")
    return np.stack([resize_rgb(image, cfg) for image in images])


def read_frames(paths: Iterable[str | Path], cfg: PreprocessConfig) -> np.ndarray:
    """Image files -> uint8 (N, H, W, 3) at the model's size (read with `read_image`)."""
    return model_frames([read_image(p) for p in paths], cfg)


def read_masks(samples: Sequence, cfg: PreprocessConfig) -> np.ndarray:
    """Ground-truth masks of dataset samples (``.path``, ``.mask_path``) at the model's size,
    bool (N, H, W); a sample without a mask (a good image) is empty. A mask must have its
    image's size (imageio.read_mask_of)."""
    return np.stack(
        [
            resize_mask(read_mask_of(s.mask_path, s.path), cfg.height, cfg.width)
            if s.mask_path
            else np.zeros((cfg.height, cfg.width), bool)
            for s in samples
        ]
    )


def preprocess(images: np.ndarray | Sequence[np.ndarray], cfg: PreprocessConfig) -> np.ndarray:
    """RGB uint8 image(s) of any size -> normalised float32 NCHW at the model's size."""
    return normalize(model_frames(images, cfg), cfg)


def frame_to_tensor(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """One RGB uint8 frame of any size -> float32 (3, H, W)."""
    return preprocess(image, cfg)[0]


def make_preprocess(cfg: PreprocessConfig) -> Callable[[np.ndarray], np.ndarray]:
    """`frame_to_tensor` bound to one set of parameters (the runtime's capture thread)."""

    def run(image: np.ndarray) -> np.ndarray:
        return frame_to_tensor(image, cfg)

    return run


def denormalize(batch_nchw: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Inverse of `normalize`, for drawing: float NCHW -> RGB uint8 NHWC."""
    hwc = batch_nchw.transpose(0, 2, 3, 1) * np.asarray(cfg.std) + np.asarray(cfg.mean)
    if cfg.color_order == "BGR":
        hwc = hwc[..., ::-1]
    return np.clip(hwc * 255.0 + 0.5, 0, 255).astype(np.uint8)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask."""
    if mask.shape == (height, width):
        return mask.astype(bool)
    resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized > 0
