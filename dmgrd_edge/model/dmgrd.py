"""DM-GRD: frozen teacher, dual memory banks, MSFF, OCBE, student decoder, map head.

``forward(image)`` is the deployment path (normal bank only) and returns an
``AnomalyOutput`` NamedTuple whose field names become the ONNX output names.
``training_features(image)`` is the separate training path (both banks).
With ``use_memory=False`` the memory/MSFF path is skipped: plain Reverse Distillation,
the ablation the reports compare against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..config import ModelConfig
from .backbones import create_teacher
from .head import AnomalyMapHead
from .memory import MemoryBank
from .msff import MSFF
from .pruning import apply_widths
from .student import OCBE, StudentDecoder


class AnomalyOutput(NamedTuple):
    anomaly_map: torch.Tensor  # [B, 1, H, W]
    score: torch.Tensor  # [B]


class TrainingFeatures(NamedTuple):
    teacher: list[torch.Tensor]
    student: list[torch.Tensor]
    fused_normal: list[torch.Tensor] | None
    fused_abnormal: list[torch.Tensor] | None


class DMGRD(nn.Module):
    def __init__(self, config: ModelConfig, pretrained: bool = True, teacher_weights: str | None = None):
        super().__init__()
        self.config = config
        self.teacher, self.teacher_source = create_teacher(config.backbone, pretrained, teacher_weights)
        spec = self.teacher.spec
        self.spec = spec
        shapes = tuple((config.image_size // s, config.image_size // s) for s in spec.strides)
        if config.use_memory:
            scale = config.scale_memory_inputs
            self.normal_memory = MemoryBank(config.memory_size, spec.channels, shapes, scale)
            self.abnormal_memory = MemoryBank(config.memory_size, spec.channels, shapes, scale)
            self.msff = MSFF(spec.channels)
        self.bottleneck = OCBE(spec)
        self.student = StudentDecoder(spec)
        self.head = AnomalyMapHead(config.image_size, config.blur_sigma, config.score_mode, config.score_topk)
        if config.pruned_widths:
            apply_widths(self, config.pruned_widths)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher is frozen, BatchNorm statistics included
        return self

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("teacher.")]

    @torch.no_grad()
    def teacher_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.teacher(image)

    def _fuse(self, features: list[torch.Tensor], bank: MemoryBank) -> list[torch.Tensor]:
        memory_inputs, _ = bank(features, self.config.selection)
        return self.msff(memory_inputs)

    def training_features(self, image: torch.Tensor) -> TrainingFeatures:
        teacher = self.teacher_features(image)
        if not self.config.use_memory:
            return TrainingFeatures(teacher, self.student(self.bottleneck(teacher)), None, None)
        fused_normal = self._fuse(teacher, self.normal_memory)
        fused_abnormal = self._fuse(teacher, self.abnormal_memory)
        student = self.student(self.bottleneck(fused_normal))
        return TrainingFeatures(teacher, student, fused_normal, fused_abnormal)

    def forward(self, image: torch.Tensor) -> AnomalyOutput:
        teacher = self.teacher(image)
        guided = self._fuse(teacher, self.normal_memory) if self.config.use_memory else teacher
        student = self.student(self.bottleneck(guided))
        return AnomalyOutput(*self.head(teacher, student))

    @torch.no_grad()
    def fill_memory(self, normal: torch.Tensor, abnormal: torch.Tensor, chunk: int = 8) -> None:
        """Fill both banks from K normal images and their pseudo-anomalous versions."""
        if not self.config.use_memory:
            return
        for bank, images in ((self.normal_memory, normal), (self.abnormal_memory, abnormal)):
            parts = [self.teacher(images[i:i + chunk]) for i in range(0, len(images), chunk)]
            bank.fill([torch.cat([p[level] for p in parts]) for level in range(3)])

    def memory_bytes(self) -> int:
        if not self.config.use_memory:
            return 0
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers() if "memory" in n)
