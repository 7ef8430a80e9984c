"""`train_category`: one DM-GRD model for one category, end to end."""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dmgrd_edge import __version__
from dmgrd_edge.atomic import atomic_write_bytes
from dmgrd_edge.data.datasets import index_category
from dmgrd_edge.data.preprocess import normalize
from dmgrd_edge.data.synthesis import AnomalySynthesizer
from dmgrd_edge.errors import CheckpointError, DataError
from dmgrd_edge.model import DMGRD

from . import distributed
from .checkpoint import read_checkpoint, save_checkpoint
from .loop import (
    BatchSource,
    TrainJob,
    load_images,
    lr_at,
    make_validation_set,
    pick_device,
    validate,
)
from .losses import dmgrd_loss


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )


def split_train_val(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng([seed, 3]).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 2:
        raise DataError(
            f"only {n} training images: too few to hold out a validation split",
            "provide at least 4 good training images",
        )
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _autocast(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def _prepare_out_dir(job: TrainJob) -> tuple[Path, Path | None]:
    """(the folder to write into, the run folder it replaces once it holds a checkpoint).
    With --overwrite the new run is written beside the old one, which is replaced only when
    the new run has written its first checkpoint: bad data or a crash before that leaves the
    old run as it was."""
    out = Path(job.out_dir)
    last = out / "last.pt"
    start = Path(job.init_from).resolve() if job.init_from else None
    if job.resume:
        if not last.is_file():
            raise DataError(
                f"--resume given but {last} does not exist", "drop --resume to start a new run"
            )
    elif out.exists() and any(
        p.resolve() != start for p in out.iterdir()
    ):  # the start checkpoint may be there
        if not job.overwrite:
            raise DataError(
                f"output folder {out} is not empty",
                "pass --resume to continue that run, --overwrite to replace it, or another --out",
            )
        if start is None:
            staging = out.with_name(f".{out.name}.replacing")
            if staging.exists():  # left by a run that stopped before its first checkpoint
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
            return staging, out
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out, None


def _replace_run(staging: Path, out: Path) -> Path:
    """Move the new run into place of the old one and drop the old one."""
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old)
    return out


def _fill_memory(
    model, images: np.ndarray, synth, job: TrainJob, device, console
) -> dict[str, Any]:
    cfg = job.model.preprocess()
    record: dict[str, Any] = {}
    if job.model.use_memory and job.model.uses_student:  # the image banks guide the student
        k = job.model.memory_size
        rng = np.random.default_rng([job.train.seed, 0])
        replace = len(images) < k
        if replace:
            console.print(
                f"[yellow]warning:[/] only {len(images)} training images for a memory of {k}; "
                "some memory items repeat an image"
            )
        idx = rng.choice(len(images), k, replace=replace)
        abnormal = np.stack([synth(images[i], rng, images)[0] for i in idx])
        model.fill_memory(
            torch.from_numpy(normalize(images[idx], cfg)).to(device),
            torch.from_numpy(normalize(abnormal, cfg)).to(device),
        )
        record.update(size=k, train_indices=idx.tolist())
    if job.model.uses_patch_memory:
        t0 = time.perf_counter()
        model.fill_patch_memory(torch.from_numpy(normalize(images, cfg)).to(device), job.train.seed)
        record["patch_memory"] = {
            "rows_per_level": job.model.patch_bank_size,
            "from_images": int(len(images)),
            "fill_seconds": round(time.perf_counter() - t0, 2),
        }
    record["bytes"] = model.memory_bytes()
    return record


def train_category(job: TrainJob, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    ctx = distributed.current()  # one process, or one rank of several (train/distributed.py)
    cfg, tcfg = job.model.preprocess(), job.train
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = ctx.device(pick_device(job.device), tcfg.threads)
    index = index_category(job.dataset, job.root, job.category)
    out, replaces = _prepare_out_dir(job) if ctx.is_main else (Path(job.out_dir), None)
    console.print(f"[bold]{index.summary()}[/] -> {replaces or out} on {device}")
    with _progress(console) as bar:
        task = bar.add_task("loading", total=len(index.train), info="")
        images = load_images(
            [s.path for s in index.train], cfg, lambda xs: (bar.advance(task) or x for x in xs)
        )
    train_idx, val_idx = split_train_val(len(images), tcfg.val_fraction, tcfg.seed)
    synth = AnomalySynthesizer(cfg.height, cfg.width, tcfg.texture_dir)
    train_images, val = images[train_idx], make_validation_set(images[val_idx], synth, tcfg.seed)

    torch.manual_seed(tcfg.seed)
    # a model started from a checkpoint takes its teacher from there too
    model = DMGRD(job.model, job.pretrained and not job.init_from, job.teacher_weights).to(device)
    if device.type == "cuda" and tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ctx.prepare_model(model)
    trainable = model.trainable_parameters()
    # the nearest-neighbour baseline has nothing to train: its memory is all there is
    steps = tcfg.steps if trainable else 0
    optimizer = torch.optim.Adam(trainable, lr=tcfg.lr, betas=(0.5, 0.999)) if trainable else None
    start, history = 0, []
    metadata: dict[str, Any] = {
        "dataset": job.dataset,
        "root": str(job.root),
        "category": job.category,
        "teacher_weights": model.teacher_source,
        "selection_rule": job.model.selection,
        "train_config": tcfg.to_dict(),
        "synthesis": synth.source_kind,
        "n_train": int(len(train_idx)),
        "n_val_normal": int(len(val_idx)),
        "versions": {
            "dmgrd_edge": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
        "model_selection": "last checkpoint and best validation checkpoint; never the test set",
    }
    if not ctx.is_main:
        pass  # rank 0 reads the checkpoint or fills the memory; share_start hands it over
    elif job.resume:
        payload = read_checkpoint(out / "last.pt")
        model.load_state_dict(payload["state_dict"])
        if optimizer is not None:
            optimizer.load_state_dict(payload["optimizer"])
        start, metadata = payload["step"], payload["metadata"]
        history = metadata.get("history", [])
        console.print(f"resuming at step {start}")
    elif job.init_from:
        init = read_checkpoint(job.init_from)
        try:
            model.load_state_dict(init["state_dict"], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{job.init_from} does not fit the model config: {str(exc)[:300]}"
            ) from exc
        model.teacher_source = init["metadata"].get("teacher_weights", "from checkpoint")
        metadata["teacher_weights"] = model.teacher_source
        # the memory banks stay those of the run it came from (filled from its training images)
        for key in ("memory", "pruning"):
            if key in init["metadata"]:
                metadata[key] = init["metadata"][key]
        metadata["init_from"] = str(job.init_from)
    else:
        metadata["memory"] = _fill_memory(model, train_images, synth, job, device, console)
    start, metadata, history = ctx.share_start(model, optimizer, start, metadata, history)
    metadata["processes"] = ctx.world_size
    autocast, scaler = _autocast(device, tcfg.amp)
    source = ctx.batch_source(BatchSource(train_images, synth, tcfg))
    forward = ctx.forward(model) if steps else None
    best = max((h["val_mean"] for h in history), default=-1.0)
    train_time, seen = 0.0, 0

    def checkpoint(step: int) -> None:
        nonlocal out, replaces
        metadata["history"] = history
        save_checkpoint(out / "last.pt", model, metadata, optimizer, step)
        if replaces is not None:  # the new run has a checkpoint: now it may replace the old
            out, replaces = _replace_run(out, replaces), None

    def validation(done: int, loss: float, bar) -> None:
        nonlocal best
        weights = model.calibrate_map_weights(
            torch.from_numpy(normalize(val[0][val[1] == 0], cfg)).to(device)
        )
        if weights is not None:
            metadata["map_stats"] = {
                "scale": job.model.map_scale,
                "student": weights[0],
                "memory": weights[1],
            }
        metrics = validate(model, val, cfg, device)
        metrics.update(
            step=done,
            loss=loss,
            val_mean=(metrics.get("i_auroc", 0) + metrics.get("p_auroc", 0)) / 2,
        )
        history.append(metrics)
        bar.console.print(
            f"step {done}: val I-AUC {metrics.get('i_auroc', float('nan')):.4f} "
            f"P-AUC {metrics.get('p_auroc', float('nan')):.4f} "
            f"PRO@0.3 {metrics.get('pro_30', float('nan')):.4f}"
        )
        metadata["score_stats"] = metrics["score_stats"]
        if metrics["val_mean"] > best:
            best = metrics["val_mean"]
            metadata["history"] = history
            save_checkpoint(out / "best.pt", model, metadata, None, done)

    with _progress(console) as bar:
        task = bar.add_task(f"train {job.category}", total=max(steps, 1), completed=start, info="")
        if not steps and ctx.is_main:
            validation(0, 0.0, bar)
            checkpoint(0)
            bar.update(task, completed=1, info="memory only: nothing to train")
        for step in range(start, steps):
            t0 = time.perf_counter()
            augmented, clean, _, is_anomalous = source.batch(step)
            x_aug = torch.from_numpy(normalize(augmented, cfg)).to(device)
            x_clean = torch.from_numpy(normalize(clean, cfg)).to(device)
            if device.type == "cuda" and tcfg.channels_last:
                x_aug = x_aug.contiguous(memory_format=torch.channels_last)
                x_clean = x_clean.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, tcfg)
            model.train()
            with autocast:
                features, target = forward(x_aug, x_clean)
                # under DDP: the whole batch's features, gathered from all ranks
                features, target, anomalous = ctx.gather(
                    features, target, torch.from_numpy(is_anomalous).to(device)
                )
                terms = dmgrd_loss(features, target, anomalous, tcfg.loss_weights)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(terms.total).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                terms.total.backward()
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_time += time.perf_counter() - t0
            seen += len(augmented) * ctx.world_size
            done = step + 1
            info = (
                f"loss {terms.total.item():.4f} kd {terms.kd.item():.4f} ot {terms.ot.item():.3f} "
                f"con {terms.con.item():.3f} tri {terms.triplet.item():.3f} {seen / train_time:.1f} img/s"
            )
            bar.update(task, completed=done, info=info)
            if ctx.is_main and (done % tcfg.val_every == 0 or done == steps):
                validation(done, float(terms.total.item()), bar)
            if ctx.is_main and (done % tcfg.checkpoint_every == 0 or done == steps):
                checkpoint(done)
    summary = {
        "category": job.category,
        "out": str(out),
        "steps": steps,
        "train_img_per_s": seen / train_time if train_time else None,
        "final_validation": history[-1] if history else None,
        "device": str(device),
        "processes": ctx.world_size,
        "job_digest": job.digest(),
    }
    if ctx.is_main:  # complete or absent: a runner takes it as the job's result
        atomic_write_bytes(out / "train_summary.json", json.dumps(summary, indent=2).encode())
    return summary
