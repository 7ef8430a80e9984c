"""Checkpoints: one file with weights, memory banks, configs and metadata.

Loadable with ``torch.load(weights_only=True)`` (tensors and plain containers only).
Writes are atomic: a temporary file in the same folder, fsync, then rename, so a crash
never leaves a half-written checkpoint and never destroys the previous one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dmgrd_edge.atomic import atomic_write
from dmgrd_edge.config import ModelConfig, PreprocessConfig
from dmgrd_edge.errors import CheckpointError
from dmgrd_edge.schema import checkpoint_payload

FORMAT = "dmgrd-edge-checkpoint"
FORMAT_VERSION = 1


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


def save_checkpoint(
    path: str | Path, model, metadata: dict[str, Any], optimizer=None, step: int = 0
) -> None:
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "preprocess": model.config.preprocess().to_dict(),
        "state_dict": model.state_dict(),
        "step": step,
        "metadata": metadata,
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    atomic_torch_save(payload, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", "train one with `dmgrd-edge train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc)[:200]}",
            "the file is truncated or not a dmgrd-edge checkpoint; retrain or re-copy it",
        ) from exc
    return checkpoint_payload(payload, str(path), FORMAT, FORMAT_VERSION)


def load_model(path: str | Path, device: str = "cpu"):
    """Rebuild the model from a checkpoint. Returns (model, payload)."""
    from dmgrd_edge.model import DMGRD

    payload = read_checkpoint(path)
    config = ModelConfig.from_dict(payload["model_config"])
    model = DMGRD(config, pretrained=False)
    load_weights(model, payload, path)
    return model.to(device).eval(), payload


def load_weights(model, payload: dict[str, Any], path: str | Path) -> None:
    """A checkpoint's weights into ``model``, strictly, and where its teacher came from; a
    CheckpointError naming ``path`` when they do not fit the model's config."""
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not match the model config: {str(exc)[:300]}"
        ) from exc
    model.teacher_source = payload["metadata"].get("teacher_weights", "from checkpoint")


def checkpoint_preprocess(payload: dict[str, Any]) -> PreprocessConfig:
    return PreprocessConfig.from_dict(payload["preprocess"])
