"""Give a trained model another anomaly map without retraining: ``dmgrd-edge rescore``.

The student's weights and the image memory stay as trained. What changes is the head's
input: the student's distance (``student``), the patch memory's nearest-normal distance
(``memory``) or both on their validation scales (``combined``). A patch memory the
checkpoint lacks is filled from the same training images the run used (same split, same
seed), the map weights and the score statistics come from the same held-out validation
normals, so the result is the checkpoint training would have written with that setting.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rich.console import Console

from dmgrd_edge.config import ModelConfig, TrainConfig
from dmgrd_edge.data.datasets import index_category
from dmgrd_edge.data.synthesis import AnomalySynthesizer
from dmgrd_edge.errors import CheckpointError, ConfigError
from dmgrd_edge.model import DMGRD

from .checkpoint import read_checkpoint, save_checkpoint
from .loop import (
    as_tensor,
    load_images,
    make_validation_set,
    pick_device,
    validate,
)
from .trainer import split_train_val

REBUILT_KEYS = ("patch_memory.", "head.map_weights", "head.student_score")


def _rebuilt_model(checkpoint: Path, payload: dict[str, Any], changes: dict[str, Any], dev):
    """The checkpoint's model with ``changes`` to its config; the parts the change rebuilds
    (REBUILT_KEYS) start fresh, every other weight must fit."""
    config = dataclasses.replace(ModelConfig.from_dict(payload["model_config"]), **changes)
    model = DMGRD(config, pretrained=False)
    state = {k: v for k, v in payload["state_dict"].items() if not k.startswith(REBUILT_KEYS)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in list(missing) + list(unexpected) if not k.startswith(REBUILT_KEYS)]
    if wrong:
        raise CheckpointError(f"{checkpoint} does not fit the rescored model: {wrong[:5]}")
    return model.to(dev).eval()


def _train_config(meta: dict[str, Any]) -> TrainConfig:
    """The run's settings: its validation split, seed and synthesis (defaults when absent)."""
    return TrainConfig.from_dict(meta.get("train_config", {}))


def _restore_patch_memory(model, payload, images, cfg, seed: int, dev, console) -> None:
    """The checkpoint's patch memory when it has one of the model's size, else one filled
    from ``images``."""
    kept = {k: v for k, v in payload["state_dict"].items() if k.startswith("patch_memory.")}
    trained_size = ModelConfig.from_dict(payload["model_config"]).patch_bank_size
    if kept and trained_size == model.config.patch_bank_size:
        model.patch_memory.load_state_dict({k[len("patch_memory.") :]: v for k, v in kept.items()})
    else:
        console.print(f"filling the patch memory from {len(images)} training images")
        model.fill_patch_memory(as_tensor(images, cfg, dev), seed)


def rescore_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    score_source: str,
    memory_score_levels: tuple[int, ...] | None = None,
    map_scale: str | None = None,
    patch_bank_size: int | None = None,
    image_score: str | None = None,
    device: str = "auto",
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console()
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists():
        raise ConfigError(
            f"--out {out} already exists", "give a new file name, or remove that file first"
        )
    payload = read_checkpoint(checkpoint)
    changes: dict[str, Any] = {"score_source": score_source}
    if memory_score_levels is not None:
        changes["memory_score_levels"] = memory_score_levels
    if map_scale is not None:
        changes["map_scale"] = map_scale
    if patch_bank_size is not None:
        changes["patch_bank_size"] = patch_bank_size
    if image_score is not None:
        changes["image_score"] = image_score
    dev = pick_device(device)
    model = _rebuilt_model(checkpoint, payload, changes, dev)
    config = model.config
    meta = dict(payload["metadata"])
    meta.pop("map_stats", None)
    tcfg = _train_config(meta)
    cfg = config.preprocess()
    index = index_category(meta["dataset"], meta["root"], meta["category"])
    images = load_images([s.path for s in index.train], cfg)
    train_idx, val_idx = split_train_val(len(images), tcfg.val_fraction, tcfg.seed)
    if config.uses_patch_memory:
        _restore_patch_memory(model, payload, images[train_idx], cfg, tcfg.seed, dev, console)
    synth = AnomalySynthesizer(cfg.height, cfg.width, tcfg.texture_dir, tcfg.synthesis)
    val = make_validation_set(images[val_idx], synth, tcfg.seed)
    means = model.calibrate_map_weights(as_tensor(val[0][val[1] == 0], cfg, dev))
    metrics, choice = validate(model, val, cfg, dev)
    meta.pop("image_score_choice", None)
    if choice is not None:
        meta["image_score_choice"] = choice
    meta.update(
        score_stats=metrics["score_stats"],
        rescored_from=str(checkpoint),
        rescored={
            "score_source": score_source,
            "validation": {k: metrics[k] for k in metrics if k != "score_stats"},
        },
    )
    if means is not None:
        meta["map_stats"] = {"scale": config.map_scale, "student": means[0], "memory": means[1]}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, meta, None, payload["step"])
    return {
        "checkpoint": str(out),
        "score_source": score_source,
        "validation": meta["rescored"]["validation"],
        "map_stats": meta.get("map_stats"),
    }
