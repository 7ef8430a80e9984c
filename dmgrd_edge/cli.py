"""`dmgrd-edge` command line: a thin layer over the Python API.

Torch is imported only inside the commands that need it, so `dmgrd-edge --help` and the
runtime commands work on a machine without torch. An option that sets a field of one of
the stages' dataclasses (dmgrd_edge/config.py, dmgrd_edge/options.py) takes its default from
that field (``field_option``), so each default is written once; the choices of --backbone and
--dataset are the registries' (dmgrd_edge/registry.py).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import checks
from .config import ModelConfig, SynthesisConfig, TrainConfig
from .errors import ConfigError, DmgrdError, ExitCode
from .options import (
    SWEEP_MODELS,
    BackendRequest,
    BatchProfile,
    BenchSettings,
    CameraConfig,
    DemoSettings,
    EvalSettings,
    ExportOptions,
    LineDataSettings,
    PhotoDataSettings,
    PruneFinetune,
    PruneJob,
    ReportSettings,
    RunConfig,
    SweepConfig,
    ThresholdSettings,
    TrainJob,
    format_size,
    parse_size,
    parse_workers,
    split_list,
)
from .registry import LAYOUTS, PHOTO_PARTS, PHOTO_SURFACES, TEACHERS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="DM-GRD anomaly detection: train, evaluate, export and run at the line.",
)
console = Console(stderr=True)


def say(message: object) -> None:
    """A line to stderr as it is: file names, globs and URIs may hold [brackets], which
    console markup would take for styles (or fail on)."""
    console.print(message, markup=False)


class FieldSource(NamedTuple):
    """Where an option's default comes from: a dataclass field, possibly negated (a --no-X
    flag) and written the command line's way (``shown``)."""

    cls: type
    name: str
    negated: bool = False
    shown: Callable[[Any], Any] | None = None


def field_default(cls: type, name: str) -> Any:
    """The default of the dataclass field (its factory called)."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
            raise TypeError(f"{cls.__name__}.{name} has no default")
    raise TypeError(f"{cls.__name__} has no field {name!r}")


def field_option(
    cls: type, name: str, *decls: str, negated: bool = False, shown=None, **kwargs: Any
):
    """A typer option whose default is the field ``name`` of dataclass ``cls`` (``negated``:
    a --no-X flag, off when the field is on; ``shown``: the value as the command line writes
    it, e.g. a batch profile as 1:1:8). The option keeps its source (``.field``), which
    tests/test_cli_defaults.py reads when it walks the commands."""
    value = field_default(cls, name)
    value = not value if negated else value
    option = typer.Option(shown(value) if shown else value, *decls, **kwargs)
    option.field = FieldSource(cls, name, negated, shown)
    return option


def _comma(values) -> str:
    """A tuple field as a comma list option: (0.0, 0.5) -> '0,0.5'."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _auto(value) -> str:
    """None (chosen with the backend) as the command line's 'auto'."""
    return "auto" if value is None else str(value)


# the choices of --backbone and --dataset are the registries' (checked when a command runs)
BACKBONE_NAMES = ", ".join(TEACHERS)
DATASET_NAMES = ", ".join(LAYOUTS)
SYNTHESIS_DEFAULTS = SynthesisConfig().describe()


@app.command("generate-data")
def generate_data(
    out: Path = typer.Argument(..., help="folder to create (MVTec AD layout)"),
    categories: str = field_option(
        LineDataSettings, "categories", help="comma list of synthetic categories or 'all'"
    ),
    n_train: int = field_option(LineDataSettings, "n_train", help="good training images"),
    n_test_good: int = field_option(LineDataSettings, "n_test_good", help="good test images"),
    n_test_per_defect: int = field_option(
        LineDataSettings, "n_test_per_defect", help="test images per defect kind"
    ),
    size: int = field_option(LineDataSettings, "size", help="image side in pixels"),
    seed: int = field_option(LineDataSettings, "seed"),
    overwrite: bool = field_option(
        LineDataSettings, "overwrite", help="replace an existing folder"
    ),
):
    """Write seeded synthetic production-line data with masks (5 defect kinds)."""
    from rich.progress import track

    from .data.synthetic import CATEGORIES, generate_line_data

    checks.integer("--n-train", n_train, 1)
    checks.integer("--n-test-good", n_test_good, 0)
    checks.integer("--n-test-per-defect", n_test_per_defect, 0)
    checks.integer("--size", size, 32, note="the smallest model input")
    checks.integer("--seed", seed, 0)
    names = (
        sorted(CATEGORIES) if categories == "all" else [c.strip() for c in categories.split(",")]
    )
    path = generate_line_data(
        out,
        names,
        n_train,
        n_test_good,
        n_test_per_defect,
        size,
        seed,
        overwrite,
        progress=lambda jobs: track(jobs, description="generate", console=console),
    )
    say(f"wrote {path} ({', '.join(names)})")


@app.command("photo-data")
def photo_data(
    out: Path = typer.Argument(..., help="folder to create (MVTec AD layout)"),
    categories: str = field_option(
        PhotoDataSettings,
        "categories",
        help=f"comma list of {', '.join(PHOTO_SURFACES + PHOTO_PARTS)}, or 'all'",
    ),
    n_train: int = field_option(PhotoDataSettings, "n_train", help="good training crops"),
    n_test_good: int = field_option(PhotoDataSettings, "n_test_good", help="good test crops"),
    n_test_defect: int = field_option(
        PhotoDataSettings, "n_test_defect", help="defective test crops (5 kinds)"
    ),
    size: int = field_option(PhotoDataSettings, "size", help="crop side in pixels"),
    seed: int = field_option(PhotoDataSettings, "seed"),
    overwrite: bool = field_option(
        PhotoDataSettings, "overwrite", help="replace an existing folder"
    ),
):
    """Cut a seeded evaluation set with masks from real photographs (needs scikit-image)."""
    from rich.progress import track

    from .data.photos import CATEGORIES, build_photo_set

    names = list(CATEGORIES) if categories == "all" else [c.strip() for c in categories.split(",")]
    path = build_photo_set(
        out,
        names,
        n_train,
        n_test_good,
        n_test_defect,
        size,
        seed,
        overwrite,
        progress=lambda jobs: track(jobs, description="photographs", console=console),
    )
    say(f"wrote {path} ({', '.join(names)})")


