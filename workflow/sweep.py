"""`dmgrd-edge sweep`: a matrix of variants (backbones x model variants x pruning ratios x
precisions) on one dataset category, each trained (or reused), pruned, exported, evaluated
and benched, then the trade-off report over all of them.

Every stage writes its output whole and is skipped when that output is already there, so a
sweep that was stopped (Ctrl-C, a kill, a power cut) continues where it stopped when it is
started again with the same settings:

    OUT/sweep.json                      the settings and the matrix (a new run must agree)
    OUT/runs/<backbone>-<model>/        training (train_summary.json once finished; resumed
                                        from last.pt when it stopped in between)
    OUT/runs/<backbone>-<model>-p<R>/   pruning and fine-tune (train_summary.json once finished)
    OUT/eval/<stem>/eval.json           PyTorch evaluation and heat-map overlays per checkpoint
    OUT/bundles/<stem>/                 the bundle (committed whole by the export)
    OUT/bench/<variant>.json            `dmgrd-edge bench` in its own process
    OUT/results/<variant>.json          the bench result plus what the sweep knows of the
                                        variant; written atomically, last: its presence with
                                        the same settings is what "finished" means
    OUT/report/                         `dmgrd-edge report` over the matrix's results

Latency is measured by `dmgrd-edge bench` in a process of its own, so the training that
ran before in this process (its memory, its thread pool) does not enter the figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dmgrd_edge import catalog
from dmgrd_edge.atomic import atomic_write_bytes
from dmgrd_edge.errors import ConfigError, DataError, DmgrdError
from dmgrd_edge.options import SETTING_FIELDS, SWEEP_MODELS, SweepConfig

RESULT_KEYS = ("latency", "backend", "model", "sweep")


@dataclass(frozen=True)
class Variant:
    """One row of the report: a model (backbone, variant, pruning) in one precision."""

    backbone: str
    model: str
    ratio: float
    precision: str

    @property
    def run(self) -> str:  # the training run (unpruned)
        return f"{self.backbone}-{self.model}"

    @property
    def stem(self) -> str:  # the checkpoint, its evaluation and its bundle
        return f"{self.run}-p{round(100 * self.ratio)}"

    @property
    def id(self) -> str:
        return f"{self.stem}-{self.precision}"

    @property
    def label(self) -> str:  # the report's name for it (the report adds the precision)
        text = self.backbone if self.model == "default" else f"{self.backbone} {self.model}"
        return text + (f" pruned {round(100 * self.ratio)}%" if self.ratio else "")


def plan(config: SweepConfig) -> tuple[list[Variant], list[str]]:
    """The matrix in the order it runs (one training after another), and what is left out."""
    variants, skipped = [], []
    for backbone in config.backbones:
        for model in config.models:
            for ratio in sorted(config.ratios):
                if ratio and model == "knn":
                    skipped.append(
                        f"{backbone} knn pruned {round(100 * ratio)}%: the nearest-neighbour "
                        "baseline has no trained channels to prune"
                    )
                    continue
                variants += [Variant(backbone, model, ratio, p) for p in config.precisions]
    return variants, skipped


class Paths:
    def __init__(self, out: Path):
        self.out = out
        self.config = out / "sweep.json"
        self.report = out / "report"

    def run(self, v: Variant) -> Path:
        return self.out / "runs" / (v.run if not v.ratio else v.stem)

    def checkpoint(self, v: Variant) -> Path:
        return self.run(v) / "last.pt"

    def eval(self, v: Variant) -> Path:
        return self.out / "eval" / v.stem

    def bundle(self, v: Variant) -> Path:
        return self.out / "bundles" / v.stem

    def bench(self, v: Variant) -> Path:
        return self.out / "bench" / f"{v.id}.json"

    def log(self, v: Variant) -> Path:
        return self.out / "logs" / f"{v.id}.bench.log"

    def result(self, v: Variant) -> Path:
        return self.out / "results" / f"{v.id}.json"


def read_json(path: Path) -> Any | None:
    """The JSON at ``path``; None when missing or unreadable (a stage to run again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished_result(path: Path, variant: Variant, settings: dict) -> dict | None:
    """The variant's result when complete and made with these settings; else None."""
    data = read_json(path)
    if not isinstance(data, dict) or not all(k in data for k in RESULT_KEYS):
        return None
    sweep = data["sweep"]
    if not isinstance(sweep, dict) or sweep.get("id") != variant.id:
        return None
    return data if sweep.get("settings") == settings else None


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, default=str).encode())


