"""An evaluation set cut from real photographs, in the MVTec AD layout.

The photographs are the ones scikit-image ships inside its wheel (``skimage/data``), so the
set can be rebuilt offline on any machine that can ``pip install scikit-image``. Three
surfaces (brick, grass, gravel) and one part (single coins cut from the coins photograph,
centred on their dark tray) are cut into crops. Training and test crops come from disjoint
parts of each photograph (the top and bottom of a surface; different coins for the part),
so a test crop never repeats pixels the model was trained on.

Five realistic defect kinds are painted onto test crops, each with its pixel mask:

- ``scratch``: a thin curved groove, dark core with a bright rim, fading along its length;
- ``stain``: a soft-edged blot that darkens and tints the surface (texture stays visible);
- ``foreign``: a piece of another photograph (cat fur, coffee, a rocket, a motorcycle) with
  an irregular outline, lying on the surface with a faint shadow;
- ``missing``: material broken out: a dark cavity with a shaded edge (on the part, the tray
  shows through);
- ``smudge``: a wiped area where the texture is blurred and brightened.

Every image is a pure function of ``(seed, category, split, index)``: the same call writes
byte-identical files.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError, DataError
from ..options import PhotoDataSettings
from ..registry import PHOTO_PARTS, PHOTO_SURFACES
from .synthetic import write_mvtec_set

SURFACES = PHOTO_SURFACES
PARTS = PHOTO_PARTS
CATEGORIES = SURFACES + PARTS
DEFECTS = ("scratch", "stain", "foreign", "missing", "smudge")
# photographs that foreign material is cut from (never one of the categories' own)
FOREIGN_SOURCES = (
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "astronaut.png",
)
CROP = 168  # side of a surface crop in photograph pixels before resizing
TRAIN_ROWS = 0.55  # surfaces: training crops from the top 55 % of the photograph, tests below
TEST_COINS = 8  # the part: the last 8 coins found (reading order) are kept for testing


def _photo_dir() -> Path:
    try:
        folder = resources.files("skimage") / "data"
    except ModuleNotFoundError as exc:
        raise DataError(
            "the photograph set needs scikit-image's shipped photographs",
            "pip install scikit-image",
        ) from exc
    return Path(str(folder))


def load_photo(name: str) -> np.ndarray:
    """An RGB uint8 photograph from scikit-image's data folder (grey photos replicated)."""
    path = _photo_dir() / name
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(
            f"photograph {name} not found in {path.parent.name}/",
            "reinstall scikit-image (pip install --force-reinstall scikit-image)",
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def coin_boxes(photo: np.ndarray) -> list[tuple[int, int, int]]:
    """(centre x, centre y, radius) of each coin in the coins photograph, in reading order."""
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    blur = cv2.GaussianBlur(gray, (0, 0), 2)
    _, binary = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    count, _, stats, centres = cv2.connectedComponentsWithStats(binary)
    coins = []
    for i in range(1, count):
        _, _, w, h, area = stats[i]
        if area < 600 or w > 3 * h or h > 3 * w:
            continue
        coins.append((int(centres[i][0]), int(centres[i][1]), int(max(w, h) / 2)))
    coins.sort(key=lambda c: (c[1] // 50, c[0]))  # rows of coins, left to right
    return coins


class _Sampler:
    """Draws good crops of one category from its photograph."""

    def __init__(self, category: str, size: int):
        self.category, self.size = category, size
        if category == "coin":
            self.photo = load_photo("coins.png")
            coins = [c for c in coin_boxes(self.photo) if self._fits(c)]
            if len(coins) <= TEST_COINS:
                raise DataError(
                    f"found only {len(coins)} coins in coins.png",
                    "the scikit-image photograph differs from the expected one",
                )
            self.coins = {"train": coins[:-TEST_COINS], "test": coins[-TEST_COINS:]}
        else:
            self.photo = load_photo(f"{category}.png")

    def _fits(self, coin) -> bool:
        x, y, r = coin
        half = int(r * 1.35) + 6
        h, w = self.photo.shape[:2]
        return half <= x < w - half and half <= y < h - half

    def good(self, rng: np.random.Generator, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A crop (float32 RGB, size x size) and the mask of where defects may go."""
        if self.category == "coin":
            x, y, r = self.coins[split][rng.integers(len(self.coins[split]))]
            half = r * 1.3
            angle = rng.uniform(0, 360)
            scale = self.size / (2 * half)
            cx, cy = x + rng.uniform(-2, 2), y + rng.uniform(-2, 2)
            matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
            matrix[:, 2] += (self.size / 2 - cx, self.size / 2 - cy)
            crop = cv2.warpAffine(
                self.photo,
                matrix,
                (self.size, self.size),
                flags=cv2.INTER_CUBIC,
                borderMode=cv2.BORDER_REFLECT,
            )
            yy, xx = np.mgrid[0 : self.size, 0 : self.size]
            allowed = np.hypot(xx - self.size / 2, yy - self.size / 2) < 0.7 * self.size / 2
        else:
            h, w = self.photo.shape[:2]
            split_row = int(h * TRAIN_ROWS)
            rows = (0, split_row - CROP) if split == "train" else (split_row, h - CROP)
            y0 = int(rng.integers(rows[0], rows[1] + 1))
            x0 = int(rng.integers(0, w - CROP + 1))
            crop = self.photo[y0 : y0 + CROP, x0 : x0 + CROP]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop = cv2.resize(
                np.ascontiguousarray(crop), (self.size, self.size), interpolation=cv2.INTER_CUBIC
            )
            allowed = np.zeros((self.size, self.size), bool)
            m = self.size // 8
            allowed[m:-m, m:-m] = True
        gain = rng.uniform(0.93, 1.07)
        return crop.astype(np.float32) * gain, allowed


def _soft_blob(rng, size: int, centre, radius: float, roughness: float = 0.35) -> np.ndarray:
    """A float mask in [0, 1]: an irregular blob with soft edges."""
    angles = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    radii = radius * (1 + roughness * rng.uniform(-1, 1, angles.size))
    pts = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
    hard = np.zeros((size, size), np.uint8)
    cv2.fillPoly(hard, [cv2.convexHull(pts.astype(np.float32)).astype(np.int32)], 1)
    # warp the outline with smooth noise so it is not a polygon
    noise = cv2.GaussianBlur(
        rng.standard_normal((size, size)).astype(np.float32), (0, 0), radius / 3 + 1
    )
    noise /= noise.std() + 1e-6
    dist = cv2.distanceTransform(hard, cv2.DIST_L2, 5) - cv2.distanceTransform(
        1 - hard, cv2.DIST_L2, 5
    )
    return np.clip((dist + 0.25 * radius * noise) / 2.0 + 0.5, 0, 1)


def _scratch(rng, image, centre, scale):
    size = image.shape[0]
    length = rng.uniform(50, 110) * scale
    angle, bend = rng.uniform(0, np.pi), rng.uniform(-0.6, 0.6)
    t = np.linspace(-0.5, 0.5, 40)
    pts = np.stack(
        [
            centre[0] + length * t * np.cos(angle + bend * t),
            centre[1] + length * t * np.sin(angle + bend * t),
        ],
        1,
    ).astype(np.int32)
    width = max(2, int(rng.uniform(2, 4) * scale))
    core = np.zeros((size, size), np.float32)
    cv2.polylines(core, [pts], False, 1.0, width, cv2.LINE_AA)
    rim = cv2.GaussianBlur(core, (0, 0), width) - core
    fade = np.clip(cv2.GaussianBlur(core, (0, 0), length / 4) * 6, 0.4, 1)
    depth = rng.uniform(0.45, 0.7)
    image *= (1 - depth * core * fade)[:, :, None]
    image += (rim.clip(0, 1) * 70 * fade)[:, :, None]
    return core * fade > 0.3


def _stain(rng, image, centre, scale):
    alpha = _soft_blob(rng, image.shape[0], centre, rng.uniform(12, 24) * scale)
    tint = np.asarray(
        [[0.55, 0.42, 0.30], [0.35, 0.38, 0.42], [0.75, 0.55, 0.25]][rng.integers(3)], np.float32
    )
    image[:] = image * (1 - 0.75 * alpha[:, :, None]) + image * tint * 0.75 * alpha[:, :, None]
    return alpha > 0.35


def _foreign(rng, image, centre, scale, foreign: np.ndarray):
    size = image.shape[0]
    alpha = _soft_blob(rng, size, centre, rng.uniform(10, 20) * scale, roughness=0.5)
    alpha = np.where(alpha > 0.5, 1.0, alpha * 2 * (alpha > 0.3)).astype(np.float32)
    fh, fw = foreign.shape[:2]
    y0, x0 = rng.integers(0, fh - size // 2), rng.integers(0, fw - size // 2)
    patch = cv2.resize(foreign[y0 : y0 + size // 2, x0 : x0 + size // 2], (size, size)).astype(
        np.float32
    )
    shadow = np.roll(cv2.GaussianBlur(alpha, (0, 0), 3), (4, 4), axis=(0, 1)) * 0.35
    image *= (1 - shadow)[:, :, None]
    image[:] = image * (1 - alpha[:, :, None]) + patch * alpha[:, :, None]
    return alpha > 0.5


def _missing(rng, image, centre, scale, tray: float | None):
    alpha = _soft_blob(rng, image.shape[0], centre, rng.uniform(10, 20) * scale)
    hole = (alpha > 0.5).astype(np.float32)
    if tray is None:  # a surface: a dark cavity whose far edge catches light
        edge = cv2.GaussianBlur(hole, (0, 0), 3) - hole
        inner = image.mean() * 0.25
        image[:] = image * (1 - hole[:, :, None]) + inner * hole[:, :, None]
        image += (np.roll(edge.clip(0, 1), (-3, -3), axis=(0, 1)) * 60)[:, :, None]
    else:  # the part: the dark tray shows through, with its grain
        grain = tray + 4 * rng.standard_normal(image.shape[:2]).astype(np.float32)
        image[:] = image * (1 - hole[:, :, None]) + grain[:, :, None] * hole[:, :, None]
    return hole > 0


def _smudge(rng, image, centre, scale):
    alpha = _soft_blob(rng, image.shape[0], centre, rng.uniform(16, 28) * scale)
    smeared = cv2.GaussianBlur(image, (0, 0), 5 * scale) * 1.15 + 12
    image[:] = image * (1 - alpha[:, :, None]) + smeared * alpha[:, :, None]
    return alpha > 0.45


def _add_defect(
    rng, image: np.ndarray, allowed: np.ndarray, kind: str, foreign: np.ndarray, tray: float | None
) -> np.ndarray:
    size = image.shape[0]
    ys, xs = np.nonzero(allowed)
    i = rng.integers(len(ys))
    centre = (float(xs[i]), float(ys[i]))
    scale = size / 256
    if kind == "scratch":
        mask = _scratch(rng, image, centre, scale)
    elif kind == "stain":
        mask = _stain(rng, image, centre, scale)
    elif kind == "foreign":
        mask = _foreign(rng, image, centre, scale, foreign)
    elif kind == "missing":
        mask = _missing(rng, image, centre, scale, tray)
    elif kind == "smudge":
        mask = _smudge(rng, image, centre, scale)
    else:
        raise ConfigError(f"unknown defect kind {kind!r}", f"choose one of {list(DEFECTS)}")
    return mask


def make_photo_image(
    category: str,
    seed: int,
    split: str,
    index: int,
    size: int = 256,
    defect: str | None = None,
    _cache: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 crop and its bool mask (all False for a good image)."""
    if category not in CATEGORIES:
        raise ConfigError(
            f"unknown photograph category {category!r}", f"choose one of {list(CATEGORIES)}"
        )
    cache = _cache if _cache is not None else {}
    sampler = cache.get((category, size)) or cache.setdefault(
        (category, size), _Sampler(category, size)
    )
    key = [
        seed,
        CATEGORIES.index(category),
        ("train", "test").index(split),
        index,
        DEFECTS.index(defect) + 1 if defect else 0,
    ]
    rng = np.random.default_rng(key)
    image, allowed = sampler.good(rng, split)
    mask = np.zeros((size, size), bool)
    if defect is not None:
        name = FOREIGN_SOURCES[int(rng.integers(len(FOREIGN_SOURCES)))]
        foreign = cache.get(name)
        if foreign is None:
            foreign = cache.setdefault(name, load_photo(name))
        tray = float(np.median(image[~allowed])) if category == "coin" else None
        mask = _add_defect(rng, image, allowed, defect, foreign, tray)
    image = image + rng.normal(0, 1.5, image.shape)  # sensor noise
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), mask


def build_photo_set(
    out: str | Path,
    categories: list[str] | None = None,
    n_train: int = PhotoDataSettings.n_train,
    n_test_good: int = PhotoDataSettings.n_test_good,
    n_test_defect: int = PhotoDataSettings.n_test_defect,
    size: int = PhotoDataSettings.size,
    seed: int = PhotoDataSettings.seed,
    overwrite: bool = False,
    progress: Callable | None = None,
) -> Path:
    """Write the MVTec-layout photograph set; the folder appears only once complete.

    ``n_test_defect`` defective crops per category are spread evenly over the five kinds.
    """
    categories = list(categories or CATEGORIES)
    for name in categories:
        if name not in CATEGORIES:
            raise ConfigError(
                f"unknown photograph category {name!r}", f"choose from {list(CATEGORIES)}"
            )
    jobs = []
    for cat in categories:
        jobs += [(cat, "train", i, None) for i in range(n_train)]
        jobs += [(cat, "test", i, None) for i in range(n_test_good)]
        jobs += [(cat, "test", i, DEFECTS[i % len(DEFECTS)]) for i in range(n_test_defect)]
    cache: dict = {}

    def render(cat: str, split: str, i: int, defect: str | None):
        return make_photo_image(cat, seed, split, i, size, defect, cache)

    return write_mvtec_set(out, jobs, render, overwrite, progress, prefix=".tmp-photos-")
