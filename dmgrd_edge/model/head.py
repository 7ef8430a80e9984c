"""Anomaly map and image score from teacher and student features.

A = sum_l up(1 - cos_channel(F_l, S_l)), Gaussian blur (sigma 4), score = mean of the k
largest map values (the authors') or the max (RD). The blur is a separable convolution
with zero padding divided by the blurred all-ones image (a constant buffer), which equals
a normalised blur at the borders and exports as plain Conv and Mul.

Each 1-D pass runs as a depthwise convolution with one channel per image row (then per
column, after a transpose) instead of a single-channel convolution: the same sums, but ONNX
Runtime's CPU provider pads a single-channel convolution to a 16-channel block and so did
16x the work (``benchmarks/ort_profile.py --nodes`` listed the two blur convolutions among
the slowest float nodes of the INT8 model).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .msff import resize_to


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = int(math.ceil(4.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


class AnomalyMapHead(nn.Module):
    def __init__(
        self,
        image_size: int,
        sigma: float,
        score_mode: str,
        topk: int,
        combined: bool = False,
        score_from_student: bool = False,
        choose_score: bool = False,
    ):
        super().__init__()
        # combined maps only: the image score reads the student's weighted share of the map
        self.score_from_student = combined and score_from_student
        # combined maps only: a stored flag says which of the two scores is the image score
        # (1: the student's share), set on validation pseudo-anomalies (train/loop.py)
        self.choose_score = combined and choose_score
        if self.choose_score:
            self.register_buffer("student_score", torch.zeros(()))
        if combined:  # weights of the student's and the memory's maps (set on validation normals)
            self.register_buffer("map_weights", torch.full((2,), 0.5))
        self.image_size = image_size
        self.score_mode = score_mode
        self.topk = min(topk, image_size * image_size)
        self.sigma = sigma
        if sigma > 0:
            kernel = gaussian_kernel1d(sigma)
            self.pad = kernel.numel() // 2
            self.register_buffer(
                "kernel_rows",
                kernel.view(1, 1, 1, -1).repeat(image_size, 1, 1, 1),
                persistent=False,
            )
            ones = torch.ones(1, 1, image_size, image_size)
            self.register_buffer("inv_norm", 1.0 / self._blur_raw(ones), persistent=False)

    def _blur_raw(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S] -> the same, blurred along rows, then along columns (zero padding)."""
        size = self.image_size
        rows = F.conv2d(
            x.reshape(-1, size, 1, size), self.kernel_rows, padding=(0, self.pad), groups=size
        )
        cols = rows.reshape(-1, size, size).transpose(1, 2).reshape(-1, size, 1, size)
        cols = F.conv2d(cols, self.kernel_rows, padding=(0, self.pad), groups=size)
        return cols.reshape(-1, size, size).transpose(1, 2).reshape(-1, 1, size, size)

    def distance_map(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor]
    ) -> torch.Tensor:
        """sum_l up(1 - cos(F_l, S_l)) at image size, before the blur."""
        total = 0.0
        for t, s in zip(teacher, student):
            distance = 1.0 - F.cosine_similarity(t, s, dim=1).unsqueeze(1)
            total = total + resize_to(distance, self.image_size, self.image_size)
        return total

    def anomaly_map(
        self,
        teacher: list[torch.Tensor],
        student: list[torch.Tensor] | None,
        memory_map: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if student is None:
            total = memory_map
        elif memory_map is None:
            total = self.distance_map(teacher, student)
        else:
            total = (
                self.distance_map(teacher, student) * self.map_weights[0]
                + memory_map * self.map_weights[1]
            )
        return self.blur(total)

    def blur(self, total: torch.Tensor) -> torch.Tensor:
        return self._blur_raw(total) * self.inv_norm if self.sigma > 0 else total

    def shares(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor], memory_map: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(combined map, the student's blurred share of it). The blur is linear: blurring each
        weighted share and adding them gives the combined map (up to rounding)."""
        student_share = self.blur(self.distance_map(teacher, student) * self.map_weights[0])
        return student_share + self.blur(memory_map * self.map_weights[1]), student_share

    def student_share_score(self, student_share: torch.Tensor) -> torch.Tensor:
        """The image score from the student's share, on the map's scale (each share weighs 0.5
        on the validation normals, so the share doubled)."""
        return self.score(student_share * 2.0)

    def both_scores(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor], memory_map: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(combined map, the map's image score, the student's share's image score): what a
        model that chooses its rule weighs on validation, from one forward pass."""
        anomaly_map, student_share = self.shares(teacher, student, memory_map)
        return anomaly_map, self.score(anomaly_map), self.student_share_score(student_share)

    def fix_image_score(self) -> str | None:
        """Turn a stored choice into the fixed rule it names (the deployment rewrite): the
        head then computes only that rule's score. Returns the rule, None without a choice."""
        if not self.choose_score:
            return None
        self.score_from_student, self.choose_score = self.reads_student(), False
        return "student" if self.score_from_student else "map"

    def reads_student(self) -> bool:
        """Whether the image score is the student's share's: fixed so, or chosen so."""
        return self.score_from_student or (self.choose_score and float(self.student_score) > 0.5)

    def forward(
        self,
        teacher: list[torch.Tensor],
        student: list[torch.Tensor] | None,
        memory_map: torch.Tensor | None = None,
    ):
        """(anomaly_map, score); a module call so exported nodes sit under ``/head/``."""
        split = self.score_from_student or self.choose_score
        if split and student is not None and memory_map is not None:
            anomaly_map, student_share = self.shares(teacher, student, memory_map)
            if self.reads_student():
                return anomaly_map, self.student_share_score(student_share)
            return anomaly_map, self.score(anomaly_map)
        anomaly_map = self.anomaly_map(teacher, student, memory_map)
        return anomaly_map, self.score(anomaly_map)

    def score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        flat = anomaly_map.flatten(1)
        if self.score_mode == "max":
            return flat.amax(dim=1)
        return flat.topk(self.topk, dim=1).values.mean(dim=1)