def check_sweep_folder(paths: Paths, config: SweepConfig) -> None:
    """A sweep folder holds the results of one set of settings: a folder made with other
    ones is refused (its results would be mixed with new ones), anything else is not one."""
    out = paths.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file", "give a folder for the sweep")
    if paths.config.exists():
        old = read_json(paths.config)
        if not isinstance(old, dict) or "settings" not in old:
            raise DataError(
                f"{paths.config} is not a sweep record",
                "give another --out, or remove that folder to start the sweep again",
            )
        new = config.settings()
        differ = [k for k in SETTING_FIELDS if old["settings"].get(k) != new[k]]
        if differ:
            said = ", ".join(
                f"{k}: {old['settings'].get(k)!r} there, {new[k]!r} now" for k in differ
            )
            raise ConfigError(
                f"{out} holds a sweep made with other settings ({said})",
                "give the same settings to continue it, or another --out for a new sweep",
            )
    elif out.is_dir() and any(out.iterdir()):
        raise DataError(
            f"--out {out} is a folder that holds no sweep (no sweep.json)",
            "give a new or empty folder, or the folder of the sweep to continue",
        )


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that were waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """A bench process ends when the sweep does (a killed sweep leaves no bench running)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def bench_command(config: SweepConfig, paths: Paths, v: Variant) -> list[str]:
    """`dmgrd-edge bench` for one variant, run with this interpreter."""
    return [
        sys.executable,
        "-m",
        "dmgrd_edge.cli",
        "bench",
        str(paths.bundle(v)),
        "--backend",
        "onnxruntime",
        "--precision",
        v.precision,
        "--batch",
        ",".join(str(b) for b in config.bench_batches),
        "--warmup",
        str(config.bench_warmup),
        "--runs",
        str(config.bench_runs),
        "--data",
        str(config.data),
        "--dataset",
        config.dataset,
        "--category",
        config.category,
        "--threads",
        str(config.threads),
        "--workers",
        config.workers,
        "--label",
        v.label,
        "--out",
        str(paths.bench(v)),
    ]


class Sweep:
    """Runs the matrix stage by stage; ``run()`` returns the summary."""

    def __init__(self, config: SweepConfig, console: Console | None = None):
        self.config = config.validate()
        self.console = console or Console(stderr=True)
        self.paths = Paths(Path(config.out))
        self.variants, self.skipped = plan(config)
        self.settings = config.settings()
        self.seconds: dict[str, dict[str, float]] = {}
        self.started = False

    # -- one stage each; each returns at once when its output is there ----------------------

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def train(self, v: Variant) -> Path:
        from dmgrd_edge.options import TrainJob
        from dmgrd_edge.train.trainer import train_category

        from dmgrd_edge.config import TrainConfig, model_config_from_options

        base = dataclasses.replace(v, ratio=0.0)
        out = self.paths.run(base)
        if (out / "train_summary.json").is_file() and (out / "last.pt").is_file():
            return out / "last.pt"
        c = self.config
        model = model_config_from_options(
            backbone=v.backbone,
            image_size=c.image_size,
            memory_size=c.memory_size,
            image_score=c.image_score,
            **SWEEP_MODELS[v.model][0],
        )
        steps = c.steps
        train = TrainConfig(
            steps=steps,
            batch_size=c.batch_size,
            lr=c.lr,
            # the train command's 100 warm-up steps, but at most a quarter of a short run
            warmup_steps=min(100, steps // 4),
            seed=c.seed,
            val_every=steps,  # one validation, at the end (the threshold and score statistics)
            checkpoint_every=max(1, min(250, steps // 4)),  # what a stopped sweep resumes from
            threads=c.threads,
        )
        resume = (out / "last.pt").is_file()
        self.say(f"{'resume' if resume else 'train'} {base.run} ({steps} steps) -> {out}")
        job = TrainJob(
            dataset=c.dataset,
            root=c.data,
            category=c.category,
            out_dir=str(out),
            model=model,
            train=train,
            device=c.device,
            resume=resume,
            overwrite=not resume,
        )
        self._timed(base.run, "train", lambda: train_category(job, self.console))
        return out / "last.pt"

    def prune(self, v: Variant, trained: Path) -> Path:
        from dmgrd_edge.train.checkpoint import read_checkpoint
        from dmgrd_edge.options import PruneJob
        from dmgrd_edge.train.prune import finetune_config, prune_checkpoint

        out = self.paths.run(v)
        if (out / "train_summary.json").is_file() and (out / "last.pt").is_file():
            return out / "last.pt"
        c = self.config
        original = read_checkpoint(trained)["metadata"].get("train_config", {})
        job = PruneJob(
            checkpoint=str(trained),
            out_dir=str(out),
            ratio=v.ratio,
            finetune=finetune_config(original, c.prune_steps, c.prune_lr, threads=c.threads),
            device=c.device,
            overwrite=True,  # what is there is a stopped fine-tune: start it again
        )
        self.say(f"prune {v.stem} (ratio {v.ratio:g}, {c.prune_steps} fine-tune steps) -> {out}")
        self._timed(v.stem, "prune", lambda: prune_checkpoint(job, self.console))
        return out / "last.pt"

    def evaluate(self, v: Variant, checkpoint: Path) -> dict:
        from dmgrd_edge.train.evaluate import evaluate_checkpoint

        folder = self.paths.eval(v)
        done = read_json(folder / "eval.json")
        if isinstance(done, dict) and "row" in done:
            return done
        c = self.config
        self.say(f"evaluate {v.stem} (PyTorch, test split, heat-map overlays) -> {folder}")
        result = self._timed(
            v.stem,
            "eval",
            lambda: evaluate_checkpoint(
                checkpoint, c.data, c.dataset, c.category, folder, 8, c.device, 1, self.console
            ),
        )
        _write_json(folder / "eval.json", result)
        return result

    def export(self, v: Variant, checkpoint: Path) -> Path:
        from dmgrd_edge.options import ExportOptions
        from dmgrd_edge.export.pipeline import export_bundle

        bundle = self.paths.bundle(v)
        int8 = "int8" in self.config.precisions
        manifest = read_json(bundle / "manifest.json")
        if isinstance(manifest, dict) and (
            not int8 or catalog.by_key("onnx-int8-cpu").name in manifest.get("files", {})
        ):
            return bundle
        c = self.config
        opts = ExportOptions(
            checkpoint=checkpoint,
            out=bundle,
            int8=int8,
            calib_count=c.calib_count,
            guard_count=c.guard_count,
            # the baseline's only layers to quantize are its teacher's (export refuses otherwise)
            int8_teacher=int8 and v.model == "knn",
        )
        self.say(f"export {v.stem} ({'fp32 + INT8' if int8 else 'fp32'}) -> {bundle}")
        self._timed(
            v.stem,
            "export",
            lambda: export_bundle(
                opts, log=lambda m: self.console.print(m, markup=False, style="dim")
            ),
        )
        return bundle

    def bench(self, v: Variant) -> dict:
        target = self.paths.bench(v)
        command = bench_command(self.config, self.paths, v)
        log = self.paths.log(v)
        log.parent.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # a result of a stopped bench is not this one's
        self.say(f"bench {v.id} (own process) -> {target}")
        started, cpu = time.perf_counter(), _cpu_seconds()
        with open(log, "wb") as handle:
            done = subprocess.run(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if os.name == "posix" else None,
            )
        self._record(v.id, "bench", started, cpu)
        if done.returncode:
            tail = log.read_text(errors="replace").strip().splitlines()[-6:]
            raise DmgrdError(
                f"bench of {v.id} failed (exit {done.returncode}): " + " | ".join(tail),
                f"the whole output is in {log}; run the command there to see it: "
                + " ".join(command[2:]),
            )
        result = read_json(target)
        if not isinstance(result, dict):
            raise DataError(f"bench of {v.id} wrote no readable result at {target}")
        return result

    def _timed(self, key: str, stage: str, work: Callable[[], Any]) -> Any:
        started, cpu = time.perf_counter(), _cpu_seconds()
        value = work()
        self._record(key, stage, started, cpu)
        return value

    def _record(self, key: str, stage: str, started: float, cpu: float) -> None:
        """Wall seconds of a stage, and the CPU seconds it used (this process and the ones it
        waited for): on a shared CPU the first grows with the load, the second hardly."""
        record = self.seconds.setdefault(key, {})
        record[stage] = round(time.perf_counter() - started, 2)
        record[f"{stage}_cpu"] = round(_cpu_seconds() - cpu, 2)

    # -- the matrix ---------------------------------------------------------------------------

    def start(self) -> None:
        """Check the folder and the data, then record the settings (before any stage runs)."""
        from dmgrd_edge.data.datasets import index_category

        if self.started:
            return
        c, paths = self.config, self.paths
        check_sweep_folder(paths, c)
        index_category(c.dataset, c.data, c.category)  # bad data is refused before any work
        paths.out.mkdir(parents=True, exist_ok=True)
        _write_json(
            paths.config,
            {
                "settings": self.settings,
                "matrix": {
                    "backbones": list(c.backbones),
                    "models": list(c.models),
                    "ratios": list(c.ratios),
                    "precisions": list(c.precisions),
                },
                "variants": [v.id for v in self.variants],
                "skipped": self.skipped,
            },
        )
        self.started = True

    def run(self, runner: Any = None) -> dict[str, Any]:
        """The whole matrix; with a ``runner`` (train/runners.py) the stages before the bench
        run as its tasks first (``prepare_on``)."""
        self.start()
        c, paths = self.config, self.paths
        for line in self.skipped:
            self.say(f"left out: {line}")
        finished = {
            v.id: r
            for v in self.variants
            if (r := finished_result(paths.result(v), v, self.settings)) is not None
        }
        total = len(self.variants)
        self.say(
            f"sweep of {total} variants on {c.dataset}/{c.category} -> {paths.out}"
            + (f"; {len(finished)} finished already: {', '.join(finished)}" if finished else "")
        )
        progress = Progress(
            TextColumn("[bold]sweep[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        started = time.perf_counter()
        if runner is not None:
            self.prepare_on(runner, [v for v in self.variants if v.id not in finished])
        with progress:
            task = progress.add_task("", total=total, completed=len(finished))
            for number, v in enumerate(self.variants, 1):
                if v.id in finished:
                    continue
                progress.update(task, description=f"variant {number}/{total}: {v.id}")
                self.say(f"[{number}/{total}] {v.id}")
                finished[v.id] = self.variant(v)
                progress.advance(task)
            progress.update(task, description="report")
        results = [paths.result(v) for v in self.variants]
        from dmgrd_edge.tradeoff import write_report

        report = write_report(results, paths.report, c.metric, c.max_drop, c.budget_ms)
        return {
            "out": str(paths.out),
            "variants": [v.id for v in self.variants],
            "skipped": self.skipped,
            "seconds": round(time.perf_counter() - started, 1),
            "results": {v.id: str(paths.result(v)) for v in self.variants},
            "report": {k: str(p) for k, p in report["paths"].items()},
            "recommended": {d: p.name for d, p in report["recommended"].items()},
            "budget": {d: (p.name if p else None) for d, p in report["budget"].items()},
        }

    def prepare(self, v: Variant) -> tuple[Path, dict, Path]:
        """Train (or reuse), prune, evaluate and export one variant: (checkpoint, evaluation,
        bundle). Every stage returns at once when its output is there."""
        trained = self.train(v)
        checkpoint = self.prune(v, trained) if v.ratio else trained
        evaluation = self.evaluate(v, checkpoint)
        return checkpoint, evaluation, self.export(v, checkpoint)

    def prepare_on(self, runner: Any, todo: list[Variant]) -> None:
        """Train, prune, evaluate and export ``todo`` as tasks of ``runner``: one task per
        training run (its pruned forms and precisions reuse it), so tasks never share a
        folder. The bench then runs here, one variant after another, so that no two latency
        measurements share this machine's CPU with each other or with a training."""
        from dmgrd_edge.train.runners import Task

        groups: dict[str, list[str]] = {}
        for v in todo:
            groups.setdefault(v.run, []).append(v.id)
        if not groups:
            return
        self.say(f"{len(groups)} training runs as tasks of {type(runner).__name__}")
        tasks = [
            Task(f"sweep {run}", prepare_group, (self.config, ids)) for run, ids in groups.items()
        ]
        for seconds in runner.run_tasks(tasks, self.console):
            for key, stages in seconds.items():
                self.seconds.setdefault(key, {}).update(stages)

    def variant(self, v: Variant) -> dict:
        """Prepare and bench one variant; its result JSON is written last, atomically."""
        checkpoint, evaluation, bundle = self.prepare(v)
        result = self.bench(v)
        summary = read_json(checkpoint.parent / "train_summary.json") or {}
        result["sweep"] = {
            "id": v.id,
            "backbone": v.backbone,
            "model": v.model,
            "model_description": SWEEP_MODELS[v.model][1],
            "ratio": v.ratio,
            "precision": v.precision,
            "label": v.label,
            "settings": self.settings,
            "checkpoint": str(checkpoint.relative_to(self.paths.out)),
            "bundle": str(bundle.relative_to(self.paths.out)),
            "eval_dir": str(self.paths.eval(v).relative_to(self.paths.out)),
            "checkpoint_eval": evaluation["row"],
            "train_img_per_s": summary.get("train_img_per_s"),
            "seconds": {
                **self.seconds.get(v.run, {}),
                **self.seconds.get(v.stem, {}),
                **self.seconds.get(v.id, {}),
            },
        }
        _write_json(self.paths.result(v), result)
        return result


def prepare_group(config: SweepConfig, ids: list[str]) -> dict[str, dict[str, float]]:
    """A runner's task (module level, so a Ray worker imports it by name): every stage
    before the bench for the variants ``ids`` of one training run; the seconds per stage."""
    sweep = Sweep(config)
    sweep.started = True  # the submitting process checked the folder and wrote sweep.json
    by_id = {v.id: v for v in sweep.variants}
    for variant_id in ids:
        sweep.prepare(by_id[variant_id])
    return sweep.seconds


def run_sweep(
    config: SweepConfig, console: Console | None = None, runner: Any = None
) -> dict[str, Any]:
    return Sweep(config, console).run(runner)
