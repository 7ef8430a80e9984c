"""Pseudo-anomaly synthesis, numpy-only, in the core: training and INT8 calibration (which
runs torch-free, on the Jetson too) both use it.

Mask: Perlin noise at scale 2^a x 2^b (a, b uniform in 0..5), rotated by a random angle in
[-90, 90] degrees, thresholded at 0.5 (DRAEM's recipe). Source: a texture image from a
folder (e.g. DTD) when given, otherwise a procedural texture or another training image.
The source is mixed into the image's Fourier amplitude (image phase kept, a central
low-frequency square of the amplitude mixed with weight lambda ~ U(0, 1)), then blended
under the mask with transparency beta: x(1-M) + (1-beta) A M + beta x M.
The numbers (beta's range, the chances of the Fourier mix and of another training image)
are ``SynthesisConfig`` (dmgrd_edge/config.py), set with `train --synthesis KEY=VALUE` and
stored in the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dmgrd_edge.config import SynthesisConfig
from dmgrd_edge.data.imageio import IMAGE_SUFFIXES, read_image
from dmgrd_edge.errors import DataError


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(
    height: int, width: int, res_y: int, res_x: int, rng: np.random.Generator
) -> np.ndarray:
    """2D gradient noise in about [-0.7, 0.7] with res_y x res_x lattice cells."""
    angles = rng.uniform(0, 2 * np.pi, (res_y + 1, res_x + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys = np.linspace(0, res_y, height, endpoint=False)
    xs = np.linspace(0, res_x, width, endpoint=False)
    yi, xi = np.floor(ys).astype(int), np.floor(xs).astype(int)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grad[yi[:, None] + dy, xi[None, :] + dx]
        return g[..., 0] * (yf - dy) + g[..., 1] * (xf - dx)

    u, v = _fade(xf), _fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (top * (1 - v) + bottom * v).astype(np.float32)


def perlin_mask(
    height: int, width: int, rng: np.random.Generator, threshold: float = 0.5, tries: int = 20
) -> np.ndarray:
    """A non-empty bool mask (retries with new noise when the threshold leaves nothing)."""
    for _ in range(tries):
        noise = perlin_noise(
            height, width, 2 ** int(rng.integers(0, 6)), 2 ** int(rng.integers(0, 6)), rng
        )
        angle = rng.uniform(-90, 90)
        rotation = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        noise = cv2.warpAffine(noise, rotation, (width, height), borderMode=cv2.BORDER_REFLECT)
        mask = noise > threshold
        if mask.any():
            return mask
    mask = np.zeros((height, width), bool)
    cy, cx = (
        int(rng.integers(height // 4, 3 * height // 4)),
        int(rng.integers(width // 4, 3 * width // 4)),
    )
    mask[cy - height // 16 : cy + height // 16, cx - width // 16 : cx + width // 16] = True
    return mask


def procedural_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random colourful texture (stripes, blobs, noise) as RGB uint8."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = int(rng.integers(3))
    if kind == 0:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
        base = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    elif kind == 1:
        base = perlin_noise(height, width, 8, 8, rng) * 2
    else:
        base = cv2.GaussianBlur(
            rng.standard_normal((height, width)).astype(np.float32), (0, 0), rng.uniform(0.5, 3)
        )
        base /= base.std() + 1e-6
    colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    t = np.clip(base * 0.5 + 0.5, 0, 1)[..., None]
    return (colours[0] * (1 - t) + colours[1] * t).astype(np.uint8)


def fourier_amplitude_mix(
    image: np.ndarray, source: np.ndarray, lam: float, ratio: float = 0.1
) -> np.ndarray:
    """Replace a central low-frequency square of the image's amplitude spectrum by
    lam * source + (1 - lam) * image, keeping the image's phase."""
    img = image.astype(np.float32)
    src = source.astype(np.float32)
    fft_img = np.fft.fft2(img, axes=(0, 1))
    fft_src = np.fft.fft2(src, axes=(0, 1))
    amp_img, phase = np.abs(fft_img), np.angle(fft_img)
    amp_img = np.fft.fftshift(amp_img, axes=(0, 1))
    amp_src = np.fft.fftshift(np.abs(fft_src), axes=(0, 1))
    h, w = img.shape[:2]
    b = max(1, int(min(h, w) * ratio))
    cy, cx = h // 2, w // 2
    window = (slice(cy - b, cy + b + 1), slice(cx - b, cx + b + 1))
    amp_img[window] = lam * amp_src[window] + (1 - lam) * amp_img[window]
    amp_img = np.fft.ifftshift(amp_img, axes=(0, 1))
    mixed = np.fft.ifft2(amp_img * np.exp(1j * phase), axes=(0, 1)).real
    return np.clip(mixed, 0, 255)


class AnomalySynthesizer:
    """Turns normal RGB uint8 images into pseudo-anomalous ones with their masks."""

    def __init__(
        self,
        height: int,
        width: int,
        texture_dir: str | Path | None = None,
        config: SynthesisConfig | None = None,
        max_textures: int = 200,
    ):
        self.height, self.width = height, width
        self.config = config or SynthesisConfig()
        self.textures: list[np.ndarray] = []
        if texture_dir is not None:
            folder = Path(texture_dir)
            files = (
                sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
                if folder.is_dir()
                else []
            )
            if not files:
                raise DataError(
                    f"no texture images found in {folder}",
                    "give a folder of images (e.g. DTD's images/) or leave --texture-dir out "
                    "to use procedural textures",
                )
            self.textures = [
                cv2.resize(read_image(p), (width, height)) for p in files[:max_textures]
            ]

    @property
    def source_kind(self) -> str:
        return "texture folder" if self.textures else "procedural textures + other training images"

    def _source(self, rng: np.random.Generator, pool: np.ndarray | None) -> np.ndarray:
        if self.textures:
            return self.textures[int(rng.integers(len(self.textures)))]
        if (
            pool is not None
            and len(pool) > 1
            and rng.random() < self.config.other_image_probability
        ):
            return np.ascontiguousarray(
                np.rot90(pool[int(rng.integers(len(pool)))], int(rng.integers(4)))
            )
        return procedural_texture(self.height, self.width, rng)

    def __call__(
        self, image: np.ndarray, rng: np.random.Generator, pool: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        mask = perlin_mask(self.height, self.width, rng)
        source = self._source(rng, pool).astype(np.float32)
        if rng.random() < self.config.fourier_probability:
            source = fourier_amplitude_mix(image, source, float(rng.uniform(0, 1)))
        beta = float(rng.uniform(*self.config.beta_range))
        m = mask[..., None].astype(np.float32)
        x = image.astype(np.float32)
        out = x * (1 - m) + (1 - beta) * source * m + beta * x * m
        return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask
