"""One model on several processes: PyTorch DistributedDataParallel (gloo on CPU, nccl on CUDA).

``train_category`` asks the current context (``current()``) at a few points; in a single
process every hook is the identity. Under ``torchrun`` (or ``launch``, which is what
``dmgrd-edge train --devices N`` calls) the context is a ``Ddp``:

- rank 0 prepares the run folder, fills the memory banks (or reads the checkpoint to resume
  or start from) and broadcasts the whole model state and the optimizer state; every rank
  then starts from the same bits;
- each step every rank draws the same single-process batch (``BatchSource``: seeded by step)
  and trains on its contiguous slice of it (batch size / world size images);
- BatchNorm layers outside the frozen teacher normalise with the statistics of the whole
  batch (``SyncedBatchNorm2d``), and the loss is computed on the features of the whole
  batch gathered from all ranks in single-process order (``gather``): the memory path's
  losses (OT, triplet) compare images with each other, and a rank alone would see other
  pairs. So each step computes the loss a single process computes, and DDP's averaged
  gradient is its gradient;
- validation, checkpoints and the summary are written by rank 0 only.

What still differs from one process is floating-point summation order (per-rank partial
sums of the batch statistics and of the weight gradients, added across ranks), a few units
in the last place per step that Adam carries on; tests/test_distributed.py states the
tolerance.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import pickle
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from dmgrd_edge.errors import ConfigError, DmgrdError

TIMEOUT = timedelta(minutes=60)  # a rank waits this long for rank 0's validation/checkpoint


def _distributed():
    import torch.distributed as dist

    return dist


class Single:
    """One process: every hook hands back what it was given."""

    rank = 0
    local_rank = 0
    world_size = 1
    local_world_size = 1
    is_main = True
    active = False

    def device(self, device: torch.device, threads: int) -> torch.device:
        return device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def share_start(self, model, optimizer, start: int, metadata: dict, history: list):
        return start, metadata, history

    def forward(self, model) -> Callable:
        return lambda x_aug, x_clean: (
            model.training_features(x_aug),
            model.teacher_features(x_clean),
        )

    def batch_source(self, source):
        return source

    def gather(self, features, target, is_anomalous):
        return features, target, is_anomalous

    def agree(self, fn: Callable[[], Any]) -> Any:
        return fn()

    def barrier(self) -> None:
        pass


_SINGLE = Single()
_current: Single = _SINGLE


def current() -> Single:
    """The context ``train_category`` runs in: ``Single`` unless inside ``session``."""
    return _current


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


class _SumAcross(torch.autograd.Function):
    """The sum over ranks; its gradient is the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone(memory_format=torch.contiguous_format)
        _distributed().all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        _distributed().all_reduce(grad, group=ctx.group)
        return grad, None


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch across all ranks,
    on any backend (torch.nn.SyncBatchNorm runs on GPUs only). Same parameters, buffers and
    state-dict keys as BatchNorm2d. Outside a training step that records gradients (eval
    mode, or the validation's calibration under no_grad, which only rank 0 runs) it is the
    plain layer."""

    group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # AMP: fp32 sums
        dims = (0, 2, 3)
        count = xf.new_tensor([x.numel() / x.shape[1]])
        totals = _SumAcross.apply(torch.cat([xf.sum(dims), count]), self.group)
        n = totals[-1]
        mean = totals[:-1] / n
        centered = xf - mean[None, :, None, None]
        var = _SumAcross.apply((centered * centered).sum(dims), self.group) / n
        y = centered * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum
                if m is None:
                    m = 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean), alpha=m)
                unbiased = var.detach() * (n / torch.clamp(n - 1, min=1))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var), alpha=m)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, group, skip: tuple[str, ...] = ("teacher",)) -> nn.Module:
    """Replace the BatchNorm2d layers of ``module`` (except under ``skip``: the frozen teacher
    runs in eval mode) by SyncedBatchNorm2d sharing the same parameters and buffers."""
    for name, child in module.named_children():
        if name in skip:
            continue
        if type(child) is nn.BatchNorm2d:
            new = SyncedBatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.group = group
            new.train(child.training)
            setattr(module, name, new)
        else:
            sync_batchnorm(child, group, ())
    return module


class _GatherBatch(torch.autograd.Function):
    """Concatenate every rank's slice along the batch in rank order (= the single-process
    batch). Backward: the gradient of the whole batch summed over ranks (each rank computed
    the same loss on it), the rank's own slice returned; DDP then averages over ranks, which
    gives the single-process gradient."""

    @staticmethod
    def forward(ctx, x, group, rank, world):
        dist = _distributed()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.group, ctx.rank, ctx.n = group, rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        _distributed().all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None, None, None


class _TrainingForward(nn.Module):
    """What DDP wraps: one training step's forward (DDP hooks ``forward`` only)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x_aug, x_clean):
        return self.model.training_features(x_aug), self.model.teacher_features(x_clean)


