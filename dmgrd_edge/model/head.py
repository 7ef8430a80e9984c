"""Anomaly map and image score from teacher and student features.

A = sum_l up(1 - cos_channel(F_l, S_l)), Gaussian blur (sigma 4), score = mean of the k
largest map values (the authors') or the max (RD). The blur is a separable convolution
with zero padding divided by the blurred all-ones image (a constant buffer), which equals
a normalised blur at the borders and exports as plain Conv and Mul.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = int(math.ceil(4.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


class AnomalyMapHead(nn.Module):
    def __init__(self, image_size: int, sigma: float, score_mode: str, topk: int):
        super().__init__()
        self.image_size = image_size
        self.score_mode = score_mode
        self.topk = min(topk, image_size * image_size)
        self.sigma = sigma
        if sigma > 0:
            kernel = gaussian_kernel1d(sigma)
            self.pad = kernel.numel() // 2
            self.register_buffer("kernel_h", kernel.view(1, 1, 1, -1), persistent=False)
            self.register_buffer("kernel_v", kernel.view(1, 1, -1, 1), persistent=False)
            ones = torch.ones(1, 1, image_size, image_size)
            self.register_buffer("inv_norm", 1.0 / self._blur_raw(ones), persistent=False)

    def _blur_raw(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.kernel_h, padding=(0, self.pad))
        return F.conv2d(x, self.kernel_v, padding=(self.pad, 0))

    def anomaly_map(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for t, s in zip(teacher, student):
            distance = 1.0 - F.cosine_similarity(t, s, dim=1).unsqueeze(1)
            total = total + F.interpolate(distance, size=(self.image_size, self.image_size),
                                          mode="bilinear", align_corners=True)
        if self.sigma > 0:
            total = self._blur_raw(total) * self.inv_norm
        return total

    def forward(self, teacher: list[torch.Tensor], student: list[torch.Tensor]):
        """(anomaly_map, score); a module call so exported nodes sit under ``/head/``."""
        anomaly_map = self.anomaly_map(teacher, student)
        return anomaly_map, self.score(anomaly_map)

    def score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        flat = anomaly_map.flatten(1)
        if self.score_mode == "max":
            return flat.amax(dim=1)
        return flat.topk(self.topk, dim=1).values.mean(dim=1)
