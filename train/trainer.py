"""`train_category`: one DM-GRD model for one category, end to end."""

from __future__ import annotations

import contextlib
import dataclasses
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
from dmgrd_edge.config import SynthesisConfig
from dmgrd_edge.data.datasets import index_category
from dmgrd_edge.data.synthesis import AnomalySynthesizer
from dmgrd_edge.errors import ConfigError, DataError
from dmgrd_edge.model import DMGRD
from dmgrd_edge.options import TrainJob

from . import distributed
from .checkpoint import load_weights, read_checkpoint, save_checkpoint
from .loop import (
    BatchSource,
    as_tensor,
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
            as_tensor(images[idx], cfg, device),
            as_tensor(abnormal, cfg, device),
        )
        record.update(size=k, train_indices=idx.tolist())
    if job.model.uses_patch_memory:
        t0 = time.perf_counter()
        model.fill_patch_memory(as_tensor(images, cfg, device), job.train.seed)
        record["patch_memory"] = {
            "rows_per_level": job.model.patch_bank_size,
            "from_images": int(len(images)),
            "fill_seconds": round(time.perf_counter() - t0, 2),
        }
    record["bytes"] = model.memory_bytes()
    return record


def _resumed_synthesis(job: TrainJob, console: Console) -> TrainJob:
    """A resumed run goes on with the pseudo-anomaly synthesis it was trained with (its
    last.pt's; the defaults for a checkpoint from before they were stored). Settings asked
    for that differ from the defaults and from the run's are refused."""
    path = Path(job.out_dir) / "last.pt"
    stored = distributed.current().agree(
        lambda: read_checkpoint(path)["metadata"].get("train_config", {}).get("synthesis")
    )
    trained, asked = SynthesisConfig.from_dict(stored), job.train.synthesis
    if asked == trained:
        return job
    if asked != SynthesisConfig():
        raise ConfigError(
            f"{path} was trained with the synthesis {trained.describe()}, not {asked.describe()}",
            "resume with the same --synthesis settings (or none: the run's are used), or start "
            "a new run with --overwrite",
        )
    console.print(f"resuming with the run's synthesis settings: {trained.describe()}")
    return dataclasses.replace(job, train=dataclasses.replace(job.train, synthesis=trained))


def _read_split(job: TrainJob, index, console: Console) -> dict[str, Any]:
    """Training images split into train and validation (with pseudo-anomalous copies)."""
    cfg, tcfg = job.model.preprocess(), job.train
    with _progress(console) as bar:
        task = bar.add_task("loading", total=len(index.train), info="")
        images = load_images(
            [s.path for s in index.train], cfg, lambda xs: (bar.advance(task) or x for x in xs)
        )
    train_idx, val_idx = split_train_val(len(images), tcfg.val_fraction, tcfg.seed)
    synth = AnomalySynthesizer(cfg.height, cfg.width, tcfg.texture_dir, tcfg.synthesis)
    return {
        "train": images[train_idx],
        "val": make_validation_set(images[val_idx], synth, tcfg.seed),
        "synth": synth,
        "n_train": int(len(train_idx)),
        "n_val_normal": int(len(val_idx)),
    }


def _build_model(job: TrainJob, device):
    """The model (seeded), its optimizer (None for the memory-only baseline) and its steps."""
    tcfg = job.train
    torch.manual_seed(tcfg.seed)
    # a model started from a checkpoint takes its teacher from there too
    model = DMGRD(job.model, job.pretrained and not job.init_from, job.teacher_weights).to(device)
    if device.type == "cuda" and tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = distributed.current().prepare_model(model)
    trainable = model.trainable_parameters()
    # the nearest-neighbour baseline has nothing to train: its memory is all there is
    steps = tcfg.steps if trainable else 0
    optimizer = torch.optim.Adam(trainable, lr=tcfg.lr, betas=(0.5, 0.999)) if trainable else None
    return model, optimizer, steps