class _Slice:
    """This rank's contiguous share of the single-process batch of each step."""

    def __init__(self, source, rank: int, world: int):
        size = source.cfg.batch_size
        if size % world:
            raise ConfigError(
                f"batch size {size} does not split over {world} processes",
                f"use a batch size that is a multiple of {world} (the batch is the total over "
                "all processes)",
            )
        self.source, self.lo, self.hi = source, rank * size // world, (rank + 1) * size // world

    def batch(self, step: int):
        return tuple(a[self.lo : self.hi] for a in self.source.batch(step))


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class Ddp(Single):
    active = True

    def __init__(self, backend: str):
        dist = _distributed()
        self.backend = backend
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        self.is_main = self.rank == 0
        # batch statistics and the gathered batch travel on a group of their own, beside
        # DDP's gradient buckets; Python objects on a CPU (gloo) group
        self.group = dist.new_group(backend=backend, timeout=TIMEOUT)
        self.objects = self.group if backend == "gloo" else dist.new_group(backend="gloo")

    def device(self, device: torch.device, threads: int) -> torch.device:
        if device.type == "cuda":
            if device.index is not None and self.world_size > 1:
                raise ConfigError(
                    f"device {device} asked for with {self.world_size} processes",
                    "use --device cuda or auto: each process takes the GPU of its local rank",
                )
            if self.local_world_size > torch.cuda.device_count():
                raise ConfigError(
                    f"{self.local_world_size} processes on this machine but "
                    f"{torch.cuda.device_count()} GPUs",
                    "start at most one process per GPU (--nproc-per-node / --devices)",
                )
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        elif self.backend == "nccl":
            raise ConfigError(
                "the process group uses nccl but the model is on the CPU",
                "use --device cuda, or train on CPU processes with the gloo backend",
            )
        elif not threads:  # the cores are shared by the processes of this machine
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.local_world_size))
        return device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return sync_batchnorm(model, self.group)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj if self.is_main else None]
        _distributed().broadcast_object_list(box, src=0, group=self.objects)
        return box[0]

    def agree(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on rank 0, its result on every rank."""
        return self.broadcast(fn() if self.is_main else None)

    def share_start(self, model, optimizer, start: int, metadata: dict, history: list):
        """Rank 0 filled the memory or read the checkpoint: every rank takes its state."""
        state = None
        if self.is_main:
            state = {
                "model": _to_cpu(model.state_dict()),
                "optimizer": _to_cpu(optimizer.state_dict()) if optimizer is not None else None,
                "start": start,
                "metadata": metadata,
                "history": history,
                "teacher_source": model.teacher_source,
            }
        state = self.broadcast(state)
        if not self.is_main:
            model.load_state_dict(state["model"])
            if optimizer is not None:
                optimizer.load_state_dict(state["optimizer"])
            model.teacher_source = state["teacher_source"]
        return state["start"], state["metadata"], state["history"]

    def forward(self, model) -> Callable:
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        # buffers (the memory banks: megabytes) are identical on every rank by construction:
        # synced once when DDP starts, not before every step
        options = inspect.signature(DistributedDataParallel).parameters
        sync = "forward_sync_buffers" if "forward_sync_buffers" in options else "broadcast_buffers"
        return DistributedDataParallel(
            _TrainingForward(model),
            device_ids=[device.index] if device.type == "cuda" else None,
            **{sync: False},
        )

    def batch_source(self, source):
        return _Slice(source, self.rank, self.world_size)

    def _gather(self, x):
        if x is None:
            return None
        if isinstance(x, (list, tuple)):
            return type(x)(self._gather(t) for t in x)
        return _GatherBatch.apply(x, self.group, self.rank, self.world_size)

    def gather(self, features, target, is_anomalous):
        flags = self._gather(is_anomalous.to(torch.uint8)).bool()
        return type(features)(*(self._gather(f) for f in features)), self._gather(target), flags

    def barrier(self) -> None:
        _distributed().barrier(group=self.objects)


@contextlib.contextmanager
def session(device_name: str = "auto"):
    """The process group for a run started by torchrun (or ``launch``); ``Single`` otherwise.
    gloo when the model runs on the CPU, nccl on CUDA."""
    global _current
    if not launched_by_torchrun():
        yield _SINGLE
        return
    from .loop import pick_device

    dist = _distributed()
    backend = "nccl" if pick_device(device_name).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=TIMEOUT)
    ctx = Ddp(backend)
    _current = ctx
    ok = False
    try:
        yield ctx
        ok = True
    finally:
        _current = _SINGLE
        if ok:  # after an error the other ranks are not waiting here
            ctx.barrier()
        dist.destroy_process_group()


def _worker(jobs: Sequence, device_name: str, errors: str) -> list[dict[str, Any]]:
    """One process of ``launch``: the jobs one after another in one process group."""
    from rich.console import Console

    from .runners import LocalRunner

    try:
        with session(device_name) as ctx:
            console = Console(stderr=True) if ctx.is_main else Console(quiet=True)
            return LocalRunner().run(list(jobs), console)
    except DmgrdError as exc:  # the launcher reports exit codes only: keep problem and fix
        rank = os.environ.get("RANK", "0")
        Path(errors, f"rank{int(rank):05d}.pickle").write_bytes(pickle.dumps(exc))
        raise


def launch(jobs: Sequence, processes: int, device_name: str = "auto") -> list[dict[str, Any]]:
    """Train ``jobs`` one after another, each on ``processes`` processes of this machine
    (torchrun's launcher: one process per GPU on CUDA, gloo processes on the CPU). Returns
    rank 0's summaries. A failing process ends the others; a DmgrdError is raised as is."""
    if processes < 2:
        raise ConfigError(f"launch needs at least 2 processes, got {processes}")
    for job in jobs:
        if job.train.batch_size % processes:
            raise ConfigError(
                f"--batch-size {job.train.batch_size} does not split over {processes} processes",
                f"use a multiple of {processes}: the batch size is the total over all processes",
            )
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=f"dmgrd-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    quiet = logging.getLogger("torch.distributed.elastic")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="dmgrd-launch-") as errors:
            try:
                results = elastic_launch(config, _worker)(list(jobs), device_name, errors)
            except ChildFailedError as exc:
                found = sorted(Path(errors).glob("rank*.pickle"))
                if found:
                    raise pickle.loads(found[0].read_bytes()) from None
                first = exc.get_first_failure()[1]
                raise DmgrdError(
                    f"training process {first.local_rank} of {processes} failed "
                    f"(exit code {first.exitcode}): {first.message or 'see its output above'}",
                    "read the traceback above; a process killed for memory exits -9",
                ) from None
    finally:
        quiet.setLevel(level)
    return results[0]
