"""Position-free memory of normal patch features: the nearest normal feature at every place.

For each teacher level l the bank holds N feature vectors [N, C_l] (a greedy coreset of the
locally averaged teacher features of all training normals, so that the bank stays small
enough for a Jetson). A query feature map is read at every location independently: the
nearest bank vector and its distance. That serves three uses:

- the guided memory read of DM-GRD (``memory_read="patch"``): ``(NN(F) - F)^2`` replaces the
  squared difference to one whole bank image, so a defect anywhere in the frame is compared
  with the normal material nearest to it instead of with one chosen image that is aligned
  with the query only by chance (textures) or up to the part's jitter (objects);
- the memory's own anomaly map (``score_source="memory"`` or ``"combined"``);
- the training-free nearest-neighbour baseline (``method="knn"``, PatchCore-style).

Everything is a MatMul, ReduceMin/ArgMin and Gather against constants in the exported graph.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MAX_CANDIDATES = 20000  # patches drawn at random per level before the greedy coreset


def local_average(feature: torch.Tensor) -> torch.Tensor:
    """3x3 neighbourhood mean (PatchCore's local aggregation), same size, no padding bias."""
    return F.avg_pool2d(feature, 3, stride=1, padding=1, count_include_pad=False)


def greedy_coreset(points: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of ``size`` rows of ``points`` [M, C] chosen by greedy k-centre (farthest
    point first), starting from a seeded random row; all rows when M <= size."""
    count = points.shape[0]
    if count <= size:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = torch.randint(count, (1,), generator=generator)
    sqnorm = points.pow(2).sum(1)

    def distance(i: torch.Tensor) -> torch.Tensor:  # |x - p|^2 without an [M, C] temporary
        return sqnorm + sqnorm[i] - 2.0 * (points @ points[i])

    nearest = distance(chosen[0])
    for i in range(1, size):
        chosen[i] = torch.argmax(nearest)
        nearest = torch.minimum(nearest, distance(chosen[i]))
    return chosen


class PatchMemory(nn.Module):
    def __init__(self, size: int, channels: tuple[int, ...]):
        super().__init__()
        self.size = size
        self.levels = len(channels)
        for level, c in enumerate(channels):
            self.register_buffer(f"bank{level}", torch.zeros(size, c))
            self.register_buffer(f"sqnorm{level}", torch.zeros(size))
            # 1 / RMS of the bank features: keeps the squared differences of the read O(1)
            self.register_buffer(f"inv_rms{level}", torch.ones(()))
            # 1 / mean nearest distance of the training patches: puts the levels' maps on
            # one scale before they are summed
            self.register_buffer(f"inv_distance{level}", torch.ones(()))

    def bank(self, level: int) -> torch.Tensor:
        return getattr(self, f"bank{level}")

    @torch.no_grad()
    def fill(self, features: list[torch.Tensor], seed: int) -> None:
        """Fill every level from the teacher features [M, C, H, W] of the training normals."""
        generator = torch.Generator().manual_seed(seed)
        for level, feat in enumerate(features):
            points = local_average(feat.float()).permute(0, 2, 3, 1).reshape(-1, feat.shape[1])
            if points.shape[0] > MAX_CANDIDATES:
                points = points[
                    torch.randperm(points.shape[0], generator=generator)[:MAX_CANDIDATES]
                ]
            chosen = points[greedy_coreset(points, self.size, seed + level)]
            if chosen.shape[0] < self.size:  # fewer patches than bank rows: repeat some
                repeat = torch.randint(
                    chosen.shape[0], (self.size - chosen.shape[0],), generator=generator
                )
                chosen = torch.cat([chosen, chosen[repeat]])
            self.bank(level).copy_(chosen)
            getattr(self, f"sqnorm{level}").copy_(chosen.pow(2).sum(1))
            getattr(self, f"inv_rms{level}").fill_(float(chosen.pow(2).mean().rsqrt()))
            if points.shape[0] <= self.size:
                # every training patch is a bank row, at distance 0 from it: the unit is the
                # distance from each patch to its nearest other one instead
                pairwise = torch.cdist(points, points)
                distance = pairwise.fill_diagonal_(float("inf")).min(1).values
            else:
                distance = torch.cat(
                    [self._distance(part[None], level)[0].flatten() for part in points.split(8192)]
                )
            getattr(self, f"inv_distance{level}").fill_(1.0 / max(float(distance.mean()), 1e-6))

    def _distance(self, query: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance to the nearest bank row (Euclidean) and that row, for rows of ``query``
        [B, P, C]. The argmin comes from |b|^2 - 2 q.b (one MatMul); the distance itself is
        then taken from the difference to the chosen row, which is exact where the expanded
        form would lose digits to cancellation (near-normal patches, the ones that matter)."""
        bank = self.bank(level)
        index = torch.argmin(getattr(self, f"sqnorm{level}") - 2.0 * (query @ bank.t()), dim=-1)
        nearest = bank.index_select(0, index.reshape(-1)).reshape(query.shape)
        return (nearest - query).pow(2).sum(-1).sqrt(), nearest

    def read(self, feature: torch.Tensor, level: int, want_nearest: bool):
        """Distance map [B, 1, H, W] (in the level's unit scale) and, if asked, the locally
        averaged query and its nearest bank features, both [B, C, H, W]."""
        c, h, w = (int(s) for s in feature.shape[1:])
        local = local_average(feature)
        query = local.flatten(2).transpose(1, 2)  # B, HW, C
        distance, nearest = self._distance(query, level)
        distance = (distance * getattr(self, f"inv_distance{level}")).reshape(-1, 1, h, w)
        if not want_nearest:
            return distance, None, None
        return distance, local, nearest.transpose(1, 2).reshape(-1, c, h, w)

    def forward(
        self, features: list[torch.Tensor], map_levels: tuple[int, ...] | None = None, size: int = 0
    ) -> list[torch.Tensor] | torch.Tensor:
        """Without ``map_levels``: the guided read for every level. With them: the memory's
        distance map (a module call either way, so exported nodes sit under the module's name
        and stay fp32 by name)."""
        if map_levels is not None:
            return self.distance_map(features, map_levels, size)
        return self.guided_read(features)

    def guided_read(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """MI_l = concat(F_l, (NN(F~_l) - F~_l)^2) for every level, on features scaled by the
        bank's RMS (F~: the locally averaged features the bank holds)."""
        fused = []
        for level, feat in enumerate(features):
            _, local, nearest = self.read(feat, level, want_nearest=True)
            scale = getattr(self, f"inv_rms{level}")
            fused.append(torch.cat([feat * scale, ((nearest - local) * scale) ** 2], dim=1))
        return fused

    def distance_map(
        self, features: list[torch.Tensor], levels: tuple[int, ...], size: int
    ) -> torch.Tensor:
        """Mean over ``levels`` of the per-level distance maps at ``size`` x ``size``."""
        total = 0.0
        for level in levels:
            distance, _, _ = self.read(features[level], level, want_nearest=False)
            total = total + F.interpolate(
                distance, size=(size, size), mode="bilinear", align_corners=False
            )
        return total / len(levels)
