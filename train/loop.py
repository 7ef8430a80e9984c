"""The training loop: seeded, resumable bit-for-bit, atomic checkpoints, validation on a
split of the training normals plus pseudo-anomalies (never the test set).

Every random choice of step s (batch indices, pseudo-anomalies) comes from a generator
seeded with (seed, s), so a resumed run sees exactly the data the uninterrupted run saw.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from dmgrd_edge.config import PreprocessConfig, TrainConfig
from dmgrd_edge.data.preprocess import normalize, read_frames
from dmgrd_edge.data.synthesis import AnomalySynthesizer
from dmgrd_edge.errors import ConfigError
from dmgrd_edge.metrics import auroc, evaluate_all


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} asked for but CUDA is not available", "use --device cpu or auto"
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(
            f"unknown device {name!r}", "choose one of ['auto', 'cpu', 'cuda', 'cuda:N']"
        )
    return torch.device(name)


def load_images(paths, cfg: PreprocessConfig, progress: Callable | None = None) -> np.ndarray:
    """Read and resize images to the model size: uint8 (N, H, W, 3)."""
    return read_frames(progress(paths) if progress else paths, cfg)


def as_tensor(frames: np.ndarray, cfg: PreprocessConfig, device) -> torch.Tensor:
    """uint8 frames at model size -> the model's normalised float32 NCHW input on `device`."""
    return torch.from_numpy(normalize(frames, cfg)).to(device)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay from lr to min_lr (the authors' schedule)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


class BatchSource:
    """Deterministic batches: half normal, half pseudo-anomalous (by default)."""

    def __init__(self, images: np.ndarray, synthesizer: AnomalySynthesizer, cfg: TrainConfig):
        self.images, self.synth, self.cfg = images, synthesizer, cfg
        self.n_anomalous = max(
            1, min(cfg.batch_size - 1, round(cfg.batch_size * cfg.anomaly_fraction))
        )

    def batch(self, step: int):
        rng = np.random.default_rng([self.cfg.seed, 1, step])
        idx = rng.integers(0, len(self.images), self.cfg.batch_size)
        clean = self.images[idx]
        augmented = clean.copy()
        masks = np.zeros(clean.shape[:3], bool)
        is_anomalous = np.zeros(len(idx), bool)
        for j in range(len(idx) - self.n_anomalous, len(idx)):
            augmented[j], masks[j] = self.synth(clean[j], rng, self.images)
            is_anomalous[j] = True
        return augmented, clean, masks, is_anomalous


def make_validation_set(images: np.ndarray, synth: AnomalySynthesizer, seed: int):
    """Validation normals plus a pseudo-anomalous copy of each (fixed seed)."""
    rng = np.random.default_rng([seed, 2])
    bad, masks = zip(*(synth(image, rng, images) for image in images))
    all_images = np.concatenate([images, np.stack(bad)])
    labels = np.r_[np.zeros(len(images), int), np.ones(len(images), int)]
    all_masks = np.concatenate([np.zeros(images.shape[:3], bool), np.stack(masks)])
    return all_images, labels, all_masks


@torch.no_grad()
def predict(
    model,
    images: np.ndarray,
    cfg: PreprocessConfig,
    device,
    batch_size: int = 16,
    both_scores: bool = False,
):
    """Maps (N, H, W) and scores (N,) for uint8 images at model size. With ``both_scores`` (a
    model that chooses its image score) the scores are (N, 2), the map's rule's and the
    student's share's, from the same forward pass."""
    model.eval()
    maps, scores = [], []
    for i in range(0, len(images), batch_size):
        x = as_tensor(images[i : i + batch_size], cfg, device)
        if both_scores:
            anomaly_map, *rules = model.both_image_scores(x)
            score = torch.stack(rules, dim=1)
        else:
            anomaly_map, score = model(x)
        maps.append(anomaly_map[:, 0].float().cpu().numpy())
        scores.append(score.float().cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores)


def score_statistics(normal_scores: np.ndarray) -> dict[str, float]:
    s = np.asarray(normal_scores, np.float64)
    stats = {
        "count": int(s.size),
        "mean": float(s.mean()),
        "std": float(s.std()),
        "min": float(s.min()),
        "p50": float(np.percentile(s, 50)),
        "p95": float(np.percentile(s, 95)),
        "p99": float(np.percentile(s, 99)),
        "max": float(s.max()),
    }
    stats["threshold"] = stats["mean"] + 3 * stats["std"]
    stats["threshold_rule"] = "mean + 3 std of validation normal scores"
    return stats


IMAGE_SCORE_RULES = ("map", "student")  # the columns of predict(..., both_scores=True)


def choose_image_score(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """For ``image_score="auto"``: of the two rules' validation scores (``scores`` [N, 2], see
    ``IMAGE_SCORE_RULES``), keep the one that separates the pseudo-anomalies from the normals
    better: the higher image AUROC, then, on a tie (both often separate them fully), the
    larger margin (anomalous scores' mean minus the normals', in normal standard deviations);
    a full tie keeps the map's."""
    found = {}
    for column, rule in enumerate(IMAGE_SCORE_RULES):
        rule_scores = scores[:, column].astype(np.float64)
        normal, anomalous = rule_scores[labels == 0], rule_scores[labels == 1]
        found[rule] = {
            "i_auroc": round(float(auroc(labels, rule_scores)), 4),
            "margin": float((anomalous.mean() - normal.mean()) / max(normal.std(), 1e-12)),
        }
    chosen = max(found, key=lambda r: (found[r]["i_auroc"], found[r]["margin"]))
    return {"chosen": chosen, "validation": found}


def validate(model, val, cfg: PreprocessConfig, device) -> tuple[dict[str, Any], dict | None]:
    """Validation metrics of the model as it will score, and, for a model that chooses its
    image score, the choice (``choose_image_score``; the head's ``student_score`` flag, saved
    with the weights, is set to it). One forward pass per image either way."""
    images, labels, masks = val
    chooses = getattr(model.head, "choose_score", False)
    maps, scores = predict(model, images, cfg, device, both_scores=chooses)
    choice = None
    if chooses:
        choice = choose_image_score(labels, scores)
        column = IMAGE_SCORE_RULES.index(choice["chosen"])
        model.head.student_score.fill_(float(choice["chosen"] == "student"))
        scores = scores[:, column]
    metrics = evaluate_all(labels, scores, masks, maps)
    metrics = {k: metrics[k] for k in ("i_auroc", "p_auroc", "pro_30") if k in metrics}
    metrics["score_stats"] = score_statistics(scores[labels == 0])
    return metrics, choice
