"""Decision and defect regions from the model's outputs (numpy + OpenCV, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dmgrd_edge.viz import heat_overlay, put_label

from .decision import is_ng


@dataclass
class Region:
    x: int
    y: int
    w: int
    h: int
    area: int
    peak: float

    def as_dict(self) -> dict:
        return {
            "box": [self.x, self.y, self.w, self.h],
            "area": self.area,
            "peak": round(self.peak, 5),
        }


def regions(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    scale: tuple[float, float] = (1.0, 1.0),
    min_area: int = 4,
) -> list[Region]:
    """Connected components of map > threshold: box (in frame pixels), area, peak value."""
    mask = (anomaly_map > pixel_threshold).astype(np.uint8)
    if not mask.any():
        return []
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    found = []
    sx, sy = scale
    for label in range(1, count):
        x, y, w, h, area = boxes[label]
        if area < min_area:
            continue
        box = (slice(y, y + h), slice(x, x + w))  # the peak search stays inside the box
        peak = float(anomaly_map[box][labels[box] == label].max())
        found.append(
            Region(
                int(x * sx),
                int(y * sy),
                max(1, int(w * sx)),
                max(1, int(h * sy)),
                int(area * sx * sy),
                peak,
            )
        )
    return sorted(found, key=lambda r: r.peak, reverse=True)


def draw(
    frame: np.ndarray,
    anomaly_map: np.ndarray,
    score: float,
    threshold: float,
    found: list[Region],
    vmax: float | None = None,
) -> np.ndarray:
    """Heat-map overlay with the decision, score and region boxes, at frame size."""
    h, w = frame.shape[:2]
    top = vmax if vmax is not None else max(threshold * 1.5, 1e-6)
    out = heat_overlay(frame, cv2.resize(anomaly_map, (w, h)), 0.0, top)
    ng = is_ng(score, threshold)
    colour = (255, 40, 40) if ng else (40, 220, 40)
    for r in found:
        cv2.rectangle(out, (r.x, r.y), (r.x + r.w, r.y + r.h), colour, 2)
    text = f"{'NG' if ng else 'OK'} {score:.3f}"
    put_label(out, text, colour, at=(8, 24), scale=0.7, thickness=2, copy=False)
    return out
