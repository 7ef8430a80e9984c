"""Dual memory banks (normal and pseudo-anomalous) and the memory read.

A bank holds, for each level l, the teacher feature maps U_l [K, C_l, H_l, W_l] of K
images and their spatial means M_l [K, C_l]. They are buffers: saved with the checkpoint
and exported into the ONNX graph as initializers.

Selection rules (which memory sample k feeds the squared difference):
- ``nearest`` (default): the sample with the smallest mean squared distance to the query,
  summed over the three levels. Computed as |U_k|^2 - 2 F.U_k (|F|^2 is the same for all
  k) with one matrix product per level, so it exports as MatMul/Add/ArgMin/Gather.
- ``authors``: the rule in the authors' code: attention-weighted read of M_l, top-10
  channel values averaged over space, the three levels concatenated into a 30-vector,
  argmin. Because top-k values come sorted, it can only pick items 9, 19 or 29. Kept
  for comparison only.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

AUTHORS_TOPK = 10


class MemoryBank(nn.Module):
    def __init__(
        self,
        size: int,
        channels: tuple[int, ...],
        shapes: tuple[tuple[int, int], ...],
        scale_inputs: bool = True,
    ):
        super().__init__()
        self.size = size
        self.scale_inputs = scale_inputs
        self.levels = len(channels)
        for level, (c, (h, w)) in enumerate(zip(channels, shapes)):
            self.register_buffer(f"maps{level}", torch.zeros(size, c, h, w))
            self.register_buffer(f"means{level}", torch.zeros(size, c))
            self.register_buffer(f"sqnorm{level}", torch.zeros(size))
            self.register_buffer(f"inv_rms{level}", torch.ones(()))

    def maps(self, level: int) -> torch.Tensor:
        return getattr(self, f"maps{level}")

    def means(self, level: int) -> torch.Tensor:
        return getattr(self, f"means{level}")

    @torch.no_grad()
    def fill(self, features: list[torch.Tensor]) -> None:
        for level, feat in enumerate(features):
            self.maps(level).copy_(feat)
            self.means(level).copy_(feat.mean(dim=(2, 3)))
            getattr(self, f"sqnorm{level}").copy_(feat.flatten(1).pow(2).sum(1))
            getattr(self, f"inv_rms{level}").fill_(
                float(feat.pow(2).mean().rsqrt()) if self.scale_inputs else 1.0
            )

    def select_nearest(self, features: list[torch.Tensor]) -> torch.Tensor:
        # mean squared distance |F - U_k|^2 / D without the |F|^2 term, which is the same
        # for every k and so cannot change the argmin; |U_k|^2 is stored at fill time.
        distance = 0.0
        for level, feat in enumerate(features):
            bank = self.maps(level).flatten(1)
            # (K x D) @ (D x B): the bank stays as stored (no transposed copy of a constant)
            cross = (bank @ feat.flatten(1).t()).t()
            distance = distance + (getattr(self, f"sqnorm{level}") - 2.0 * cross) / bank.shape[1]
        return torch.argmin(distance, dim=1)

    def select_authors(self, features: list[torch.Tensor]) -> torch.Tensor:
        votes = []
        for level, feat in enumerate(features):
            query = F.normalize(feat.flatten(2), dim=1)  # B, C, P
            keys = F.normalize(self.means(level), dim=1)  # K, C
            weights = torch.softmax(torch.einsum("kc,bcp->bkp", keys, query), dim=1)
            read = torch.einsum("bkp,kc->bcp", weights, self.means(level))
            votes.append(read.topk(AUTHORS_TOPK, dim=1).values.mean(2))
        return torch.argmin(torch.cat(votes, dim=1), dim=1) % self.size

    def forward(
        self, features: list[torch.Tensor], rule: str
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The memory read (a module call, so exported nodes are named under the bank's
        scope and can be kept fp32 by name). Returns MI_l = concat(F_l, (U_l[k] - F_l)^2)
        for each level and the chosen k. With ``scale_inputs`` both terms are computed on
        features divided by the bank's RMS (a constant fixed at fill time), which keeps the
        squared difference O(1) instead of O(|F|^2)."""
        index = (
            self.select_nearest(features) if rule == "nearest" else self.select_authors(features)
        )
        fused = []
        for level, feat in enumerate(features):
            chosen = self.maps(level).index_select(0, index)
            scale = getattr(self, f"inv_rms{level}")
            fused.append(torch.cat([feat * scale, ((chosen - feat) * scale) ** 2], dim=1))
        return fused, index
