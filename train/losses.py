"""DM-GRD losses. Total = KD + 0.2 * (OT + 0.1 * Con) + 0.1 * Triplet.

Differences from the authors' code (see docs/METHOD.md for the reasons):
- KD targets the teacher features of the *clean* image, so the student learns to undo the
  pseudo-anomalies (the authors' target was the corrupted image's own features).
- OT compares the fused features of *different* normal images (entropic Sinkhorn over a
  cosine cost); the authors compared a batch with itself, which is ~0.
- Triplet is built from trainable fused features, so it has a gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F


class LossTerms(NamedTuple):
    total: torch.Tensor
    kd: torch.Tensor
    ot: torch.Tensor
    con: torch.Tensor
    triplet: torch.Tensor


def kd_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """sum_l mean_b (1 - cos(flatten(F_l), flatten(S_l)))."""
    return sum(
        (1 - F.cosine_similarity(t.flatten(1).float(), s.flatten(1).float(), dim=1)).mean()
        for t, s in zip(teacher, student)
    )


def contrast_loss(
    abnormal: list[torch.Tensor], normal: list[torch.Tensor], margin: float = 0.5
) -> torch.Tensor:
    """CosineEmbeddingLoss with target -1: mean(max(0, cos(a, n) - margin)) per level."""
    return sum(
        F.relu(
            F.cosine_similarity(a.flatten(1).float(), n.flatten(1).float(), dim=1) - margin
        ).mean()
        for a, n in zip(abnormal, normal)
    )


def sinkhorn_distance(
    x: torch.Tensor, y: torch.Tensor, eps: float = 0.05, iters: int = 50
) -> torch.Tensor:
    """Entropic OT between two equal-weight point sets with cost 1 - cosine (log domain)."""
    cost = 1 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).t()
    n, m = cost.shape
    log_a = torch.full((n,), -torch.log(torch.tensor(float(n))), device=x.device)
    log_b = torch.full((m,), -torch.log(torch.tensor(float(m))), device=x.device)
    u = torch.zeros(n, device=x.device)
    v = torch.zeros(m, device=x.device)
    for _ in range(iters):
        u = eps * (log_a - torch.logsumexp((v[None, :] - cost) / eps, dim=1))
        v = eps * (log_b - torch.logsumexp((u[:, None] - cost) / eps, dim=0))
    plan = torch.exp((u[:, None] + v[None, :] - cost) / eps)
    return (plan * cost).sum()


def compactness_loss(fused_normal: list[torch.Tensor]) -> torch.Tensor:
    """OT between two halves of the normal images' fused features (needs >= 2 images)."""
    n = fused_normal[0].shape[0]
    if n < 2:
        return fused_normal[0].new_zeros(())
    half = n // 2
    return sum(
        sinkhorn_distance(f[:half].flatten(1).float(), f[half : 2 * half].flatten(1).float())
        for f in fused_normal
    )


def triplet_loss(
    normal: list[torch.Tensor], anomalous: list[torch.Tensor], margin: float = 1.0
) -> torch.Tensor:
    """Anchor/positive: max-pooled fused features of two normal images; negative: those of a
    pseudo-anomalous image. Vectors are L2-normalised so the margin is scale-free."""
    total = normal[0].new_zeros((), dtype=torch.float32)
    for fn, fa in zip(normal, anomalous):
        count = min(fn.shape[0], fa.shape[0])
        if fn.shape[0] < 2 or count == 0:
            continue
        pooled = F.normalize(fn.float().amax(dim=(2, 3)), dim=1)
        anchor, positive = pooled[:count], torch.roll(pooled, 1, dims=0)[:count]
        negative = F.normalize(fa.float().amax(dim=(2, 3)), dim=1)[:count]
        total = total + F.triplet_margin_loss(anchor, positive, negative, margin=margin)
    return total


AUTHORS_WEIGHTS = {"ot": 0.2, "con": 0.02, "triplet": 0.1}


def dmgrd_loss(
    features,
    clean_teacher: list[torch.Tensor],
    is_anomalous: torch.Tensor,
    weights: dict[str, float] | None = None,
) -> LossTerms:
    """All terms for one batch; `features` is the model's TrainingFeatures. ``weights`` of the
    memory path's terms (default: the authors'); a term weighted 0 is not computed."""
    w = AUTHORS_WEIGHTS if weights is None else weights
    kd = kd_loss(clean_teacher, features.student)
    zero = kd.new_zeros(())
    if features.fused_normal is None:
        return LossTerms(kd, kd, zero, zero, zero)
    normal_idx = torch.nonzero(~is_anomalous).flatten()
    anomalous_idx = torch.nonzero(is_anomalous).flatten()
    fused_normal_ok = [f.index_select(0, normal_idx) for f in features.fused_normal]
    fused_normal_bad = [f.index_select(0, anomalous_idx) for f in features.fused_normal]
    con = contrast_loss(features.fused_abnormal, features.fused_normal) if w["con"] else zero
    ot = compactness_loss(fused_normal_ok) if w["ot"] else zero
    triplet = triplet_loss(fused_normal_ok, fused_normal_bad) if w["triplet"] else zero
    total = kd + w["ot"] * ot + w["con"] * con + w["triplet"] * triplet
    return LossTerms(total, kd, ot, con, triplet)
