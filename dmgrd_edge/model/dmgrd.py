"""DM-GRD: frozen teacher, dual memory banks, MSFF, OCBE, student decoder, map head.

``forward(image)`` is the deployment path (normal bank only) and returns an
``AnomalyOutput`` NamedTuple whose field names become the ONNX output names.
``training_features(image)`` is the separate training path (both banks).
With ``use_memory=False`` the memory/MSFF path is skipped: plain Reverse Distillation,
the ablation the reports compare against. With ``method="knn"`` there is no student at all:
the teacher and the patch memory make the training-free nearest-neighbour baseline.

The forward pass is three named steps that the FP16 export reuses as they are:
``guide`` (what the bottleneck sees), ``decode`` (bottleneck and student) and ``outputs``
(the head on the student's and the memory's distance maps).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..config import ModelConfig
from .backbones import create_teacher
from .channels import apply_widths
from .head import AnomalyMapHead
from .memory import MemoryBank
from .msff import MSFF, LinearFusion
from .patch_memory import PatchMemory
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
    def __init__(
        self, config: ModelConfig, pretrained: bool = True, teacher_weights: str | None = None
    ):
        super().__init__()
        self.config = config
        self.teacher, self.teacher_source = create_teacher(
            config.backbone, pretrained, teacher_weights
        )
        spec = self.teacher.spec
        self.spec = spec
        shapes = tuple((config.image_size // s, config.image_size // s) for s in spec.strides)
        if config.uses_patch_memory:
            self.patch_memory = PatchMemory(config.patch_bank_size, spec.channels)
        if config.uses_student:
            if config.use_memory:
                scale = config.scale_memory_inputs
                if config.memory_read == "image":
                    self.normal_memory = MemoryBank(
                        config.memory_size, spec.channels, shapes, scale
                    )
                self.abnormal_memory = MemoryBank(config.memory_size, spec.channels, shapes, scale)
                fusion = MSFF if config.fusion == "msff" else LinearFusion
                self.msff = fusion(spec.channels)
            self.bottleneck = OCBE(spec)
            self.student = StudentDecoder(spec)
        self.head = AnomalyMapHead(
            config.image_size,
            config.blur_sigma,
            config.score_mode,
            config.score_topk,
            combined=config.score_source == "combined",
            score_from_student=config.image_score == "student",
            choose_score=config.image_score == "auto",
        )
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

    def guide(self, teacher: list[torch.Tensor]) -> list[torch.Tensor]:
        """The features the bottleneck sees: the memory-guided fusion, or the teacher's (RD)."""
        if not self.config.use_memory:
            return teacher
        if self.config.memory_read == "patch":
            return self.msff(self.patch_memory(teacher))
        return self._fuse(teacher, self.normal_memory)

    def decode(self, guided: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.student(self.bottleneck(guided))

    def outputs(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor] | None
    ) -> AnomalyOutput:
        memory_map = self._memory_map(teacher) if self.config.score_source != "student" else None
        return AnomalyOutput(
            *self.head(
                teacher, student if self.config.score_source != "memory" else None, memory_map
            )
        )

    def _memory_map(self, teacher: list[torch.Tensor]) -> torch.Tensor:
        return self.patch_memory(teacher, self.config.memory_score_levels, self.config.image_size)

    def both_image_scores(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a model that chooses its image score (``image_score="auto"``): the anomaly map
        and both rules' image scores (the map's, the student's share's) from one forward."""
        if not self.head.choose_score:
            raise ValueError("this model has a fixed image score; both_image_scores needs auto")
        teacher = self.teacher(image)
        student = self.decode(self.guide(teacher))
        return self.head.both_scores(teacher, student, self._memory_map(teacher))

    def training_features(self, image: torch.Tensor) -> TrainingFeatures:
        teacher = self.teacher_features(image)
        if not self.config.use_memory:
            return TrainingFeatures(teacher, self.decode(teacher), None, None)
        fused_normal = self.guide(teacher)
        fused_abnormal = self._fuse(teacher, self.abnormal_memory)
        return TrainingFeatures(teacher, self.decode(fused_normal), fused_normal, fused_abnormal)

    def forward(self, image: torch.Tensor) -> AnomalyOutput:
        teacher = self.teacher(image)
        student = self.decode(self.guide(teacher)) if self.config.score_source != "memory" else None
        return self.outputs(teacher, student)

    def _teacher_chunks(self, images: torch.Tensor, chunk: int) -> list[torch.Tensor]:
        parts = [self.teacher(images[i : i + chunk]) for i in range(0, len(images), chunk)]
        return [torch.cat([p[level] for p in parts]) for level in range(3)]

    @torch.no_grad()
    def fill_memory(self, normal: torch.Tensor, abnormal: torch.Tensor, chunk: int = 8) -> None:
        """Fill the image banks from K normal images and their pseudo-anomalous versions."""
        if not (self.config.use_memory and self.config.uses_student):
            return
        banks = [(self.abnormal_memory, abnormal)]
        if self.config.memory_read == "image":
            banks.insert(0, (self.normal_memory, normal))
        for bank, images in banks:
            bank.fill(self._teacher_chunks(images, chunk))

    @torch.no_grad()
    def fill_patch_memory(self, normal: torch.Tensor, seed: int, chunk: int = 8) -> None:
        """Fill the patch memory from all training normals (a coreset of their patches)."""
        if self.config.uses_patch_memory:
            self.patch_memory.fill(self._teacher_chunks(normal, chunk), seed)

    @torch.no_grad()
    def calibrate_map_weights(self, normal: torch.Tensor) -> tuple[float, float] | None:
        """For the combined score: divide the student's and the memory's maps by the same
        statistic of their values on these held-out normal images (``map_scale``: the mean,
        the 99th percentile or the standard deviation; each map then weighs 0.5). Returns the
        two statistics."""
        if self.config.score_source != "combined":
            return None
        # the maps as deployed: BatchNorm on its running statistics (train mode would both
        # measure other maps and move those statistics during a training run's validation)
        was_training = self.training
        self.eval()
        try:
            teacher = self.teacher(normal)
            maps = (
                self.head.distance_map(teacher, self.decode(self.guide(teacher))),
                self._memory_map(teacher),
            )
        finally:
            self.train(was_training)
        scale = self.config.map_scale
        if scale == "mean":
            stats = [float(m.mean()) for m in maps]
        elif scale == "std":
            stats = [float(m.std()) for m in maps]
        else:  # a strided subsample keeps torch.quantile within its input size limit
            stats = [
                float(torch.quantile(m.flatten()[:: max(1, m.numel() // 1_000_000)].float(), 0.99))
                for m in maps
            ]
        self.head.map_weights.copy_(torch.tensor([0.5 / max(v, 1e-8) for v in stats]))
        return stats[0], stats[1]

    def deployed_memory_bytes(self) -> int:
        """Bytes of the memory constants the deployment graph holds (no pseudo-anomaly bank)."""
        return sum(
            b.numel() * b.element_size()
            for n, b in self.named_buffers()
            if n.startswith(("normal_memory.", "patch_memory."))
        )

    def memory_bytes(self) -> int:
        """Bytes of all memory constants (image banks and patch memory)."""
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers() if "memory" in n)
