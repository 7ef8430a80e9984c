"""Where a list of jobs runs: here one after another (``LocalRunner``; ``devices=N`` trains
each job on N local processes with DDP), or as tasks on a Ray cluster (``RayRunner``).

Both take the same ``Task`` list and return one result per task, in task order. A task whose
result file (written atomically by the task when it is complete) holds the task's digest is
finished: it is not run again and its file is its result. So the same command run again
after a crash, a lost node or a cancelled sweep only runs what is missing.

``train_tasks(jobs)`` makes the tasks of ``dmgrd-edge train``; a sweep builds its own (any
module-level function returning a JSON-able dict, with a result file and a digest).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console

from dmgrd_edge.errors import ConfigError, DmgrdError

from .distributed import current, launch
from dmgrd_edge.options import TrainJob

SUMMARY = "train_summary.json"


@dataclass(frozen=True)
class Task:
    name: str  # for logs and errors
    fn: Callable[..., dict[str, Any]]  # module level: a Ray worker imports it by name
    args: tuple = ()
    result: str | None = None  # the JSON file the task writes atomically once it is complete
    digest: str | None = None  # that file is this task's result when its "job_digest" is this


def finished(task: Task) -> dict[str, Any] | None:
    """The task's result if a complete result file of this very task exists, else None."""
    if task.result is None or task.digest is None:
        return None
    path = Path(task.result)
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError as exc:  # written atomically, so not half of one: something else
        raise DmgrdError(
            f"{path} is not a result file of dmgrd-edge: {exc}",
            "move it away (the run in its folder is then trained again) or pass --overwrite",
        ) from exc
    return result if isinstance(result, dict) and result.get("job_digest") == task.digest else None


def _train(job: TrainJob) -> dict[str, Any]:
    from .trainer import train_category

    return train_category(job, Console(stderr=True) if current().is_main else Console(quiet=True))


def _continue_or_start(job: TrainJob, console: Console) -> TrainJob:
    """With --resume over many jobs: a job whose folder does not exist yet starts afresh."""
    out = Path(job.out_dir)
    if job.resume and not (out / "last.pt").is_file() and not (out.exists() and any(out.iterdir())):
        console.print(f"{job.category}: nothing to resume in {out}, starting it")
        return dataclasses.replace(job, resume=False)
    return job


def train_tasks(jobs: Sequence[TrainJob], console: Console | None = None) -> list[Task]:
    console = console or Console(stderr=True)
    return [
        Task(
            job.category,
            _train,
            (_continue_or_start(job, console),),
            None if job.overwrite else str(Path(job.out_dir) / SUMMARY),
            job.digest(),
        )
        for job in jobs
    ]


class Runner:
    def run_tasks(self, tasks: Sequence[Task], console: Console) -> list[dict[str, Any]]:
        raise NotImplementedError

    def run(self, jobs: Sequence[TrainJob], console: Console | None = None) -> list[dict]:
        """Train ``jobs``; their summaries in job order."""
        console = console or Console(stderr=True)
        if not current().is_main:  # under torchrun every rank runs this; rank 0 speaks
            console = Console(quiet=True)
        return self.run_tasks(train_tasks(jobs, console), console)

    @staticmethod
    def split(tasks: Sequence[Task], console: Console):
        """(results of the finished tasks by index, the indices still to run). Under DDP
        rank 0 looks and every rank takes its answer."""
        done = current().agree(lambda: [finished(t) for t in tasks])
        for task, result in zip(tasks, done):
            if result is not None:
                console.print(f"{task.name}: finished before ({task.result}), not run again")
        return {i: r for i, r in enumerate(done) if r is not None}, [
            i for i, r in enumerate(done) if r is None
        ]


class LocalRunner(Runner):
    """One task after another in this process; ``devices=N`` (N >= 2) trains each job on N
    processes of this machine (``distributed.launch``)."""

    def __init__(self, devices: int = 1, device: str = "auto"):
        self.devices, self.device = devices, device

    def run_tasks(self, tasks: Sequence[Task], console: Console) -> list[dict[str, Any]]:
        if not current().is_main:
            console = Console(quiet=True)
        results, todo = self.split(tasks, console)
        if self.devices > 1 and todo:
            if any(tasks[i].fn is not _train for i in todo):
                raise ConfigError("only training tasks run on several local processes")
            jobs = [tasks[i].args[0] for i in todo]
            results.update(zip(todo, launch(jobs, self.devices, self.device)))
            todo = []
        for i in todo:
            results[i] = tasks[i].fn(*tasks[i].args)
        return [results[i] for i in range(len(tasks))]


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "--ray needs Ray, which is not installed here",
            "pip install 'dmgrd-edge[cluster]' (on the machine that submits and on every "
            "node), or run without --ray to train here one job after another",
        ) from exc
    return ray


