"""What the stages are asked to do, as dataclasses: the data generators' sizes, a training
or pruning job, the evaluation's, bench's and report's settings, the export's options, the
runtime's backend request and stream settings, the sweep's matrix, the demo. Each field's
default is the default of the command-line option of the same meaning (dmgrd_edge/cli.py
builds its options from these fields, tests/test_cli_defaults.py checks that every one it
claims does), and a stage function's keyword default names the field, so a default is
written once. In the core, not in the stages, because the command line is built when it is
imported and imports no stage then; the checkpoint's own configurations (model, training,
synthesis, preprocessing) are in dmgrd_edge/config.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import checks
from .config import IMAGE_SCORES, ModelConfig, SynthesisConfig, TrainConfig
from .errors import ConfigError, choose

# -- data ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LineDataSettings:
    """`generate-data`: seeded synthetic line data (dmgrd_edge/data/synthetic.py)."""

    categories: str = "all"
    n_train: int = 60
    n_test_good: int = 10
    n_test_per_defect: int = 4
    size: int = 256
    seed: int = 0
    overwrite: bool = False


@dataclass(frozen=True, kw_only=True)
class PhotoDataSettings:
    """`photo-data`: the evaluation set cut from photographs (dmgrd_edge/data/photos.py)."""

    categories: str = "all"
    n_train: int = 60
    n_test_good: int = 24
    n_test_defect: int = 32
    size: int = 256
    seed: int = 0
    overwrite: bool = False


# -- training, pruning, evaluation -----------------------------------------------------------


@dataclass(kw_only=True)
class TrainJob:
    """One model to train (train/loop.py, train/trainer.py)."""

    dataset: str = "mvtec"
    root: str
    category: str
    out_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrained: bool = True
    teacher_weights: str | None = None
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    # start from this checkpoint's weights and memory (fine-tuning a pruned model)
    init_from: str | None = None

    def digest(self) -> str:
        """What makes this run the run it is: data, category, model and training settings.
        Not where it reads or writes, nor on how many threads or processes it runs; a summary
        with the same digest is the result of this job (so a runner need not run it again)."""
        train = {k: v for k, v in self.train.to_dict().items() if k != "threads"}
        if self.train.synthesis == SynthesisConfig():  # the digest runs had before it was a field
            del train["synthesis"]
        if train["texture_dir"]:
            train["texture_dir"] = Path(train["texture_dir"]).name
        fields = {
            "dataset": self.dataset,
            "category": self.category,
            "model": self.model.to_dict(),
            "train": train,
            "pretrained": self.pretrained,
            "teacher_weights": Path(self.teacher_weights).name if self.teacher_weights else None,
            "init_from": Path(self.init_from).name if self.init_from else None,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class PruneFinetune:
    """The fine-tune after a cut (train/prune.py ``finetune_config``): ``steps`` 0 is a cut
    only; ``batch_size`` None and ``threads`` 0 keep the original run's."""

    steps: int = 500
    lr: float = 0.001
    batch_size: int | None = None
    threads: int = 0


@dataclass(kw_only=True)
class PruneJob:
    """One checkpoint to prune (train/prune.py); ``finetune`` None: cut only; ``data``,
    ``dataset`` and ``category`` None: the checkpoint's own."""

    checkpoint: str
    out_dir: str
    ratio: float = 0.5
    multiple: int = 8
    finetune: TrainConfig | None = None
    data: str | None = None
    dataset: str | None = None
    category: str | None = None
    device: str = "auto"
    overwrite: bool = False


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """`eval` (train/evaluate.py ``evaluate_checkpoint``)."""

    out: str = "eval"
    batch_size: int = 8
    device: str = "auto"
    overlays: int = 2  # overlay PNGs per defect type


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """`bench` (runtime/bench.py ``run_bench``), besides the backend request."""

    warmup: int = 5
    runs: int = 30
    dataset: str = "mvtec"
    out: str = "bench.json"


@dataclass(frozen=True, kw_only=True)
class ReportSettings:
    """`report` (dmgrd_edge/tradeoff.py ``write_report``)."""

    out: str = "tradeoff"
    metric: str = "pro_30"
    max_drop: float = 1.0  # points of accuracy the recommended variant may give up
    budget_ms: float | None = None


@dataclass(frozen=True, kw_only=True)
class ThresholdSettings:
    """`calibrate-threshold` (runtime/threshold.py), besides the backend request; ``batch``
    None: 8, or the bundle's largest batch when smaller."""

    false_alarm_rate: float = 0.001
    max_frames: int | None = None
    batch: int | None = None


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """`demo` (workflow/demo.py)."""

    out: str = "dmgrd-demo"
    threads: int = 0
    overwrite: bool = False


# -- export ----------------------------------------------------------------------------------

CALIBRATION_METHODS = ("entropy", "minmax", "percentile")


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    @classmethod
    def parse(cls, text: str) -> "BatchProfile":
        """'N' (fixed) or 'MIN:OPT:MAX'."""
        parts = str(text).split(":")
        if len(parts) not in (1, 3) or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(
                f"bad batch profile {text!r}",
                "give a fixed batch like 1 or a range MIN:OPT:MAX like 1:4:8",
            )
        values = [int(p) for p in parts] * (3 if len(parts) == 1 else 1)
        lo, opt, hi = values[:3]
        if not 1 <= lo <= opt <= hi:
            raise ConfigError(f"bad batch profile {text!r}", "need 1 <= MIN <= OPT <= MAX")
        return cls(lo, opt, hi)

    def __str__(self) -> str:
        return str(self.min) if not self.dynamic else f"{self.min}:{self.opt}:{self.max}"


def parse_size(text: str) -> int:
    """'512M', '2G', '1073741824' -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ConfigError(f"bad size {text!r}", "use bytes or a number with K, M or G, e.g. 1G")
    return (
        int(match.group(1))
        * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2).upper()]
    )


def format_size(size: int) -> str:
    """Bytes as the command line writes them: 1073741824 -> '1G' (the largest exact unit)."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


@dataclass(kw_only=True)
class ExportOptions:
    checkpoint: Path
    out: Path
    int8: bool = False
    fp16: bool = False
    engine: bool = False
    calib_data: Path | None = None
    calib_dataset: str | None = None
    calib_category: str | None = None
    calib_count: int = 300
    calib_method: str = "entropy"
    calib_pseudo: bool = False
    max_drop: float | None = None
    int8_teacher: bool = False
    int8_cpu: bool = True
    batch: BatchProfile = field(default_factory=lambda: BatchProfile(1, 1, 8))
    dla_core: int | None = None
    workspace: int = 1 << 30
    guard_count: int = 40
    seed: int = 0

    def validate(self) -> "ExportOptions":
        checks.integer("--calib-count", self.calib_count, 1)
        checks.number(
            "--max-drop",
            self.max_drop,
            0,
            lo_open=True,
            optional=True,
            note="points of I-AUC / PRO@0.3",
        )
        checks.integer("--dla-core", self.dla_core, 0, optional=True)
        checks.integer("--guard-count", self.guard_count, 4)
        if not Path(self.checkpoint).is_file():
            raise ConfigError(
                f"checkpoint not found: {self.checkpoint}", "train one with `dmgrd-edge train`"
            )
        from .bundle import check_out  # here: the command line imports this module at start

        check_out(self.out)  # a file or a folder of other things is refused before any work
        choose("calibration method", self.calib_method, CALIBRATION_METHODS)
        if self.max_drop is not None and not self.int8:
            raise ConfigError("--max-drop applies to INT8 only", "add --int8 or drop --max-drop")
        if self.int8_teacher and not self.int8:
            raise ConfigError("--int8-teacher applies to INT8 only", "add --int8")
        if self.calib_pseudo and not self.int8:
            raise ConfigError("--calib-pseudo applies to INT8 calibration only", "add --int8")
        if self.dla_core is not None:
            if not self.engine:
                raise ConfigError(
                    "--dla-core needs --engine", "DLA engines are built on the Jetson with --engine"
                )
            if self.batch.dynamic:
                raise ConfigError("DLA needs a fixed batch", "use e.g. --batch 1 with --dla-core")
            if not (self.int8 or self.fp16):
                raise ConfigError("DLA runs FP16 or INT8 only", "add --int8 or --fp16")
        if self.workspace < (1 << 20):
            raise ConfigError(
                f"workspace {self.workspace} bytes is too small",
                "give at least 1M, e.g. --workspace 1G",
            )
        return self

    def int8_targets(self) -> list[str]:
        """Consumers of the INT8 files to write (calib/quantize.py): TensorRT always, the
        ONNX Runtime CPU provider unless --no-int8-cpu."""
        return ["tensorrt"] + (["cpu"] if self.int8_cpu else []) if self.int8 else []

    @property
    def engine_precision(self) -> str:
        """The precision of the engine ``--engine`` builds: the lowest the bundle has."""
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"

    def planned_outputs(self) -> list[str]:
        """Catalog keys of the files this export writes."""
        names = ["onnx-fp32"]
        names += ["onnx-int8"] if self.int8 else []
        names += ["onnx-int8-cpu"] if self.int8 and self.int8_cpu else []
        names += ["onnx-fp16"] if self.fp16 else []
        names += ["engine"] if self.engine else []
        return names


# -- the runtime -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BackendRequest:
    """The backend options of `run`, `bench` and `calibrate-threshold` (runtime/select.py,
    ``create_backend``); ``workers`` None: chosen with the backend (`--workers auto`)."""

    backend: str = "auto"
    precision: str = "auto"
    max_batch: int = 1
    threads: int = 0
    spin: bool = True
    workers: int | None = None


@dataclass(kw_only=True)
class RunConfig:
    """The stream's settings (runtime/pipeline.py); the thresholds have no default: the
    bundle's file has its own."""

    threshold: float
    pixel_threshold: float
    batch: int = 1
    max_frames: int | None = None
    status_every_s: float = 5.0
    stats_json: Path | None = None
    extra: dict = field(default_factory=dict)
    workers: int = 1  # batches in flight

    def __post_init__(self):
        checks.threshold("threshold", self.threshold)
        checks.threshold("pixel threshold", self.pixel_threshold)


@dataclass(frozen=True, kw_only=True)
class CameraConfig:
    """One camera at the line: `run`'s single-source options and a ``[[camera]]`` table of a
    line configuration (runtime/line_config.py) share these fields and their defaults."""

    name: str
    source: str
    bundle: Path
    sinks: tuple[str, ...] = ()
    threshold: float | None = None
    pixel_threshold: float | None = None
    input_fps: float | None = None
    input_width: int | None = None
    input_height: int | None = None
    loop: bool = False
    queue_size: int = 4
    max_retries: int = 5
    max_frames: int | None = None
    ng_warn_rate: float = 0.5
    ng_warn_frames: int = 100
    drift_window: int = 0
    drift_psi: float = 0.25


def parse_workers(text: str | int | None) -> int | None:
    """``auto``/None -> None (decided with the backend), else an int >= 1."""
    if text is None or text == "auto":
        return None
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise ConfigError(
            f"bad --workers {text!r}", "give auto or a number of calls in flight >= 1"
        )
    return value


# -- the sweep -------------------------------------------------------------------------------

# model variant -> (model_config_from_options arguments, what it is)
SWEEP_MODELS: dict[str, tuple[dict[str, Any], str]] = {
    "default": ({}, "the default model: RD's student, the memory's patch distance in the score"),
    "knn": ({"method": "knn"}, "the training-free nearest-neighbour baseline (--method knn)"),
    "no-memory": ({"use_memory": False}, "plain reverse distillation (--no-memory)"),
    "paper": (
        {"memory_read": "image", "score_source": "student"},
        "the paper's memory-guided student (--memory-read image --score-source student)",
    ),
}
SWEEP_PRECISIONS = ("fp32", "int8")

# the settings a finished stage was made with; a sweep folder holds one set of them
SETTING_FIELDS = (
    "data",
    "dataset",
    "category",
    "image_size",
    "steps",
    "batch_size",
    "lr",
    "prune_steps",
    "prune_lr",
    "memory_size",
    "image_score",
    "seed",
    "calib_count",
    "guard_count",
    "bench_batches",
    "bench_runs",
    "bench_warmup",
    "workers",
    "device",
)


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    data: str
    category: str
    out: str = "sweep"
    dataset: str = "mvtec"
    backbones: tuple[str, ...] = ("efficientnet_lite0",)
    models: tuple[str, ...] = ("default",)
    ratios: tuple[float, ...] = (0.0,)
    precisions: tuple[str, ...] = SWEEP_PRECISIONS
    image_size: int = ModelConfig.image_size
    steps: int = 300  # the README's short budget, not TrainConfig's 5000
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    prune_steps: int = 100
    prune_lr: float = PruneFinetune.lr
    memory_size: int = ModelConfig.memory_size
    # the image score of every variant whose map is combined (the default model's)
    image_score: str = ModelConfig.image_score
    seed: int = TrainConfig.seed
    calib_count: int = 100
    guard_count: int = 40
    bench_batches: tuple[int, ...] = (1, 4, 8)
    bench_runs: int = 30
    bench_warmup: int = 5
    workers: str = "auto"
    threads: int = 0
    device: str = "auto"
    metric: str = "pro_30"
    max_drop: float = 1.0
    budget_ms: float | None = None

    def validate(self) -> "SweepConfig":
        from .registry import LAYOUTS, TEACHERS
        from .tradeoff import METRICS

        choose("dataset", self.dataset, LAYOUTS)
        choose("metric", self.metric, tuple(METRICS))
        choose("image score", self.image_score, IMAGE_SCORES)
        for name, values in (
            ("--backbones", self.backbones),
            ("--models", self.models),
            ("--ratios", self.ratios),
            ("--precisions", self.precisions),
            ("--bench-batches", self.bench_batches),
        ):
            if not values:
                raise ConfigError(f"{name} is empty", "give a comma list with at least one value")
            if len(set(values)) != len(values):
                raise ConfigError(f"{name} names a value twice: {list(values)}")
        for backbone in self.backbones:
            choose("backbone", backbone, TEACHERS)
        for model in self.models:
            choose("model variant", model, SWEEP_MODELS)
        for precision in self.precisions:
            choose("precision", precision, SWEEP_PRECISIONS)
        for ratio in self.ratios:
            checks.number("--ratios", ratio, 0, 1, hi_open=True, note="0: not pruned")
        for batch in self.bench_batches:
            checks.integer("--bench-batches", batch, 1, 8, note="the exported batch range is 1-8")
        checks.integer("--image-size", self.image_size, 32, note="a multiple of 32")
        if self.image_size % 32:
            raise ConfigError(
                f"--image-size must be a multiple of 32, got {self.image_size}", "e.g. 256"
            )
        checks.integer("--steps", self.steps, 1)
        checks.integer("--batch-size", self.batch_size, 2)
        checks.number("--lr", self.lr, 0, lo_open=True)
        checks.integer("--prune-steps", self.prune_steps, 1, note="the fine-tune after the cut")
        checks.number("--prune-lr", self.prune_lr, 0, lo_open=True)
        checks.integer("--memory-size", self.memory_size, 1)
        checks.integer("--seed", self.seed, 0)
        checks.integer("--calib-count", self.calib_count, 1)
        checks.integer("--guard-count", self.guard_count, 4)
        checks.integer("--runs", self.bench_runs, 1)
        checks.integer("--warmup", self.bench_warmup, 0)
        checks.integer("--threads", self.threads, 0, note=checks.AUTO)
        checks.number("--max-drop", self.max_drop, 0, note="points of accuracy")
        checks.number("--budget-ms", self.budget_ms, 0, lo_open=True, optional=True)
        parse_workers(self.workers)
        return self

    def settings(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in SETTING_FIELDS}
        values["data"] = str(Path(self.data).resolve())
        values["bench_batches"] = list(self.bench_batches)
        return values


def split_list(name: str, text: str, cast: Callable[[str], Any] = str) -> tuple:
    """'a, b' -> ('a', 'b'), each cast; a clear error naming the option otherwise."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return tuple(cast(t) for t in items)
    except ValueError:
        raise ConfigError(f"bad {name} {text!r}", "give a comma list, e.g. 0,0.5") from None
