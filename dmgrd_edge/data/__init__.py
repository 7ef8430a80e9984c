"""Torch-free data layer: image reading, the one `preprocess`, dataset indexing, line data,
pseudo-anomaly synthesis."""

from .imageio import read_image, read_mask
from .preprocess import preprocess, resize_mask

__all__ = ["read_image", "read_mask", "preprocess", "resize_mask"]