def _call(fn, args, threads: int):
    """A Ray task: ``fn(*args)`` on as many torch threads as the task holds CPUs."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return fn(*args)


class RayRunner(Runner):
    """Each task is a Ray task holding ``num_cpus`` CPUs and ``num_gpus`` GPUs. ``address``:
    "auto" (the cluster this machine belongs to, e.g. after `ray start --head`), "local" (a
    Ray instance started here for this run), or a cluster address (host:6379 or
    ray://host:10001). Results are written by the tasks to their out folders, which must be
    on a path every node sees at the same name."""

    def __init__(self, address: str = "auto", num_cpus: float = 1.0, num_gpus: float = 0.0):
        if num_cpus < 0 or num_gpus < 0 or not (num_cpus or num_gpus):
            raise ConfigError(
                f"a Ray task needs some CPUs or GPUs, got {num_cpus} CPUs and {num_gpus} GPUs",
                "give --ray-cpus N (N > 0) and/or --ray-gpus N",
            )
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        _import_ray()  # refused before any work, not after it

    def _connect(self):
        ray = _import_ray()
        if ray.is_initialized():
            return ray
        try:
            if self.address == "local":
                ray.init(include_dashboard=False)
            else:
                ray.init(address=self.address)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach a Ray cluster at {self.address!r}: {str(exc)[:300]}",
                "start one with `ray start --head` on this machine (then --ray auto), give the "
                "head's address (host:6379 or ray://host:10001), or --ray local",
            ) from exc
        return ray

    def _check_resources(self, ray) -> None:
        have = ray.cluster_resources()
        for name, need in (("CPU", self.num_cpus), ("GPU", self.num_gpus)):
            if need > have.get(name, 0):
                raise ConfigError(
                    f"each task asks for {need:g} {name}s but the Ray cluster has "
                    f"{have.get(name, 0):g}: no task could ever start",
                    f"lower --ray-{name.lower()}s or add nodes with {name}s to the cluster",
                )

    def run_tasks(self, tasks: Sequence[Task], console: Console) -> list[dict[str, Any]]:
        results, todo = self.split(tasks, console)
        if todo:
            ray = self._connect()
            self._check_resources(ray)
            results.update(self._run_remote(ray, [tasks[i] for i in todo], todo, console))
        return [results[i] for i in range(len(tasks))]

    def _run_remote(self, ray, tasks, indices, console) -> dict[int, dict[str, Any]]:
        from ray.exceptions import RayError, RayTaskError

        remote = ray.remote(_call)
        threads = max(1, int(self.num_cpus))
        t0 = time.perf_counter()
        pending = {
            remote.options(
                num_cpus=self.num_cpus, num_gpus=self.num_gpus, name=task.name, max_retries=0
            ).remote(task.fn, task.args, threads): (i, task)
            for i, task in zip(indices, tasks)
        }
        console.print(
            f"{len(pending)} tasks sent to Ray ({self.num_cpus:g} CPUs, "
            f"{self.num_gpus:g} GPUs each)"
        )
        results, failures = {}, []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i, task = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                    console.print(f"{task.name}: done after {time.perf_counter() - t0:.0f} s")
                except RayTaskError as exc:
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    failures.append((task.name, cause))
                    console.print(f"{task.name}: failed: {_problem(cause)}")
                except RayError as exc:  # the worker or its node died
                    failures.append((task.name, exc))
                    console.print(f"{task.name}: lost: {_problem(exc)}")
        if failures:
            if len(failures) == 1 and isinstance(failures[0][1], DmgrdError):
                raise failures[0][1]
            listed = "; ".join(f"{name}: {_problem(exc)}" for name, exc in failures)
            raise DmgrdError(
                f"{len(failures)} of {len(tasks)} Ray tasks failed: {listed}",
                "fix the cause and run the same command again with --resume: finished runs "
                "are not run again, interrupted ones continue from their last checkpoint",
            )
        return results


def _problem(exc: BaseException) -> str:
    text = exc.problem if isinstance(exc, DmgrdError) else f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:300] if text else type(exc).__name__


def make_runner(
    ray: str | None = None,
    devices: int = 1,
    device: str = "auto",
    ray_cpus: float = 1.0,
    ray_gpus: float = 0.0,
) -> Runner:
    """The runner the command-line options ask for (`train`, a sweep)."""
    if ray is not None and devices > 1:
        raise ConfigError(
            "--devices and --ray together: a Ray task trains its model in one process",
            "use --ray with --ray-gpus 1 (one GPU per task, many tasks at once), or "
            "--devices N without --ray (one model over N local devices)",
        )
    if devices > 1 and current().active:
        raise ConfigError(
            "--devices given to a process started by torchrun",
            "drop --devices (torchrun's --nproc-per-node sets the process count)",
        )
    if ray is not None:
        return RayRunner(ray, ray_cpus, ray_gpus)
    return LocalRunner(devices, device)