@app.command()
def backbones():
    """List the registered teacher backbones with their feature channels and strides."""
    for spec in TEACHERS.values():
        typer.echo(
            f"{spec.name:20s} channels={spec.channels} strides={spec.strides} "
            f"weights: {spec.weights.describe()}"
        )


@app.command()
def train(
    data: Path = typer.Option(..., help="dataset root"),
    dataset: str = field_option(TrainJob, "dataset", help=f"layout: {DATASET_NAMES}"),
    category: str = typer.Option("all", help="category, comma list, or 'all' (one model each)"),
    out: Path = typer.Option(Path("runs"), help="output folder (one subfolder per category)"),
    backbone: str = field_option(ModelConfig, "backbone", help=f"one of {BACKBONE_NAMES}"),
    image_size: int = field_option(
        ModelConfig, "image_size", help="square input size, multiple of 32"
    ),
    steps: int = field_option(TrainConfig, "steps"),
    batch_size: int = field_option(TrainConfig, "batch_size"),
    lr: float = field_option(TrainConfig, "lr"),
    warmup_steps: int = field_option(TrainConfig, "warmup_steps"),
    seed: int = field_option(TrainConfig, "seed"),
    memory_size: int = field_option(ModelConfig, "memory_size", help="K, images per memory bank"),
    selection: str = field_option(
        ModelConfig, "selection", help="memory selection: nearest (intended) or authors"
    ),
    no_memory: bool = typer.Option(
        False,
        "--no-memory",
        help="ablation: plain reverse distillation (no memory in the student nor in the score)",
    ),
    score_mode: str = field_option(
        ModelConfig, "score_mode", help="topk_mean (authors, top-100) or max (RD)"
    ),
    method: str = field_option(
        ModelConfig, "method", help="dmgrd, or knn: the training-free nearest-neighbour baseline"
    ),
    memory_read: Optional[str] = typer.Option(
        None,
        help="how the memory guides the student: none (RD's "
        "student; default), patch (the nearest normal patch at "
        "every location) or image (the paper's: one bank image)",
    ),
    score_source: Optional[str] = typer.Option(
        None, help="student, memory (nearest-patch distance) or combined"
    ),
    patch_bank_size: int = field_option(
        ModelConfig, "patch_bank_size", help="rows per level of the patch memory (coreset)"
    ),
    map_scale: Optional[str] = typer.Option(
        None,
        help="combined score: each map divided by its mean, p99 or std on the validation normals",
    ),
    fusion: str = field_option(
        ModelConfig,
        "fusion",
        help="fusion of the memory-guided features: msff (the paper) or linear (ablation)",
    ),
    image_score: str = field_option(
        ModelConfig,
        "image_score",
        help="the image score: from the anomaly map (map), from the student's share of a "
        "combined map alone (student), or the one of the two that separates the validation "
        "pseudo-anomalies better, chosen at each validation (auto)",
    ),
    without_loss: list[str] = typer.Option(
        [],
        "--without-loss",
        help="ablation: train without this memory-path loss term (ot, con or triplet); repeatable",
    ),
    texture_dir: Optional[Path] = field_option(
        TrainConfig, "texture_dir", help="texture images for pseudo-anomalies (e.g. DTD)"
    ),
    synthesis: list[str] = typer.Option(
        [],
        "--synthesis",
        metavar="KEY=VALUE",
        help="pseudo-anomaly synthesis setting, repeatable; keys and defaults: "
        f"{SYNTHESIS_DEFAULTS} (beta: the blend's transparency range LOW,HIGH); "
        "stored in the checkpoint, and --resume goes on with the run's",
    ),
    teacher_weights: Optional[Path] = field_option(
        TrainJob, "teacher_weights", help="ImageNet weights file for the teacher"
    ),
    random_teacher: bool = field_option(
        TrainJob,
        "pretrained",
        "--random-teacher",
        negated=True,
        help="random teacher weights (tests only)",
    ),
    val_every: int = field_option(TrainConfig, "val_every"),
    checkpoint_every: int = field_option(TrainConfig, "checkpoint_every"),
    device: str = field_option(TrainJob, "device", help="auto, cpu, cuda or cuda:N"),
    no_amp: bool = field_option(
        TrainConfig, "amp", "--no-amp", negated=True, help="disable mixed precision on CUDA"
    ),
    threads: int = field_option(TrainConfig, "threads", help="torch CPU threads (0: default)"),
    resume: bool = field_option(TrainJob, "resume", help="continue from OUT/<category>/last.pt"),
    overwrite: bool = field_option(TrainJob, "overwrite", help="replace an existing run folder"),
    devices: int = typer.Option(
        1, help="processes for each model (DDP): N GPUs, or N CPU processes with gloo"
    ),
    ray: Optional[str] = typer.Option(
        None,
        help="each category as a task on a Ray cluster: auto, local or the head's address "
        "(needs the package's cluster extra: Ray); OUT must be a path every node sees",
    ),
    ray_cpus: float = typer.Option(1.0, help="CPUs each Ray task holds (its torch threads)"),
    ray_gpus: float = typer.Option(0.0, help="GPUs each Ray task holds (1: one GPU per model)"),
):
    """Train one DM-GRD model per category on defect-free images. Categories whose run
    finished before (a complete train_summary.json of the same settings) are not run again."""
    from .config import model_config_from_options, train_config_from_options
    from .data.datasets import resolve_categories
    from .train.distributed import session
    from .train.runners import make_runner

    checks.integer("--image-size", image_size, 32, note="a multiple of 32")
    train_cfg = train_config_from_options(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        seed=seed,
        val_every=val_every,
        checkpoint_every=checkpoint_every,
        threads=threads,
        texture_dir=texture_dir,
        amp=not no_amp,
        without_loss=tuple(without_loss),
        synthesis=tuple(synthesis),
    )
    _check_model_options(memory_size, patch_bank_size, backbone, dataset, memory_read)
    checks.integer("--devices", devices, 1)
    model_cfg = model_config_from_options(
        backbone=backbone,
        image_size=image_size,
        memory_size=memory_size,
        selection=selection,
        use_memory=False if no_memory else None,
        score_mode=score_mode,
        method=method,
        memory_read=memory_read,
        score_source=score_source,
        patch_bank_size=patch_bank_size,
        map_scale=map_scale,
        fusion=fusion,
        image_score=image_score,
    )
    _refuse_memory_options_without_memory(model_cfg, without_loss, fusion)
    jobs = [
        TrainJob(
            dataset=dataset,
            root=str(data),
            category=name,
            out_dir=str(out / name.replace("/", "_")),
            model=model_cfg,
            train=train_cfg,
            pretrained=not random_teacher,
            teacher_weights=str(teacher_weights) if teacher_weights else None,
            device=device,
            resume=resume,
            overwrite=overwrite,
        )
        for name in resolve_categories(dataset, data, category)
    ]
    with session(device) as ctx:  # a process group when started by torchrun
        runner = make_runner(ray, devices, device, ray_cpus, ray_gpus)
        summaries = runner.run(jobs, console)
    if ctx.is_main:
        typer.echo(json.dumps(summaries, indent=2))


