"""Seeded synthetic production-line data in the MVTec AD layout, for tests and demos.

Surfaces (textures) and parts (objects) with natural variation between good images
(lighting, position, texture noise), and five defect kinds with pixel-exact masks:
scratch, spot, missing material, foreign body and colour shift. Every image is a pure
function of (seed, category, split, index), so any subset can be regenerated.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..errors import ConfigError, DataError
from ..options import LineDataSettings
from .imageio import write_image

DEFECTS = ("scratch", "spot", "missing", "foreign", "color")


def _smooth_noise(
    rng: np.random.Generator, size: int, sigma: float, ksize_x=0, ksize_y=0
) -> np.ndarray:
    noise = rng.standard_normal((size, size)).astype(np.float32)
    if ksize_x or ksize_y:
        noise = cv2.blur(noise, (max(1, ksize_x), max(1, ksize_y)))
    else:
        noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def _shade(gray: np.ndarray, tint: tuple[float, float, float]) -> np.ndarray:
    rgb = gray[:, :, None] * np.asarray(tint, np.float32)[None, None]
    return np.clip(rgb, 0, 255)


def _brushed_metal(rng, size):
    gray = 150 + 18 * _smooth_noise(rng, size, 0, ksize_x=size // 3, ksize_y=1)
    gray += 6 * _smooth_noise(rng, size, 1.0)
    gray += np.linspace(-12, 12, size, dtype=np.float32)[None, :] * rng.uniform(-1, 1)
    return _shade(gray, (1.0, 1.0, 1.04)), np.ones((size, size), bool)


def _woven_fabric(rng, size):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / rng.uniform(22, 26)
    phase = rng.uniform(0, 2 * np.pi, 2)
    weave = np.sin(2 * np.pi * xx / period + phase[0]) * np.sin(2 * np.pi * yy / period + phase[1])
    gray = 120 + 35 * weave + 8 * _smooth_noise(rng, size, 1.5)
    return _shade(gray, (0.75, 0.85, 1.1)), np.ones((size, size), bool)


def _granite(rng, size):
    gray = 130 + 25 * _smooth_noise(rng, size, 6) + 15 * _smooth_noise(rng, size, 1.2)
    return _shade(gray, (1.08, 0.98, 0.9)), np.ones((size, size), bool)


def _washer(rng, size):
    image = np.full((size, size, 3), 40, np.float32) + 4 * _smooth_noise(rng, size, 2)[:, :, None]
    center = (size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = np.hypot(xx - center[0], yy - center[1])
    outer, inner = size * 0.36, size * 0.16
    part = (radius < outer) & (radius > inner)
    shading = (
        170
        + 40 * np.cos((radius - inner) / (outer - inner) * np.pi)
        + 5 * _smooth_noise(rng, size, 1)
    )
    image[part] = _shade(shading, (1.0, 0.97, 0.9))[part]
    return image, part


def _chip(rng, size):
    image = _shade(70 + 8 * _smooth_noise(rng, size, 3), (0.35, 0.8, 0.45))
    c = size / 2 + rng.uniform(-3, 3, 2)
    half = size * 0.22
    x0, x1, y0, y1 = (
        int(c[0] - half),
        int(c[0] + half),
        int(c[1] - half * 0.8),
        int(c[1] + half * 0.8),
    )
    part = np.zeros((size, size), bool)
    pin_w, gap = max(2, size // 40), max(5, size // 16)
    for x in range(x0 + gap // 2, x1 - pin_w, gap):
        for ya, yb in ((y0 - size // 14, y0), (y1, y1 + size // 14)):
            image[ya:yb, x : x + pin_w] = (200, 200, 190)
            part[ya:yb, x : x + pin_w] = True
    image[y0:y1, x0:x1] = (35 + 5 * _smooth_noise(rng, size, 1)[y0:y1, x0:x1, None]).clip(0, 255)
    part[y0:y1, x0:x1] = True
    cv2.circle(image, (x0 + size // 20, y0 + size // 20), max(2, size // 64), (90, 90, 90), -1)
    return image, part


CATEGORIES: dict[str, Callable] = {
    "brushed_metal": _brushed_metal,
    "woven_fabric": _woven_fabric,
    "granite": _granite,
    "washer": _washer,
    "chip": _chip,
}


def _random_point(rng, part: np.ndarray, margin: int) -> tuple[int, int]:
    ys, xs = np.nonzero(part[margin:-margin, margin:-margin])
    i = rng.integers(len(ys))
    return int(xs[i] + margin), int(ys[i] + margin)


def _scratch(rng, image, mask, part, background, x, y, scale):
    points = [(x, y)]
    for _ in range(3):
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(15, 35) * scale
        points.append(
            (
                int(points[-1][0] + length * np.cos(angle)),
                int(points[-1][1] + length * np.sin(angle)),
            )
        )
    cv2.polylines(mask, [np.array(points, np.int32)], False, 1, max(2, int(3 * scale)))
    value = rng.choice([235.0, 20.0])
    image[mask > 0] = 0.3 * image[mask > 0] + 0.7 * value
    return mask


def _spot(rng, image, mask, part, background, x, y, scale):
    axes = (int(rng.uniform(6, 14) * scale), int(rng.uniform(5, 12) * scale))
    cv2.ellipse(mask, (x, y), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2)[:, :, None]
    stain = np.asarray(rng.choice([[60, 40, 20], [20, 20, 20], [90, 70, 30]]), np.float32)
    image[:] = image * (1 - 0.8 * soft) + stain * 0.8 * soft
    return mask


def _missing(rng, image, mask, part, background, x, y, scale):
    pts = np.array(
        [
            [x + rng.uniform(-1, 1) * 14 * scale, y + rng.uniform(-1, 1) * 14 * scale]
            for _ in range(6)
        ],
        np.float32,
    )
    cv2.fillPoly(mask, [cv2.convexHull(pts).astype(np.int32)], 1)
    hole = (mask > 0) & part
    image[hole] = background[hole] * 0.25
    return hole.astype(np.uint8)


def _foreign(rng, image, mask, part, background, x, y, scale):
    r = int(rng.uniform(5, 10) * scale)
    pts = np.array(
        [
            [
                x + r * np.cos(a) * rng.uniform(0.6, 1.3),
                y + r * np.sin(a) * rng.uniform(0.6, 1.3),
            ]
            for a in np.linspace(0, 2 * np.pi, 7)[:-1]
        ],
        np.int32,
    )
    cv2.fillPoly(mask, [pts], 1)
    colour = rng.uniform(0, 255, 3)
    image[mask > 0] = colour + rng.normal(0, 10, (int(mask.sum()), 3))
    return mask


def _color(rng, image, mask, part, background, x, y, scale):
    axes = (int(rng.uniform(14, 24) * scale), int(rng.uniform(10, 20) * scale))
    cv2.ellipse(mask, (x, y), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    mask &= part.astype(np.uint8)
    shift = np.asarray(rng.choice([[1.5, 0.7, 0.6], [0.6, 0.8, 1.5], [1.4, 1.3, 0.5]]), np.float32)
    image[mask > 0] = image[mask > 0] * shift
    return mask


# defect kind -> painter: draws into ``image`` (float, in place) and returns the uint8 mask
_PAINTERS = {
    "scratch": _scratch,
    "spot": _spot,
    "missing": _missing,
    "foreign": _foreign,
    "color": _color,
}


def _add_defect(rng, image: np.ndarray, part: np.ndarray, kind: str, background: np.ndarray):
    size = image.shape[0]
    mask = np.zeros((size, size), np.uint8)
    x, y = _random_point(rng, part, size // 8)
    if kind not in _PAINTERS:
        raise ConfigError(f"unknown defect kind {kind!r}", f"choose one of {list(DEFECTS)}")
    mask = _PAINTERS[kind](rng, image, mask, part, background, x, y, size / 256)
    return np.clip(image, 0, 255), mask > 0


def make_image(
    category: str, seed: int, split: str, index: int, size: int = 256, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image and its bool mask (all False for a good image)."""
    if category not in CATEGORIES:
        raise ConfigError(
            f"unknown synthetic category {category!r}", f"choose one of {sorted(CATEGORIES)}"
        )
    key = [
        seed,
        sorted(CATEGORIES).index(category),
        ["train", "test", "video"].index(split),
        index,
        DEFECTS.index(defect) + 1 if defect else 0,
    ]
    rng = np.random.default_rng(key)
    image, part = CATEGORIES[category](rng, size)
    image = image * rng.uniform(0.92, 1.08)  # lighting variation
    mask = np.zeros((size, size), bool)
    if defect is not None:
        background = CATEGORIES[category](np.random.default_rng(key + [7]), size)[0]
        if category in ("washer", "chip"):
            background = np.full_like(image, 40.0)
        image, mask = _add_defect(rng, image, part, defect, background)
    image = image + rng.normal(0, 2.0, image.shape)  # sensor noise
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), mask


