"""`dmgrd-edge prune`: a trained checkpoint -> a checkpoint with fewer channels inside the
bottleneck and student blocks (dmgrd_edge/model/pruning.py), then a short fine-tune on the
same data to win back what the cut cost.

OUT/pruned.pt is the model right after the cut; OUT/last.pt and OUT/best.pt come from the
fine-tune (the memory banks and the teacher stay those of the original run). Export any of
them as usual.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from dmgrd_edge.config import TrainConfig
from dmgrd_edge.errors import ConfigError, DataError
from dmgrd_edge.model.pruning import prune, trainable_parameter_count
from dmgrd_edge.options import PruneJob, TrainJob

from .checkpoint import load_model, save_checkpoint
from .trainer import train_category


def finetune_config(
    original: dict[str, Any], steps: int, lr: float, batch_size: int | None = None, threads: int = 0
) -> TrainConfig:
    """The fine-tune's settings: the original run's (from its checkpoint's ``train_config``,
    so the same validation split and pseudo-anomaly synthesis, SynthesisConfig included)
    with a shorter schedule and a lower rate."""
    base = TrainConfig.from_dict(original)
    return dataclasses.replace(
        base,
        steps=steps,
        lr=lr,
        min_lr=min(base.min_lr, lr / 10),
        warmup_steps=min(20, steps),
        batch_size=batch_size or base.batch_size,
        val_every=min(base.val_every, steps),
        threads=threads or base.threads,
        checkpoint_every=min(base.checkpoint_every, steps),
    )


def _check_job(job: PruneJob) -> None:
    if not 0.0 < job.ratio < 1.0:
        raise ConfigError(
            f"--ratio must be between 0 and 1 (the share of channels removed), got {job.ratio}"
        )
    if job.multiple < 1:
        raise ConfigError(f"--multiple must be >= 1, got {job.multiple}")


def _empty_out(job: PruneJob) -> Path:
    out = Path(job.out_dir)
    if out.exists() and any(out.iterdir()):
        if not job.overwrite:
            raise DataError(
                f"output folder {out} is not empty",
                "give another --out, or --overwrite to replace it",
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _cut(job: PruneJob, model, metadata: dict[str, Any]) -> dict[str, Any]:
    """Prune ``model`` in place; records the cut in ``metadata`` and returns it."""
    before = trainable_parameter_count(model)
    widths = prune(model, job.ratio, job.multiple)
    after = trainable_parameter_count(model)
    model.config = dataclasses.replace(model.config, pruned_widths=widths)
    history = list(metadata.get("pruning", {}).get("history", []))  # a pruned model pruned again
    pruning = {
        "ratio": job.ratio,
        "multiple": job.multiple,
        "from": str(job.checkpoint),
        "trainable_params_before": before,
        "trainable_params_after": after,
        "widths": widths,
    }
    step = {k: v for k, v in pruning.items() if k not in ("widths", "from")}
    metadata["pruning"] = {**pruning, "history": history + [step]}
    metadata.pop("history", None)  # the validation history of the unpruned run no longer applies
    return pruning


def _finetune_job(job: PruneJob, metadata: dict[str, Any], model, out: Path, cut: Path):
    dataset = job.dataset or metadata.get("dataset")
    root = job.data or metadata.get("root")
    category = job.category or metadata.get("category")
    if not (dataset and root and category):
        raise DataError(
            "the checkpoint does not say which data it was trained on",
            "give --data, --dataset and --category for the fine-tune",
        )
    return TrainJob(
        dataset=dataset,
        root=str(root),
        category=category,
        out_dir=str(out),
        model=model.config,
        train=job.finetune,
        pretrained=False,
        device=job.device,
        init_from=str(cut),
    )


def prune_checkpoint(job: PruneJob, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    _check_job(job)
    model, payload = load_model(job.checkpoint)
    if not model.config.uses_student:
        raise ConfigError(
            f"{job.checkpoint} is the nearest-neighbour baseline: it has no channels to prune",
            "make its memory smaller instead (train --method knn --patch-bank-size N)",
        )
    metadata = dict(payload["metadata"])
    out = _empty_out(job)
    pruning = _cut(job, model, metadata)
    before, after = pruning["trainable_params_before"], pruning["trainable_params_after"]
    cut = out / "pruned.pt"
    save_checkpoint(cut, model, metadata)
    console.print(
        f"pruned {job.checkpoint}: trainable parameters {before / 1e6:.2f} M -> "
        f"{after / 1e6:.2f} M ({100 * (1 - after / before):.0f} % fewer), "
        f"{len(pruning['widths'])} groups -> {cut}"
    )
    summary: dict[str, Any] = {
        "pruned": str(cut),
        **{k: v for k, v in pruning.items() if k != "widths"},
    }
    if job.finetune is None:
        console.print(
            "[yellow]no fine-tune asked for (--steps 0): accuracy is not recovered after the cut; "
            "check it with `dmgrd-edge eval` before exporting[/]"
        )
        return summary
    summary["finetune"] = train_category(_finetune_job(job, metadata, model, out, cut), console)
    return summary