def _check_model_options(
    memory_size: int, patch_bank_size: int, backbone: str, dataset: str, memory_read
) -> None:
    from .config import MEMORY_READS
    from .errors import choose

    checks.integer("--memory-size", memory_size, 1)
    checks.integer("--patch-bank-size", patch_bank_size, 16)
    choose("backbone", backbone, TEACHERS)
    choose("dataset", dataset, LAYOUTS)
    if memory_read is not None:
        choose("memory read", memory_read, ("none",) + MEMORY_READS)


def _refuse_memory_options_without_memory(model_cfg, without_loss: list[str], fusion: str):
    """--fusion and --without-loss only act on a student that the memory guides."""
    if (without_loss or fusion != "msff") and not model_cfg.use_memory:
        raise ConfigError(
            "--fusion and --without-loss change how the memory guides the student, and this "
            "model's student is not guided by the memory",
            "add --memory-read patch or --memory-read image, or drop those options",
        )


@app.command("eval")
def evaluate(
    checkpoints: list[Path] = typer.Argument(
        ..., help="one checkpoint per category (last.pt or best.pt)"
    ),
    data: Optional[Path] = typer.Option(
        None, help="dataset root (default: the one used for training)"
    ),
    dataset: Optional[str] = typer.Option(None, help=f"layout: {DATASET_NAMES}"),
    category: Optional[str] = typer.Option(None, help="override the checkpoint's category"),
    out: Path = field_option(
        EvalSettings, "out", shown=Path, help="folder for report.md/.csv/.json and overlays"
    ),
    batch_size: int = field_option(EvalSettings, "batch_size"),
    device: str = field_option(EvalSettings, "device", help="auto, cpu, cuda or cuda:N"),
    overlays: int = field_option(EvalSettings, "overlays", help="overlay PNGs per defect type"),
):
    """Evaluate checkpoints on their test sets: paper-style table plus heat-map overlays."""
    from .errors import choose
    from .report import report_paths, to_markdown, write_reports
    from .train.evaluate import evaluate_checkpoint

    report_paths(out, "report")  # refused before the evaluation, not after it
    checks.integer("--batch-size", batch_size, 1)
    checks.integer("--overlays", overlays, 0)
    if dataset is not None:
        choose("dataset", dataset, LAYOUTS)
    results = [
        evaluate_checkpoint(c, data, dataset, category, out, batch_size, device, overlays, console)
        for c in checkpoints
    ]
    rows = [r["row"] for r in results]
    title = f"DM-GRD ({results[0]['backbone']}) on {results[0]['dataset']}"
    paths = write_reports(rows, out, "report", title, {"runs": results})
    typer.echo(to_markdown(rows, title))
    say(f"wrote {paths['md']}, {paths['csv']}, {paths['json']} and overlays in {out / 'overlays'}")


