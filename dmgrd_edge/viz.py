"""Drawing helpers shared by evaluation and the runtime (torch-free)."""

from __future__ import annotations

import cv2
import numpy as np


def heat_overlay(
    rgb: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float, alpha: float = 0.45
) -> np.ndarray:
    """Blend a JET heat map of ``anomaly_map`` (scaled to [vmin, vmax]) over an RGB image."""
    h, w = rgb.shape[:2]
    amap = anomaly_map if anomaly_map.shape == (h, w) else cv2.resize(anomaly_map, (w, h))
    scaled = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    return (rgb.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)


def draw_contour(rgb: np.ndarray, mask: np.ndarray, colour=(0, 255, 0)) -> np.ndarray:
    out = np.ascontiguousarray(rgb.copy())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, 1)
    return out


def put_label(
    rgb: np.ndarray,
    text: str,
    colour=(255, 255, 255),
    at: tuple[int, int] = (4, 14),
    scale: float = 0.4,
    thickness: int = 1,
    copy: bool = True,
) -> np.ndarray:
    """``text`` at ``at`` in ``colour``, outlined in black so it reads on any background
    (on a copy unless ``copy`` is False)."""
    out = np.ascontiguousarray(rgb.copy()) if copy else rgb
    for ink, width in (((0, 0, 0), thickness + 2), (colour, thickness)):
        cv2.putText(out, text, at, cv2.FONT_HERSHEY_SIMPLEX, scale, ink, width, cv2.LINE_AA)
    return out
