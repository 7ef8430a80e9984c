"""`dmgrd-edge eval`: test-set metrics per category, report tables and heat-map overlays."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from dmgrd_edge.data.datasets import index_category
from dmgrd_edge.data.imageio import write_image
from dmgrd_edge.data.preprocess import read_frames, read_masks
from dmgrd_edge.errors import DataError
from dmgrd_edge.metrics import evaluate_all
from dmgrd_edge.options import EvalSettings
from dmgrd_edge.viz import draw_contour, heat_overlay, put_label

from .checkpoint import checkpoint_preprocess, load_model
from .loop import as_tensor, pick_device


def _timed_forward(model, x: torch.Tensor, device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def read_test_set(samples, cfg, console: Console, category: str) -> tuple[np.ndarray, np.ndarray]:
    """Test images (uint8 at model size) and their masks (bool, empty for good images)."""
    paths = [s.path for s in samples]
    images = read_frames(track(paths, description=f"read {category}", console=console), cfg)
    return images, read_masks(samples, cfg)


def _predict_timed(model, images: np.ndarray, cfg, device, batch_size: int):
    """Maps, scores and the seconds spent in forward passes (after one warm-up pass)."""
    maps, scores, seconds = [], [], 0.0
    model(as_tensor(images[:1], cfg, device))  # warm-up
    for i in range(0, len(images), batch_size):
        out, dt = _timed_forward(model, as_tensor(images[i : i + batch_size], cfg, device), device)
        seconds += dt
        maps.append(out.anomaly_map[:, 0].float().cpu().numpy())
        scores.append(out.score.float().cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores), seconds


@torch.no_grad()
def evaluate_checkpoint(
    checkpoint: str | Path,
    root: str | Path | None = None,
    dataset: str | None = None,
    category: str | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = EvalSettings.batch_size,
    device: str = EvalSettings.device,
    overlays_per_type: int = EvalSettings.overlays,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console()
    dev = pick_device(device)
    model, payload = load_model(checkpoint, str(dev))
    meta = payload["metadata"]
    dataset = dataset or meta["dataset"]
    root = root or meta["root"]
    category = category or meta["category"]
    cfg = checkpoint_preprocess(payload)
    index = index_category(dataset, root, category)
    if not index.test:
        raise DataError(
            f"{category} has no test images in {root} (dataset layout {dataset})",
            "give --data a dataset with a test split (see `dmgrd-edge eval --help`)",
        )
    if not any(s.label for s in index.test):
        console.print(
            f"[yellow]warning:[/] {category} has no defective test images; only scores are reported"
        )
    images, masks = read_test_set(index.test, cfg, console, category)
    labels = np.array([s.label for s in index.test])
    maps_np, scores_np, seconds = _predict_timed(model, images, cfg, dev, batch_size)
    row: dict[str, Any] = {"category": category, **evaluate_all(labels, scores_np, masks, maps_np)}
    row["ms_per_image"] = 1000 * seconds / len(images)
    row["n_test"] = int(len(images))
    if out_dir is not None:
        _write_overlays(
            Path(out_dir) / "overlays" / category,
            index.test,
            images,
            maps_np,
            scores_np,
            masks,
            overlays_per_type,
        )
    return {
        "row": row,
        "checkpoint": str(checkpoint),
        "dataset": dataset,
        "device": str(dev),
        "backbone": model.config.backbone,
        "selection": model.config.selection,
        "use_memory": model.config.use_memory,
        "step": payload["step"],
    }


def _write_overlays(folder: Path, samples, images, maps, scores, masks, per_type: int) -> None:
    vmin, vmax = float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9))
    counts: dict[str, int] = {}
    for i, sample in enumerate(samples):
        if counts.get(sample.defect_type, 0) >= per_type:
            continue
        counts[sample.defect_type] = counts.get(sample.defect_type, 0) + 1
        overlay = draw_contour(heat_overlay(images[i], maps[i], vmin, vmax), masks[i])
        panel = np.concatenate(
            [
                put_label(images[i], sample.defect_type),
                put_label(overlay, f"score {scores[i]:.3f}"),
            ],
            axis=1,
        )
        write_image(folder / f"{sample.defect_type}_{sample.path.stem}.png", panel)