@app.command()
def rescore(
    checkpoint: Path = typer.Argument(..., help="trained checkpoint"),
    out: Path = typer.Option(..., "--out", help="new checkpoint file to write"),
    score_source: str = field_option(
        ModelConfig, "score_source", help="student, memory or combined"
    ),
    map_scale: str = field_option(
        ModelConfig,
        "map_scale",
        help="combined: each map divided by its mean, p99 or std on the validation normals",
    ),
    patch_bank_size: Optional[int] = typer.Option(
        None, help="rows per level of the patch memory, refilled from the training images"
    ),
    image_score: Optional[str] = typer.Option(
        None,
        help="map, student (the student's share of a combined map) or auto (the one that "
        "separates the validation pseudo-anomalies better); default: as trained",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
):
    """Give a trained model another anomaly map (e.g. student + memory) without retraining."""
    from .config import IMAGE_SCORES, MAP_SCALES, SCORE_SOURCES
    from .errors import choose
    from .train.rescore import rescore_checkpoint

    choose("score source", score_source, SCORE_SOURCES)
    choose("map scale", map_scale, MAP_SCALES)
    if image_score is not None:
        choose("image score", image_score, IMAGE_SCORES)
    checks.integer("--patch-bank-size", patch_bank_size, 16, optional=True)
    summary = rescore_checkpoint(
        checkpoint,
        out,
        score_source,
        map_scale=map_scale,
        patch_bank_size=patch_bank_size,
        image_score=image_score,
        device=device,
        console=console,
    )
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def prune(
    checkpoint: Path = typer.Argument(..., help="trained checkpoint (last.pt or best.pt)"),
    out: Path = typer.Option(
        ..., "--out", help="folder for pruned.pt and the fine-tune's last.pt/best.pt"
    ),
    ratio: float = field_option(
        PruneJob,
        "ratio",
        help="share of the channels inside each bottleneck/student block to remove",
    ),
    multiple: int = field_option(
        PruneJob,
        "multiple",
        help="kept widths are multiples of this (8 suits INT8 kernels and TensorRT)",
    ),
    steps: int = field_option(
        PruneFinetune, "steps", help="fine-tune steps after the cut (0: cut only)"
    ),
    lr: float = field_option(
        PruneFinetune, "lr", help="fine-tune learning rate (peak, cosine decay)"
    ),
    batch_size: Optional[int] = field_option(
        PruneFinetune, "batch_size", help="fine-tune batch (default: the original run's)"
    ),
    data: Optional[Path] = field_option(
        PruneJob, "data", help="dataset root (default: the one the checkpoint was trained on)"
    ),
    dataset: Optional[str] = field_option(PruneJob, "dataset", help=f"layout: {DATASET_NAMES}"),
    category: Optional[str] = field_option(
        PruneJob, "category", help="category (default: the checkpoint's)"
    ),
    device: str = field_option(PruneJob, "device", help="auto, cpu, cuda or cuda:N"),
    threads: int = field_option(
        PruneFinetune, "threads", help="torch CPU threads (0: the original run's)"
    ),
    overwrite: bool = field_option(PruneJob, "overwrite", help="replace a non-empty --out folder"),
):
    """Remove channels inside the bottleneck and student blocks, then fine-tune on the same data."""
    from .errors import choose
    from .train.checkpoint import read_checkpoint
    from .train.prune import finetune_config, prune_checkpoint

    checks.number(
        "--ratio", ratio, 0, 1, lo_open=True, hi_open=True, note="the share of channels removed"
    )
    checks.integer("--multiple", multiple, 1)
    checks.integer("--steps", steps, 0, note="0: cut only")
    checks.number("--lr", lr, 0, lo_open=True)
    checks.integer("--batch-size", batch_size, 2, optional=True)
    checks.integer("--threads", threads, 0, note=checks.AUTO)
    if dataset is not None:
        choose("dataset", dataset, LAYOUTS)
    finetune = None
    if steps:
        original = read_checkpoint(checkpoint)["metadata"].get("train_config", {})
        finetune = finetune_config(original, steps, lr, batch_size, threads)
    job = PruneJob(
        checkpoint=str(checkpoint),
        out_dir=str(out),
        ratio=ratio,
        multiple=multiple,
        finetune=finetune,
        data=str(data) if data else None,
        dataset=dataset,
        category=category,
        device=device,
        overwrite=overwrite,
    )
    summary = prune_checkpoint(job, console)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="trained checkpoint (last.pt or best.pt)"),
    out: Path = typer.Option(..., "--out", help="bundle folder to write (replaced atomically)"),
    int8: bool = field_option(
        ExportOptions,
        "int8",
        "--int8",
        help="also write the INT8 Q/DQ models (calibrated): one for "
        "TensorRT, one for ONNX Runtime on CPU",
    ),
    fp16: bool = field_option(
        ExportOptions, "fp16", "--fp16", help="also write an FP16-typed model (TensorRT 11)"
    ),
    engine: bool = field_option(
        ExportOptions,
        "engine",
        "--engine",
        help="also build the TensorRT engine of the lowest precision written, into the bundle "
        "(needs TensorRT and a CUDA device, checked before anything is written)",
    ),
    calib_data: Optional[Path] = field_option(
        ExportOptions,
        "calib_data",
        help="dataset root or image folder (default: the training data)",
    ),
    calib_dataset: Optional[str] = field_option(
        ExportOptions,
        "calib_dataset",
        help=f"layout of --calib-data: {DATASET_NAMES}; omit for a plain image folder",
    ),
    calib_category: Optional[str] = field_option(
        ExportOptions, "calib_category", help="category inside --calib-data"
    ),
    calib_count: int = field_option(
        ExportOptions, "calib_count", help="calibration images (all training images if fewer)"
    ),
    calib_method: str = field_option(
        ExportOptions, "calib_method", help="entropy, minmax or percentile"
    ),
    calib_pseudo: bool = field_option(
        ExportOptions, "calib_pseudo", help="add pseudo-anomalous images to the calibration set"
    ),
    max_drop: Optional[float] = field_option(
        ExportOptions,
        "max_drop",
        help="accuracy budget in points (I-AUC and PRO@0.3); keeps "
        "the most sensitive layers in fp32 until it fits",
    ),
    int8_teacher: bool = field_option(
        ExportOptions,
        "int8_teacher",
        help="quantize the teacher too (faster; its noise shows up as "
        "anomaly: check the guard); TensorRT file only",
    ),
    int8_cpu: bool = field_option(
        ExportOptions,
        "int8_cpu",
        help="with --int8, also write model.int8-cpu.onnx (uint8 activations, "
        "the form ONNX Runtime's CPU provider runs as integer kernels)",
    ),
    batch: str = field_option(
        ExportOptions, "batch", shown=str, help="fixed batch N or profile MIN:OPT:MAX"
    ),
    dla_core: Optional[int] = field_option(
        ExportOptions, "dla_core", help="build for this DLA core (Jetson; fixed batch)"
    ),
    workspace: str = field_option(
        ExportOptions,
        "workspace",
        shown=format_size,
        help="TensorRT builder workspace, e.g. 512M, 2G",
    ),
    guard_count: int = field_option(
        ExportOptions, "guard_count", help="held-out images for the fp32/int8 accuracy guard"
    ),
):
    """Turn a checkpoint into a deployment bundle (ONNX with frozen memory banks, INT8, engine)."""
    from .errors import choose

    if calib_dataset is not None:
        choose("calibration dataset layout", calib_dataset, LAYOUTS)
    opts = ExportOptions(
        checkpoint=checkpoint,
        out=out,
        int8=int8,
        fp16=fp16,
        engine=engine,
        calib_data=calib_data,
        calib_dataset=calib_dataset,
        calib_category=calib_category,
        calib_count=calib_count,
        calib_method=calib_method,
        calib_pseudo=calib_pseudo,
        max_drop=max_drop,
        int8_teacher=int8_teacher,
        int8_cpu=int8_cpu,
        batch=BatchProfile.parse(batch),
        dla_core=dla_core,
        workspace=parse_size(workspace),
        guard_count=guard_count,
    ).validate()
    from rich.progress import track

    from .export.pipeline import export_bundle, require_max_drop

    manifest = export_bundle(
        opts, log=say, progress=lambda xs, what: track(xs, description=what, console=console)
    )
    typer.echo(
        json.dumps(
            {"bundle": str(out), "files": sorted(manifest["files"]), "guard": manifest["guard"]},
            indent=2,
        )
    )
    require_max_drop(manifest, out, max_drop)  # exit code 5 (ExitCode.INT8_MAX_DROP)


