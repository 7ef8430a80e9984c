"""Reading images and masks consistently: always RGB uint8 HxWx3, masks bool HxW.

Grayscale is replicated to three channels, RGBA drops alpha, 16-bit is scaled to 8-bit
(value / 257, so 65535 -> 255). Truncated PNG and JPEG files are detected before decoding:
OpenCV would otherwise return a partially grey image without an error.

Decode limit: an image of more than ``max_pixels()`` pixels (default 8192 x 8192, set with
the environment variable DMGRD_EDGE_MAX_PIXELS) is refused before it is decoded, from the
size in its header (PNG's IHDR; other formats through Pillow's lazy open, which reads
only the header), so that a small file that
claims a huge size (a 25000 x 25000 PNG of one colour is 600 KB) cannot take gigabytes.
Formats whose header Pillow does not read are checked right after decoding.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError, DataError

MAX_PIXELS_ENV = "DMGRD_EDGE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 8192 * 8192


def max_pixels() -> int:
    """The largest image or frame, in pixels, that is decoded (DMGRD_EDGE_MAX_PIXELS)."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(
            f"{MAX_PIXELS_ENV}={text!r} is not a whole number >= 1",
            f"set it to the largest pixel count to decode, or unset it for the default "
            f"{DEFAULT_MAX_PIXELS} (8192 x 8192)",
        )
    return value


def check_pixels(what: str, width: int, height: int) -> None:
    """A DataError if a ``width`` x ``height`` image or frame is above the decode limit."""
    limit = max_pixels()
    if width * height > limit:
        raise DataError(
            f"{what} is {width} x {height} = {width * height} pixels, more than the decode "
            f"limit of {limit}: refused without decoding it",
            f"use a smaller image, or raise the limit with {MAX_PIXELS_ENV}=N if this "
            f"machine has the memory (default {DEFAULT_MAX_PIXELS}, 8192 x 8192)",
        )


def _header_size(path: Path, data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file's header without decoding it; None where the format's
    header is not read here."""
    from PIL import Image

    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":  # its first chunk
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as header:  # lazy: reads the header only
                return header.size
        except Image.DecompressionBombError:
            # Pillow's own bound (2 x Image.MAX_IMAGE_PIXELS): beyond ours unless raised above
            bound = 2 * (Image.MAX_IMAGE_PIXELS or 0)
            if bound and bound < max_pixels():
                return None  # the check after decoding decides
            raise DataError(
                f"{path} has more than {bound} pixels by its header, more than the decode "
                f"limit of {max_pixels()}: refused without decoding it",
                f"use a smaller image (the limit is set with {MAX_PIXELS_ENV})",
            ) from None
        except Exception:  # a header Pillow does not read: the check after decoding decides
            return None


def _check_header_size(path: Path, data: bytes) -> None:
    size = _header_size(path, data)
    if size is not None:
        check_pixels(str(path), *size)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_PNG_END = b"IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"


def _check_complete(path: Path, data: bytes) -> None:
    suffix = path.suffix.lower()
    if suffix == ".png" and not data.rstrip(b"\x00").endswith(_PNG_END):
        raise DataError(
            f"truncated PNG file: {path}",
            "the file ends before its IEND chunk; re-copy it or remove it from the dataset",
        )
    if suffix in (".jpg", ".jpeg") and _JPEG_END not in data[-64:]:
        raise DataError(
            f"truncated JPEG file: {path}",
            "the file ends before its end-of-image marker; re-copy it or remove it",
        )


def _decode(path: Path, flags: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}", "check the dataset root and layout")
    data = path.read_bytes()
    if not data:
        raise DataError(f"empty image file: {path}", "re-copy the file or remove it")
    _check_complete(path, data)
    _check_header_size(path, data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise DataError(
            f"cannot decode image: {path}",
            f"the file is corrupt or not an image; supported: {', '.join(IMAGE_SUFFIXES)}",
        )
    check_pixels(str(path), image.shape[1], image.shape[0])
    return image


def to_rgb8(image: np.ndarray, bgr: bool = True) -> np.ndarray:
    """Convert any decoded array (gray, BGR, BGRA; 8 or 16 bit) to RGB uint8 HxWx3."""
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"unsupported image dtype {image.dtype}", "use 8- or 16-bit images")
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels not in (1, 3, 4):
        raise DataError(f"unsupported channel count {channels}", "use gray, RGB or RGBA images")
    # OpenCV's conversions: the same bytes as numpy's channel slicing and reversal, without
    # numpy's strided copy, which is many times slower on every frame at the line
    image = np.ascontiguousarray(image)
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3)."""
    return to_rgb8(_decode(Path(path), cv2.IMREAD_UNCHANGED))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as bool (H, W): any non-zero pixel is anomalous."""
    mask = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return mask > 0


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header where the format allows."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image not found: {path}", "check the dataset root and layout") from None
    size = _header_size(path, data)
    if size is None:
        image = _decode(path, cv2.IMREAD_UNCHANGED)
        size = image.shape[1], image.shape[0]
    return size


def read_mask_of(mask_path: str | Path, image_path: str | Path) -> np.ndarray:
    """The mask of an image, which must have the image's size: a mask of another size is
    another image's (or a resized copy) and would mark the wrong pixels if stretched."""
    mask = read_mask(mask_path)
    width, height = image_size(image_path)
    if mask.shape != (height, width):
        raise DataError(
            f"the mask {mask_path} is {mask.shape[1]} x {mask.shape[0]} pixels but its image "
            f"{image_path} is {width} x {height}",
            "give each image its own mask at the same size (masks are not resized to fit)",
        )
    return mask


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image; the parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise DataError(f"cannot encode image for {path}")
    path.write_bytes(buf.tobytes())