def write_mvtec_set(
    out: str | Path,
    jobs: list,
    render: Callable,
    overwrite: bool = False,
    progress: Callable | None = None,
    prefix: str = ".tmp-set-",
) -> Path:
    """Write ``render(category, split, index, defect) -> (image, mask)`` for every job into an
    MVTec-layout folder that appears only once complete (a temporary sibling, then a rename)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists", "choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    try:
        for cat, split, i, defect in progress(jobs) if progress else jobs:
            image, mask = render(cat, split, i, defect)
            write_image(tmp / cat / split / (defect or "good") / f"{i:03d}.png", image)
            if defect is not None:
                write_image(
                    tmp / cat / "ground_truth" / defect / f"{i:03d}_mask.png",
                    np.repeat(mask[:, :, None].astype(np.uint8) * 255, 3, axis=2),
                )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def generate_line_data(
    out: str | Path,
    categories: list[str] | None = None,
    n_train: int = LineDataSettings.n_train,
    n_test_good: int = LineDataSettings.n_test_good,
    n_test_per_defect: int = LineDataSettings.n_test_per_defect,
    size: int = LineDataSettings.size,
    seed: int = LineDataSettings.seed,
    overwrite: bool = False,
    progress=None,
) -> Path:
    """Write MVTec-layout line data; the folder appears only once complete."""
    categories = categories or sorted(CATEGORIES)
    for name in categories:
        if name not in CATEGORIES:
            raise ConfigError(
                f"unknown synthetic category {name!r}", f"choose from {sorted(CATEGORIES)}"
            )
    jobs = []
    for cat in categories:
        jobs += [(cat, "train", i, None) for i in range(n_train)]
        jobs += [(cat, "test", i, None) for i in range(n_test_good)]
        jobs += [(cat, "test", i, d) for d in DEFECTS for i in range(n_test_per_defect)]
    return write_mvtec_set(
        out,
        jobs,
        lambda cat, split, i, defect: make_image(cat, seed, split, i, size, defect),
        overwrite,
        progress,
        prefix=".tmp-line-",
    )