@app.command("build-engine")
def build_engine_cmd(
    bundle: Path = typer.Argument(..., help="bundle folder from `dmgrd-edge export`"),
    precision: str = typer.Option("int8", help="int8, fp16 or fp32"),
    batch: Optional[str] = typer.Option(
        None, help="fixed N or MIN:OPT:MAX (default: the bundle's)"
    ),
    dla_core: Optional[int] = field_option(
        ExportOptions, "dla_core", help="DLA core (fixed batch, int8/fp16)"
    ),
    workspace: str = field_option(ExportOptions, "workspace", shown=format_size),
):
    """Build a TensorRT engine for this device from a bundle (runs without torch)."""
    from .bundle import load_bundle
    from .errors import choose

    checks.integer("--dla-core", dla_core, 0, optional=True)
    choose("precision", precision, ("int8", "fp16", "fp32"))
    loaded = load_bundle(bundle)
    profile = BatchProfile.parse(batch) if batch else BatchProfile(**loaded.manifest["batch"])
    if dla_core is not None and (profile.dynamic or precision == "fp32"):
        raise ConfigError(
            "DLA needs a fixed batch and int8 or fp16", "use --batch 1 --precision int8"
        )
    from .bundle import add_files
    from .export.tensorrt_engine import build_engines

    entries = build_engines(
        loaded.root,
        [precision],
        profile,
        loaded.model_config.image_size,
        parse_size(workspace),
        dla_core,
        say,
    )
    add_files(loaded, entries)


@app.command()
def run(
    bundle: Optional[Path] = typer.Argument(None, help="bundle folder from `dmgrd-edge export`"),
    source: Optional[str] = typer.Option(
        None,
        help="camera index, /dev/videoN, csi://N, rtsp://..., gst://..., video file, "
        "image folder or glob",
    ),
    sink: list[str] = typer.Option(
        [],
        help="display://, out.avi, events.jsonl[?ng_only=1], folder://DIR, "
        "mqtt://host:port/topic[?qos=1] (repeat)",
    ),
    backend: str = field_option(BackendRequest, "backend", help="auto, tensorrt or onnxruntime"),
    precision: str = field_option(BackendRequest, "precision", help="auto, int8, fp16 or fp32"),
    threshold: Optional[float] = field_option(
        CameraConfig, "threshold", help="image threshold (default: the bundle's)"
    ),
    pixel_threshold: Optional[float] = field_option(
        CameraConfig, "pixel_threshold", help="region threshold on the map (default: threshold)"
    ),
    batch: int = field_option(RunConfig, "batch", help="frames per inference call"),
    headless: bool = typer.Option(False, help="no window"),
    max_frames: Optional[int] = field_option(RunConfig, "max_frames", help="stop after N frames"),
    stats_json: Optional[Path] = field_option(
        RunConfig, "stats_json", help="write latency statistics here at the end"
    ),
    input_width: Optional[int] = field_option(
        CameraConfig, "input_width", help="camera capture width (V4L2, CSI, RTSP)"
    ),
    input_height: Optional[int] = field_option(
        CameraConfig, "input_height", help="camera capture height (V4L2, CSI, RTSP)"
    ),
    input_fps: Optional[float] = field_option(
        CameraConfig,
        "input_fps",
        help="camera frame rate; for a video file or image folder: "
        "replay at this rate like a camera (frames drop when inference "
        "falls behind)",
    ),
    loop: bool = field_option(CameraConfig, "loop", help="loop video files and image folders"),
    queue_size: int = field_option(
        CameraConfig,
        "queue_size",
        help="capture queue length (live sources drop the oldest beyond it)",
    ),
    max_retries: int = field_option(
        CameraConfig, "max_retries", help="reconnect attempts for a live source before giving up"
    ),
    threads: int = field_option(
        BackendRequest, "threads", help="ONNX Runtime threads per call (0: cores / workers)"
    ),
    workers: str = field_option(
        BackendRequest,
        "workers",
        shown=_auto,
        help="inference calls in flight: auto (2 on ONNX Runtime's CPU provider with "
        ">= 2 cores, else 1) or N; 1 gives the lowest latency per frame",
    ),
    no_spin: bool = field_option(
        BackendRequest,
        "spin",
        "--no-spin",
        negated=True,
        help="ONNX Runtime pool threads sleep when idle (leaves CPU "
        "to capture on small machines; lowers the backend's own rate)",
    ),
    config: Optional[Path] = typer.Option(
        None, help="line configuration (TOML): several cameras and bundles in one process"
    ),
    camera: str = typer.Option("camera0", help="camera name in messages, metrics, warnings"),
    metrics: Optional[str] = typer.Option(
        None, help="serve Prometheus metrics on [HOST:]PORT (127.0.0.1 unless a host is given)"
    ),
    view: Optional[str] = typer.Option(
        None,
        help="serve the live view and control interface on [HOST:]PORT (127.0.0.1 unless a "
        "host is given; needs the line extra)",
    ),
    view_token: Optional[str] = typer.Option(
        None,
        envvar="DMGRD_VIEW_TOKEN",
        show_envvar=False,
        help="token every request to the view must carry (or DMGRD_VIEW_TOKEN); with --config: "
        "for a [view] table without one",
    ),
    ng_warn_rate: float = field_option(
        CameraConfig,
        "ng_warn_rate",
        help="warn when more than this share of the first frames is NG (1: never)",
    ),
    ng_warn_frames: int = field_option(
        CameraConfig, "ng_warn_frames", help="frames the NG-rate warning looks at"
    ),
    drift_window: int = field_option(
        CameraConfig,
        "drift_window",
        help="warn when the last N scores drift from the calibration ones (0: off)",
    ),
    drift_psi: float = field_option(
        CameraConfig, "drift_psi", help="PSI above which the drift watch warns"
    ),
):
    """Stream frames through the bundle: OK/NG, regions, overlays, latency (no torch needed)."""
    if config is not None:
        _run_line(locals(), config, stats_json, max_frames, view_token)
        return
    if bundle is None or source is None:
        raise ConfigError(
            "run needs a BUNDLE and --source, or --config", "e.g. run BUNDLE --source line.mp4"
        )
    from .bundle import load_bundle
    from .runtime.run import open_run
    from .runtime.sources import parse_uri

    _check_stream_options(threshold, pixel_threshold, max_frames, queue_size, max_retries, threads)
    _check_watch_options(ng_warn_rate, ng_warn_frames, drift_window, drift_psi, stats_json)
    in_flight = parse_workers(workers)
    spec = parse_uri(source, input_width, input_height, input_fps, loop)  # checks those numbers
    loaded = load_bundle(bundle)
    checks.batch_for_bundle("--batch", batch, loaded.manifest)
    served = _serve_metrics(metrics)
    viewer = _serve_view(view, view_token, served)
    # a wrong source or sink is reported before the model loads
    request = BackendRequest(
        backend=backend,
        precision=precision,
        max_batch=batch,
        threads=threads,
        spin=not no_spin,
        workers=in_flight,
    )
    source_handle, sinks, chosen = open_run(
        loaded, spec, sink, headless, request, camera=camera, log=say
    )
    thr = loaded.threshold_for(chosen.file) if threshold is None else threshold
    say(f"threshold {thr:.4f} ({'--threshold' if threshold is not None else chosen.file})")
    run_config = RunConfig(
        threshold=thr,
        pixel_threshold=thr if pixel_threshold is None else pixel_threshold,
        batch=batch,
        max_frames=max_frames,
        stats_json=stats_json,
        extra={"source": source, "bundle": str(bundle)},
        workers=chosen.workers,
    )
    pipeline, capture = _single_pipeline(
        loaded, chosen, source_handle, sinks, run_config, queue_size, max_retries
    )
    from .runtime.watch import watch_for_run

    watch = watch_for_run(
        camera, loaded, str(bundle), chosen.file, thr, threshold is not None, spec,
        source, sinks, log=say, ng_frames=ng_warn_frames, ng_rate=ng_warn_rate,
        drift_window=drift_window, drift_psi=drift_psi,
    )  # fmt: skip
    pipeline.monitors.append(watch)
    overrides = (threshold, pixel_threshold)
    _show_in_view(viewer, pipeline, capture, bundle, chosen.file, source, camera, overrides)
    code = _stream(pipeline, capture, watch, chosen, served, camera, viewer)
    if code:
        raise SystemExit(code)


def _run_line(
    given: dict, config: Path, stats_json: Optional[Path], max_frames, view_token
) -> None:
    """`run --config`: the cameras and bundles of a line configuration in one process; a
    single-source option given with it is refused first."""
    from .runtime.line_config import refuse_with_config
    from .runtime.multicam import run_line

    refuse_with_config(given, run)
    code = run_line(
        config, log=say, stats_json=stats_json, max_frames=max_frames, view_token=view_token
    )
    if code:
        raise SystemExit(code)


def _check_stream_options(
    threshold, pixel_threshold, max_frames, queue_size: int, max_retries: int, threads: int
) -> None:
    checks.threshold("--threshold", threshold, optional=True)
    checks.threshold("--pixel-threshold", pixel_threshold, optional=True)
    checks.integer("--max-frames", max_frames, 1, optional=True)
    checks.integer("--queue-size", queue_size, 1)
    checks.integer("--max-retries", max_retries, 0, note="0: give up when the source is first lost")
    checks.integer("--threads", threads, 0, note=checks.AUTO)


def _check_watch_options(
    ng_warn_rate: float, ng_warn_frames: int, drift_window: int, drift_psi: float, stats_json
) -> None:
    from .atomic import check_target

    checks.number("--ng-warn-rate", ng_warn_rate, 0, 1)
    checks.integer("--ng-warn-frames", ng_warn_frames, 1)
    if drift_window:
        checks.integer("--drift-window", drift_window, 20, note="0: off")
    checks.number("--drift-psi", drift_psi, 0, lo_open=True)
    if stats_json is not None:
        check_target(stats_json)  # refused before the run, not at its end


def _serve_metrics(metrics: Optional[str]):
    """The Prometheus endpoint, started (None without --metrics): a port that is taken is
    reported before anything opens (it serves from a daemon thread)."""
    if metrics is None:
        return None
    from .runtime.metrics_server import LineMetrics

    return LineMetrics(metrics, log=say).start()


def _serve_view(view: Optional[str], token: Optional[str], served):
    """The live view, listening (None without --view); its control and camera are given
    once the pipeline exists. A port that is taken is reported before anything opens."""
    if view is None:
        if token is not None:
            raise ConfigError("--view-token without --view", "add --view [HOST:]PORT")
        return None
    from .runtime.view import LiveView, ViewConfig

    try:
        return LiveView(ViewConfig(listen=view, token=token), None, log=say).start()
    except BaseException:
        if served is not None:
            served.close()
        raise


def _show_in_view(viewer, pipeline, capture, bundle, file: str, source: str, camera, overrides):
    """The single source's camera in the view, with its control interface: thresholds are
    written into the bundle and applied to the pipeline (no bundle changeover here)."""
    if viewer is None:
        return
    from .runtime.changeover import PipelineControl

    control = PipelineControl(
        pipeline, bundle, file, source, camera,
        override=overrides[0] is not None, pixel_override=overrides[1] is not None, log=say,
    )  # fmt: skip
    viewer.control = control
    pipeline.monitors.append(control)
    viewer.watch(camera, pipeline, capture, source, lambda: (Path(bundle), file))


def _single_pipeline(loaded, chosen, source_handle, sinks, run_config, queue_size, max_retries):
    """The capture of the source and the pipeline from it through the backend to the sinks."""
    from .runtime.capture import Capture
    from .runtime.pipeline import Pipeline, make_preprocess

    capture = Capture(source_handle, make_preprocess(loaded), queue_size, max_retries)
    pipeline = Pipeline(loaded, chosen.backend, sinks, run_config, log=say)
    pipeline.install_signal_handlers()
    return pipeline, capture


def _stream(pipeline, capture, watch, chosen, served, camera: str, viewer=None) -> int:
    """The run's exit code; the backend, the metrics endpoint and the view are closed however
    it ends."""
    if served is not None:
        from .runtime.metrics_server import CameraView

        served.add(CameraView(camera, pipeline, capture, watch))
    try:
        return pipeline.run(capture)
    finally:
        if viewer is not None:
            viewer.close()
        chosen.close()  # TensorRT: buffers, context and engine freed before the CUDA context goes
        if served is not None:
            served.close()


@app.command()
def bench(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    backend: str = field_option(BackendRequest, "backend", help="auto, tensorrt or onnxruntime"),
    precision: str = field_option(BackendRequest, "precision", help="auto, int8, fp16 or fp32"),
    batch: Optional[str] = typer.Option(
        None, help="comma list of batch sizes (default: 1,4,8 up to the bundle's largest batch)"
    ),
    warmup: int = field_option(BenchSettings, "warmup", help="calls before the timed ones"),
    runs: int = field_option(BenchSettings, "runs", help="timed calls per batch size"),
    data: Optional[Path] = typer.Option(None, help="dataset root for accuracy (test split)"),
    dataset: str = field_option(BenchSettings, "dataset", help=f"layout: {DATASET_NAMES}"),
    category: Optional[str] = typer.Option(None, help="category (default: the bundle's)"),
    threads: int = field_option(
        BackendRequest, "threads", help="ONNX Runtime threads per call (0: cores / workers)"
    ),
    workers: str = field_option(
        BackendRequest,
        "workers",
        shown=_auto,
        help="calls in flight for the throughput figure, as in `run` (auto or N); "
        "latency is always one call at a time",
    ),
    out: Path = field_option(BenchSettings, "out", shown=Path, help="JSON results"),
    label: Optional[str] = typer.Option(
        None,
        help="name of this variant in `dmgrd-edge report` (default: backbone, "
        "and 'pruned N%' for a pruned bundle)",
    ),
):
    """Latency (p50/p90/p99), throughput, memory, start-up and accuracy of a backend; no torch."""
    from .atomic import check_target
    from .bundle import load_bundle
    from .errors import choose
    from .runtime.bench import print_table, run_bench, write_json

    checks.integer("--warmup", warmup, 0)
    checks.integer("--runs", runs, 1)
    checks.integer("--threads", threads, 0, note=checks.AUTO)
    check_target(out)
    choose("dataset", dataset, LAYOUTS)
    manifest = load_bundle(bundle, verify=False).manifest  # run_bench verifies it
    if batch is None:
        top = checks.batch_range(manifest)[1]
        batches = tuple(b for b in (1, 4, 8) if b < top) + (min(top, 8),)
    else:
        try:
            batches = tuple(int(b) for b in batch.split(","))
        except ValueError:
            raise ConfigError(f"bad --batch {batch!r}", "give a comma list like 1,4,8") from None
    for size in batches:
        checks.batch_for_bundle("--batch", size, manifest)
    result = run_bench(
        bundle,
        backend_name=backend,
        precision=precision,
        batches=batches,
        warmup=warmup,
        runs=runs,
        data=data,
        dataset=dataset,
        category=category,
        threads=threads,
        log=say,
        workers=parse_workers(workers),
    )
    if label:
        result["label"] = label
    write_json(result, out)
    typer.echo(print_table(result))
    say(f"wrote {out}")


@app.command()
def report(
    results: list[Path] = typer.Argument(
        ..., help="JSON files written by dmgrd-edge bench (one per backbone, precision or device)"
    ),
    out: Path = field_option(
        ReportSettings,
        "out",
        shown=Path,
        help="folder for report.md, report.csv, report.html, pareto.png",
    ),
    metric: str = field_option(
        ReportSettings, "metric", help="accuracy axis: pro_30, i_auroc or p_auroc"
    ),
    max_drop: float = field_option(
        ReportSettings,
        "max_drop",
        help="recommend the fastest variant within this many points of the best",
    ),
    budget_ms: Optional[float] = field_option(
        ReportSettings,
        "budget_ms",
        help="also name the most accurate variant whose batch-1 p50 latency fits this "
        "many ms (per device), or say that none fits",
    ),
):
    """Latency/accuracy trade-off across bench results: table, Pareto front, recommendation
    (no torch)."""
    from .tradeoff import budget_sentence, write_report

    checks.number("--max-drop", max_drop, 0, note="points of accuracy")
    result = write_report(results, out, metric, max_drop, budget_ms)
    typer.echo(result["paths"]["md"].read_text())
    for device, pick in result["recommended"].items():
        say(f"recommended on {device}: {pick.name}")
    for device, pick in result["budget"].items():
        sentence = budget_sentence(result["variants"], device, pick, metric, budget_ms)
        say(f"{device}: {sentence.replace('**', '')}")
    say("wrote " + ", ".join(str(p) for p in result["paths"].values()))


@app.command()
def sweep(
    data: Path = typer.Option(..., help="dataset root"),
    category: str = typer.Option(..., help="the one category every variant is trained on"),
    dataset: str = field_option(SweepConfig, "dataset", help=f"layout: {DATASET_NAMES}"),
    out: Path = field_option(
        SweepConfig, "out", shown=Path, help="sweep folder (run it again to continue)"
    ),
    backbones: str = field_option(
        SweepConfig, "backbones", shown=_comma, help=f"comma list of backbones: {BACKBONE_NAMES}"
    ),
    models: str = field_option(
        SweepConfig,
        "models",
        shown=_comma,
        help=f"comma list of model variants: {', '.join(SWEEP_MODELS)}",
    ),
    ratios: str = field_option(
        SweepConfig, "ratios", shown=_comma, help="comma list of pruning ratios (0: not pruned)"
    ),
    precisions: str = field_option(
        SweepConfig, "precisions", shown=_comma, help="comma list of fp32, int8"
    ),
    image_size: int = field_option(
        SweepConfig, "image_size", help="square input size, multiple of 32"
    ),
    steps: int = field_option(
        SweepConfig, "steps", help="training steps per backbone and model variant"
    ),
    batch_size: int = field_option(SweepConfig, "batch_size"),
    prune_steps: int = field_option(
        SweepConfig, "prune_steps", help="fine-tune steps after each cut"
    ),
    calib_count: int = field_option(SweepConfig, "calib_count", help="INT8 calibration images"),
    bench_batches: str = field_option(
        SweepConfig, "bench_batches", shown=_comma, help="batch sizes bench measures"
    ),
    runs: int = field_option(SweepConfig, "bench_runs", help="bench runs per batch size"),
    workers: str = field_option(
        SweepConfig, "workers", help="bench: calls in flight for throughput"
    ),
    image_score: str = field_option(
        SweepConfig,
        "image_score",
        help="image score of the models whose map is combined: map, student or auto",
    ),
    threads: int = field_option(
        SweepConfig, "threads", help="torch and ONNX Runtime threads (0: default)"
    ),
    device: str = field_option(
        SweepConfig, "device", help="training device: auto, cpu, cuda or cuda:N"
    ),
    metric: str = field_option(
        SweepConfig, "metric", help="report's accuracy axis: pro_30, i_auroc, p_auroc"
    ),
    max_drop: float = field_option(
        SweepConfig, "max_drop", help="report: fastest variant within this many points"
    ),
    budget_ms: Optional[float] = field_option(
        SweepConfig, "budget_ms", help="report: best variant within X ms"
    ),
    ray: Optional[str] = typer.Option(
        None,
        help="train, prune, evaluate and export each training run as a task on a Ray cluster "
        "(auto, local or the head's address; the cluster extra); the bench runs here, one "
        "variant after another; OUT must be a path every node sees",
    ),
    ray_cpus: float = typer.Option(1.0, help="CPUs each Ray task holds (its torch threads)"),
    ray_gpus: float = typer.Option(0.0, help="GPUs each Ray task holds (1: one GPU per run)"),
):
    """Train, prune, export, evaluate and bench a matrix of variants, then report (resumable)."""
    from .train.runners import make_runner
    from .workflow.sweep import run_sweep

    config = SweepConfig(
        data=str(data),
        category=category,
        out=str(out),
        dataset=dataset,
        backbones=split_list("--backbones", backbones),
        models=split_list("--models", models),
        ratios=split_list("--ratios", ratios, float),
        precisions=split_list("--precisions", precisions),
        image_size=image_size,
        steps=steps,
        batch_size=batch_size,
        prune_steps=prune_steps,
        calib_count=calib_count,
        bench_batches=split_list("--bench-batches", bench_batches, int),
        bench_runs=runs,
        workers=workers,
        image_score=image_score,
        threads=threads,
        device=device,
        metric=metric,
        max_drop=max_drop,
        budget_ms=budget_ms,
    )
    runner = make_runner(ray, ray_cpus=ray_cpus, ray_gpus=ray_gpus) if ray else None
    summary = run_sweep(config, console, runner)
    typer.echo((Path(summary["report"]["md"])).read_text())
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def demo(
    out: Path = field_option(
        DemoSettings, "out", shown=Path, help="folder for everything the demo makes"
    ),
    quick: bool = typer.Option(
        False, "--quick", help="the same steps at a reduced size (64 px, a few steps; tests)"
    ),
    threads: int = field_option(
        DemoSettings, "threads", help="torch and ONNX Runtime threads (0: default)"
    ),
    overwrite: bool = field_option(DemoSettings, "overwrite", help="replace an earlier demo"),
):
    """The whole toolkit on generated line data: train, export, stream, sweep, summary page."""
    from .workflow.demo import console_summary, run_demo

    checks.integer("--threads", threads, 0, note=checks.AUTO)
    summary = run_demo(out, "quick" if quick else "full", console, threads, overwrite)
    typer.echo(console_summary(summary))


@app.command("calibrate-threshold")
def calibrate_threshold(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    source: str = typer.Option(
        ..., help="known-good frames: image folder/glob, video file, or a camera URI"
    ),
    false_alarm_rate: float = field_option(
        ThresholdSettings, "false_alarm_rate", help="wanted share of good frames flagged NG"
    ),
    backend: str = field_option(
        BackendRequest,
        "backend",
        help="the backend the line will run: auto, tensorrt or onnxruntime",
    ),
    precision: str = field_option(BackendRequest, "precision", help="auto, int8, fp16 or fp32"),
    max_frames: Optional[int] = field_option(
        ThresholdSettings, "max_frames", help="stop after N frames (needed for live sources)"
    ),
    batch: Optional[int] = field_option(
        ThresholdSettings,
        "batch",
        help="frames per inference call (default: 8, or the bundle's largest batch when smaller)",
    ),
):
    """Set the decision threshold of the model file the line uses from good frames (no torch)."""
    from .bundle import load_bundle
    from .runtime.pipeline import make_preprocess
    from .runtime.select import create_backend
    from .runtime.sources import open_source, parse_uri
    from .runtime.threshold import calibrate, score_source

    checks.number("--false-alarm-rate", false_alarm_rate, 0, 0.5, lo_open=True, hi_open=True)
    checks.integer("--max-frames", max_frames, 1, optional=True)
    spec = parse_uri(source)
    if spec.live and max_frames is None:
        raise ConfigError("a live source needs --max-frames", "e.g. --max-frames 2000")
    loaded = load_bundle(bundle)
    if batch is None:
        batch = min(8, checks.batch_range(loaded.manifest)[1])
    checks.batch_for_bundle("--batch", batch, loaded.manifest)
    chosen = create_backend(loaded, backend, precision, max_batch=batch, log=say)
    # CSI frames scaled to the input size, as in `run`
    source_handle = open_source(spec, (loaded.preprocess.width, loaded.preprocess.height))
    try:
        scores = score_source(
            source_handle, chosen.backend, make_preprocess(loaded), batch, max_frames
        )
    finally:
        chosen.close()
    before = loaded.threshold_for(chosen.file)
    _, summary = calibrate(loaded, chosen.file, scores, false_alarm_rate, source, log=say)
    say(
        f"{chosen.file}: threshold {before:.4f} -> {summary['threshold']:.4f} "
        f"({summary['count']} good frames, median {summary['p50']:.4f}, max {summary['max']:.4f})"
    )
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="the checks as JSON on stdout")):
    """Check TensorRT, pycuda, the CUDA device, OpenCV's GStreamer, cameras and the power mode;
    prints how to fix what is missing and exits 1 when a required part is (runs without torch)."""
    from .runtime.doctor import as_json as to_json
    from .runtime.doctor import render, run_checks

    found = run_checks()
    typer.echo(json.dumps(to_json(found), indent=2) if as_json else render(found))
    if any(c.failed for c in found):
        raise SystemExit(1)


def main() -> None:
    """Entry point: DmgrdError prints the problem and the fix and exits with its kind's code;
    every code is in dmgrd_edge/errors.py (ExitCode, MEANINGS) and the README."""
    try:
        app()
    except DmgrdError as exc:
        console.print(f"[bold red]error:[/] {escape(exc.problem)}", soft_wrap=True)
        if exc.fix:
            console.print(f"  [bold]fix:[/] {escape(exc.fix)}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except (
        OSError
    ) as exc:  # disk full, permission denied, a vanished mount: no traceback, a clear exit code
        where = f" {exc.filename}" if exc.filename else ""
        reason = escape(str(exc.strerror or exc))
        console.print(
            f"[bold red]error:[/] cannot read or write{escape(where)}: {reason}", soft_wrap=True
        )
        console.print(
            "  [bold]fix:[/] check free disk space, permissions and that the path's device "
            "is mounted"
        )
        sys.exit(ExitCode.IO)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    main()
