"""`dmgrd-edge` command line: a thin layer over the Python API.

Torch is imported only inside the commands that need it, so `dmgrd-edge --help` and the
runtime commands work on a machine without torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import ConfigError, DmgrdError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="DM-GRD anomaly detection: train, evaluate, export and run at the line.")
console = Console(stderr=True)

BACKBONE_NAMES = ("efficientnet_lite0", "resnet18", "resnet50", "wide_resnet50_2")
DATASETS = ("mvtec", "visa_mvtec", "btad", "visa", "folder")


@app.command("generate-data")
def generate_data(
    out: Path = typer.Argument(..., help="folder to create (MVTec AD layout)"),
    categories: str = typer.Option("all", help="comma list of synthetic categories or 'all'"),
    n_train: int = typer.Option(60, help="good training images per category"),
    n_test_good: int = typer.Option(10, help="good test images per category"),
    n_test_per_defect: int = typer.Option(4, help="test images per defect kind"),
    size: int = typer.Option(256, help="image side in pixels"),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, help="replace an existing folder"),
):
    """Write seeded synthetic production-line data with masks (5 defect kinds)."""
    from rich.progress import track

    from .data.synthetic import CATEGORIES, generate_line_data

    names = sorted(CATEGORIES) if categories == "all" else [c.strip() for c in categories.split(",")]
    path = generate_line_data(out, names, n_train, n_test_good, n_test_per_defect, size, seed, overwrite,
                              progress=lambda jobs: track(jobs, description="generate", console=console))
    console.print(f"wrote {path} ({', '.join(names)})")


@app.command()
def backbones():
    """List the registered teacher backbones with their feature channels and strides."""
    from .model.backbones import BACKBONES

    for spec in BACKBONES.values():
        typer.echo(f"{spec.name:20s} channels={spec.channels} strides={spec.strides} weights: {spec.weights_hint}")


@app.command()
def train(
    data: Path = typer.Option(..., help="dataset root"),
    dataset: str = typer.Option("mvtec", help=f"layout: {', '.join(DATASETS)}"),
    category: str = typer.Option("all", help="category, comma list, or 'all' (one model each)"),
    out: Path = typer.Option(Path("runs"), help="output folder (one subfolder per category)"),
    backbone: str = typer.Option("efficientnet_lite0", help=f"one of {', '.join(BACKBONE_NAMES)}"),
    image_size: int = typer.Option(256, help="square input size, multiple of 32"),
    steps: int = typer.Option(5000), batch_size: int = typer.Option(8), lr: float = typer.Option(0.005),
    warmup_steps: int = typer.Option(100), seed: int = typer.Option(111),
    memory_size: int = typer.Option(30, help="K, images per memory bank"),
    selection: str = typer.Option("nearest", help="memory selection: nearest (intended) or authors"),
    no_memory: bool = typer.Option(False, "--no-memory", help="ablation: plain reverse distillation"),
    score_mode: str = typer.Option("topk_mean", help="topk_mean (authors, top-100) or max (RD)"),
    texture_dir: Optional[Path] = typer.Option(None, help="texture images for pseudo-anomalies (e.g. DTD)"),
    teacher_weights: Optional[Path] = typer.Option(None, help="ImageNet weights file for the teacher"),
    random_teacher: bool = typer.Option(False, help="random teacher weights (tests only)"),
    val_every: int = typer.Option(250), checkpoint_every: int = typer.Option(250),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
    no_amp: bool = typer.Option(False, "--no-amp", help="disable mixed precision on CUDA"),
    threads: int = typer.Option(0, help="torch CPU threads (0: default)"),
    resume: bool = typer.Option(False, help="continue from OUT/<category>/last.pt"),
    overwrite: bool = typer.Option(False, help="replace an existing run folder"),
):
    """Train one DM-GRD model per category on defect-free images."""
    from .config import ModelConfig, TrainConfig
    from .data.datasets import resolve_categories
    from .errors import choose
    from .train.loop import TrainJob
    from .train.trainer import train_category

    choose("backbone", backbone, BACKBONE_NAMES)
    choose("dataset", dataset, DATASETS)
    model_cfg = ModelConfig(backbone=backbone, image_size=image_size, memory_size=memory_size,
                            selection=selection, use_memory=not no_memory, score_mode=score_mode)
    train_cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(warmup_steps, steps),
                            seed=seed, val_every=val_every, checkpoint_every=checkpoint_every,
                            texture_dir=str(texture_dir) if texture_dir else None, amp=not no_amp,
                            threads=threads)
    summaries = []
    for name in resolve_categories(dataset, data, category):
        job = TrainJob(dataset, str(data), name, str(out / name.replace("/", "_")), model_cfg, train_cfg,
                       pretrained=not random_teacher, teacher_weights=str(teacher_weights) if teacher_weights else None,
                       device=device, resume=resume, overwrite=overwrite)
        summaries.append(train_category(job, console))
    typer.echo(json.dumps(summaries, indent=2))


@app.command("eval")
def evaluate(
    checkpoints: list[Path] = typer.Argument(..., help="one checkpoint per category (last.pt or best.pt)"),
    data: Optional[Path] = typer.Option(None, help="dataset root (default: the one used for training)"),
    dataset: Optional[str] = typer.Option(None, help=f"layout: {', '.join(DATASETS)}"),
    category: Optional[str] = typer.Option(None, help="override the checkpoint's category"),
    out: Path = typer.Option(Path("eval"), help="folder for report.md/.csv/.json and overlays"),
    batch_size: int = typer.Option(8), device: str = typer.Option("auto"),
    overlays: int = typer.Option(2, help="overlay PNGs per defect type"),
):
    """Evaluate checkpoints on their test sets: paper-style table plus heat-map overlays."""
    from .errors import choose
    from .report import to_markdown, write_reports
    from .train.evaluate import evaluate_checkpoint

    if dataset is not None:
        choose("dataset", dataset, DATASETS)
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    results = [evaluate_checkpoint(c, data, dataset, category, out, batch_size, device, overlays, console)
               for c in checkpoints]
    rows = [r["row"] for r in results]
    title = f"DM-GRD ({results[0]['backbone']}) on {results[0]['dataset']}"
    paths = write_reports(rows, out, "report", title, {"runs": results})
    typer.echo(to_markdown(rows, title))
    console.print(f"wrote {paths['md']}, {paths['csv']}, {paths['json']} and overlays in {out / 'overlays'}")


def main() -> None:
    try:
        app(standalone_mode=False)
    except DmgrdError as exc:
        console.print(f"[bold red]error:[/] {exc.problem}")
        if exc.fix:
            console.print(f"  [bold]fix:[/] {exc.fix}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