def _metadata(job: TrainJob, model, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset": job.dataset,
        "root": str(job.root),
        "category": job.category,
        "teacher_weights": model.teacher_source,
        "selection_rule": job.model.selection,
        "train_config": job.train.to_dict(),
        "synthesis": data["synth"].source_kind,
        "n_train": data["n_train"],
        "n_val_normal": data["n_val_normal"],
        "versions": {
            "dmgrd_edge": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
        "model_selection": "last checkpoint and best validation checkpoint; never the test set",
    }


def _start_from(job: TrainJob, out: Path, model, optimizer, metadata, data, device, console):
    """Step to start at and the metadata to continue: a resumed run's, a checkpoint's weights
    (pruning's fine-tune, with that run's memory banks), or a fresh memory. Under DDP rank 0
    does this and every rank takes its result (train/distributed.py)."""
    ctx = distributed.current()
    start = 0
    if ctx.is_main:
        start, metadata = _start_on_main(
            job, out, model, optimizer, metadata, data, device, console
        )
    start, metadata, history = ctx.share_start(
        model, optimizer, start, metadata, metadata.get("history", [])
    )
    metadata["history"] = history
    metadata["processes"] = ctx.world_size
    return start, metadata


def _start_on_main(job: TrainJob, out: Path, model, optimizer, metadata, data, device, console):
    if job.resume:
        payload = read_checkpoint(out / "last.pt")
        model.load_state_dict(payload["state_dict"])
        if optimizer is not None:
            optimizer.load_state_dict(payload["optimizer"])
        console.print(f"resuming at step {payload['step']}")
        return payload["step"], payload["metadata"]
    if job.init_from:
        init = read_checkpoint(job.init_from)
        load_weights(model, init, job.init_from)
        metadata["teacher_weights"] = model.teacher_source
        # the memory banks stay those of the run it came from (filled from its training images)
        for key in ("memory", "pruning"):
            if key in init["metadata"]:
                metadata[key] = init["metadata"][key]
        metadata["init_from"] = str(job.init_from)
        return 0, metadata
    metadata["memory"] = _fill_memory(model, data["train"], data["synth"], job, device, console)
    return 0, metadata


class _Session:
    """One training run's state between steps: checkpoints, validation, the optimizer step."""

    def __init__(self, job, model, optimizer, metadata, val, device, out, replaces):
        self.job, self.model, self.optimizer, self.metadata = job, model, optimizer, metadata
        self.val, self.device, self.out, self.replaces = val, device, out, replaces
        self.cfg, self.tcfg = job.model.preprocess(), job.train
        self.history = metadata.get("history", [])
        self.best = max((h["val_mean"] for h in self.history), default=-1.0)
        self.autocast, self.scaler = _autocast(device, self.tcfg.amp)
        self.train_time, self.seen = 0.0, 0
        self.ctx = distributed.current()
        self.forward = self.ctx.forward(model) if optimizer is not None else None

    def checkpoint(self, step: int) -> None:
        self.metadata["history"] = self.history
        save_checkpoint(self.out / "last.pt", self.model, self.metadata, self.optimizer, step)
        if self.replaces is not None:  # the new run has a checkpoint: now it may replace the old
            self.out, self.replaces = _replace_run(self.out, self.replaces), None

    def validation(self, done: int, loss: float, bar) -> None:
        model, val = self.model, self.val
        weights = model.calibrate_map_weights(as_tensor(val[0][val[1] == 0], self.cfg, self.device))
        if weights is not None:
            self.metadata["map_stats"] = {
                "scale": self.job.model.map_scale,
                "student": weights[0],
                "memory": weights[1],
            }
        metrics, choice = validate(model, val, self.cfg, self.device)
        if choice is not None:
            self.metadata["image_score_choice"] = choice
        metrics.update(
            step=done,
            loss=loss,
            val_mean=(metrics.get("i_auroc", 0) + metrics.get("p_auroc", 0)) / 2,
        )
        self.history.append(metrics)
        bar.console.print(
            f"step {done}: val I-AUC {metrics.get('i_auroc', float('nan')):.4f} "
            f"P-AUC {metrics.get('p_auroc', float('nan')):.4f} "
            f"PRO@0.3 {metrics.get('pro_30', float('nan')):.4f}"
        )
        self.metadata["score_stats"] = metrics["score_stats"]
        if metrics["val_mean"] > self.best:
            self.best = metrics["val_mean"]
            self.metadata["history"] = self.history
            save_checkpoint(self.out / "best.pt", model, self.metadata, None, done)

    def step(self, step: int, source: BatchSource):
        """One optimizer step; returns the loss terms."""
        t0 = time.perf_counter()
        augmented, clean, _, is_anomalous = source.batch(step)
        device, cfg = self.device, self.cfg
        x_aug, x_clean = as_tensor(augmented, cfg, device), as_tensor(clean, cfg, device)
        if device.type == "cuda" and self.tcfg.channels_last:
            x_aug = x_aug.contiguous(memory_format=torch.channels_last)
            x_clean = x_clean.contiguous(memory_format=torch.channels_last)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.tcfg)
        self.model.train()
        with self.autocast:
            features, target = self.forward(x_aug, x_clean)
            # under DDP: the whole batch's features, gathered from all ranks
            features, target, anomalous = self.ctx.gather(
                features, target, torch.from_numpy(is_anomalous).to(device)
            )
            terms = dmgrd_loss(features, target, anomalous, self.tcfg.loss_weights)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(terms.total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            terms.total.backward()
            self.optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        self.train_time += time.perf_counter() - t0
        self.seen += len(augmented) * self.ctx.world_size
        return terms

    def progress_info(self, terms) -> str:
        return (
            f"loss {terms.total.item():.4f} kd {terms.kd.item():.4f} ot {terms.ot.item():.3f} "
            f"con {terms.con.item():.3f} tri {terms.triplet.item():.3f} "
            f"{self.seen / self.train_time:.1f} img/s"
        )


def _train_loop(session: _Session, source: BatchSource, start: int, steps: int, console):
    tcfg = session.tcfg
    with _progress(console) as bar:
        task = bar.add_task(
            f"train {session.job.category}", total=max(steps, 1), completed=start, info=""
        )
        main = session.ctx.is_main
        if not steps and main:
            session.validation(0, 0.0, bar)
            session.checkpoint(0)
            bar.update(task, completed=1, info="memory only: nothing to train")
        for step in range(start, steps):
            terms = session.step(step, source)
            done = step + 1
            bar.update(task, completed=done, info=session.progress_info(terms))
            if main and (done % tcfg.val_every == 0 or done == steps):
                session.validation(done, float(terms.total.item()), bar)
            if main and (done % tcfg.checkpoint_every == 0 or done == steps):
                session.checkpoint(done)


def train_category(job: TrainJob, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    ctx = distributed.current()  # one process, or one rank of several (train/distributed.py)
    if job.train.threads:
        torch.set_num_threads(job.train.threads)
    device = ctx.device(pick_device(job.device), job.train.threads)
    index = index_category(job.dataset, job.root, job.category)
    out, replaces = _prepare_out_dir(job) if ctx.is_main else (Path(job.out_dir), None)
    console.print(f"[bold]{index.summary()}[/] -> {replaces or out} on {device}")
    digest = job.digest()  # of the job as asked for: what a runner compares the summary with
    job = _resumed_synthesis(job, console) if job.resume else job
    data = _read_split(job, index, console)
    model, optimizer, steps = _build_model(job, device)
    metadata = _metadata(job, model, data)
    start, metadata = _start_from(job, out, model, optimizer, metadata, data, device, console)
    session = _Session(job, model, optimizer, metadata, data["val"], device, out, replaces)
    source = ctx.batch_source(BatchSource(data["train"], data["synth"], job.train))
    _train_loop(session, source, start, steps, console)
    summary = {
        "category": job.category,
        "out": str(session.out),
        "steps": steps,
        "train_img_per_s": session.seen / session.train_time if session.train_time else None,
        "final_validation": session.history[-1] if session.history else None,
        "device": str(device),
        "processes": ctx.world_size,
        "job_digest": digest,
    }
    if ctx.is_main:  # complete or absent: a runner takes it as the job's result
        summary_json = json.dumps(summary, indent=2).encode()
        atomic_write_bytes(session.out / "train_summary.json", summary_json)
    return summary
