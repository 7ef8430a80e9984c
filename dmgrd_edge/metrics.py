"""Anomaly-detection metrics in numpy only, so the same evaluation runs on a Jetson.

- ``auroc``: area under the ROC curve (ties handled exactly, via average ranks).
- ``pro_auc``: per-region overlap integrated over FPR in [0, limit], divided by limit.
  limit=0.3 is the standard AUPRO of MVTec AD; limit=1.0 is what the DM-GRD authors report.
- ``f1_max``: best F1 over all thresholds and the threshold that reaches it.
"""

from __future__ import annotations

import cv2
import numpy as np


def _check_binary(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels).ravel()
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{name} must be 0/1 or bool")
        labels = labels.astype(bool)
    return labels


def auroc(labels, scores) -> float:
    """ROC AUC via the Mann-Whitney statistic (average ranks for ties)."""
    labels = _check_binary(labels, "labels")
    scores = np.asarray(scores, np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in size")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative samples")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, np.float64)
    # average rank for each run of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    run_rank = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(run_rank, ends - starts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pro_curve(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """FPR and mean per-region overlap at every distinct threshold (descending).

    Each connected ground-truth region (8-connectivity) counts equally, whatever its size:
    a pixel of region r contributes 1 / (|r| * n_regions) to the PRO; each normal pixel
    contributes 1 / n_normal_pixels to the FPR.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, np.float64)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must both be (N, H, W)")
    pro_weight = np.zeros(masks.shape, np.float64)
    n_regions = 0
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        sizes = np.bincount(labels.ravel(), minlength=count)
        region_weight = np.zeros(count)
        region_weight[1:] = 1.0 / sizes[1:]
        pro_weight[i] = region_weight[labels]
        n_regions += count - 1
    n_normal = int((~masks).sum())
    if n_regions == 0 or n_normal == 0:
        raise ValueError("PRO needs at least one anomalous region and one normal pixel")
    fpr_weight = (~masks).astype(np.float64) / n_normal
    pro_weight /= n_regions
    order = np.argsort(-maps.ravel(), kind="mergesort")
    scores = maps.ravel()[order]
    fpr = np.cumsum(fpr_weight.ravel()[order])
    pro = np.cumsum(pro_weight.ravel()[order])
    last_of_run = np.concatenate([np.flatnonzero(np.diff(scores)), [scores.size - 1]])
    fpr = np.concatenate([[0.0], fpr[last_of_run]])
    pro = np.concatenate([[0.0], pro[last_of_run]])
    return np.clip(fpr, 0, 1), np.clip(pro, 0, 1)


def pro_auc(masks, maps, limit: float = 0.3) -> float:
    """Area under the PRO curve for FPR in [0, limit], normalised by limit."""
    if not 0 < limit <= 1:
        raise ValueError(f"limit must be in (0, 1], got {limit}")
    fpr, pro = pro_curve(masks, maps)
    inside = fpr <= limit
    x, y = fpr[inside], pro[inside]
    if x[-1] < limit and inside.sum() < fpr.size:
        j = int(inside.sum())  # first point beyond the limit: interpolate at the limit
        t = (limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
        x = np.append(x, limit)
        y = np.append(y, pro[j - 1] + t * (pro[j] - pro[j - 1]))
    return float(np.trapezoid(y, x) / limit)


def f1_max(labels, scores) -> tuple[float, float]:
    """(best F1, threshold): predictions are score >= threshold."""
    labels = _check_binary(labels, "labels")
    scores = np.asarray(scores, np.float64).ravel()
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError("F1 needs at least one positive sample")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    tp = np.cumsum(labels[order])
    predicted = np.arange(1, scores.size + 1)
    last_of_run = np.concatenate([np.flatnonzero(np.diff(sorted_scores)), [scores.size - 1]])
    tp, predicted = tp[last_of_run], predicted[last_of_run]
    f1 = 2 * tp / (predicted + n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(sorted_scores[last_of_run][best])


def evaluate_all(labels, scores, masks=None, maps=None) -> dict[str, float]:
    """The report's metrics; pixel metrics only when masks and maps are given."""
    labels = np.asarray(labels)
    result: dict[str, float] = {}
    if 0 < labels.sum() < labels.size:
        result["i_auroc"] = auroc(labels, scores)
        result["i_f1_max"], result["i_f1_threshold"] = f1_max(labels, scores)
    if masks is not None and maps is not None and np.asarray(masks).any():
        masks = np.asarray(masks).astype(bool)
        maps = np.asarray(maps, np.float32)
        result["p_auroc"] = auroc(masks.ravel(), maps.ravel())
        result["pro_30"] = pro_auc(masks, maps, 0.3)
        result["pro_full"] = pro_auc(masks, maps, 1.0)
    return result
