"""Detection quality on real photographs: DM-GRD variants side by side with plain RD and the
training-free nearest-neighbour baseline, trained and measured in one run.

    python benchmarks/detection_quality.py --work W --steps 300 \
        [--photos W/photos] [--line W/line --line-categories woven_fabric] \
        [--int8 coin] --out benchmarks/results/detection_quality_300.json

Trained variants (one run folder each under W/r<steps>/, reused when a finished run is there):

- ``rd``: plain Reverse Distillation (``--no-memory``);
- ``image``: DM-GRD as in the paper: one whole bank image chosen by nearest distance guides
  the student (``--memory-read image``);
- ``patch``: DM-GRD with the position-free read: the nearest normal patch at every location
  guides the student (``--memory-read patch``);
- ``knn``: the nearest-neighbour baseline (``--method knn``, no training);
- ablations of the patch-read model: ``patch-linear`` (MSFF replaced by a 1x1 projection,
  ``--fusion linear``), ``patch-no-ot``, ``patch-no-con``, ``patch-no-triplet`` (that loss
  term's weight 0, ``--without-loss``).

Each trained model is also rescored (``dmgrd-edge rescore``, no retraining) with the memory's
nearest-patch distance added to the student's (``combined``), for the patch-read model
with the student alone, and for RD with the patch memory at K = 512 and 8192 rows per level
(the default is 2048). Every row is evaluated on the test split (fp32, PyTorch, last
checkpoint). ``--int8 CATEGORY,...`` also exports those categories' default models with INT8
and evaluates the ONNX Runtime CPU INT8 form on the same test split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console

PATCH = {"memory_read": "patch", "score_source": "combined", "image_score": "map"}
# run name: (model options, training options)
TRAINED = {
    "rd": ({"use_memory": False}, {}),
    "image": ({"memory_read": "image", "score_source": "student"}, {}),
    "patch": (PATCH, {}),
    "knn": ({"method": "knn"}, {}),
    # ablations of the memory path, each on the patch-read model
    "patch-linear": ({**PATCH, "fusion": "linear"}, {}),
    "patch-no-ot": (PATCH, {"ot_weight": 0.0}),
    "patch-no-con": (PATCH, {"con_weight": 0.0}),
    "patch-no-triplet": (PATCH, {"triplet_weight": 0.0}),
}
MAIN_RUNS = ("rd", "image", "patch", "knn")
# (row name, trained run, (score source, map scale, patch bank rows or None[, image score]) of
# the rescored checkpoint, or None for the run as trained)
ROWS = [
    ("RD (no memory)", "rd", None),
    ("kNN baseline (training-free)", "knn", None),
    ("DM-GRD paper: image read, student score", "image", None),
    ("DM-GRD image read, combined score", "image", ("combined", "mean", None, "map")),
    ("DM-GRD patch read, student score", "patch", ("student", "mean", None)),
    ("DM-GRD patch read, combined score", "patch", None),
    ("DM-GRD patch read, combined score (std scale)", "patch", ("combined", "std", None, "map")),
    ("DM-GRD patch read, combined, MSFF -> 1x1 projection", "patch-linear", None),
    ("DM-GRD patch read, combined, without OT", "patch-no-ot", None),
    ("DM-GRD patch read, combined, without Con", "patch-no-con", None),
    ("DM-GRD patch read, combined, without triplet", "patch-no-triplet", None),
    ("RD + memory score", "rd", ("combined", "mean", None, "map")),
    ("RD + memory score (std scale)", "rd", ("combined", "std", None, "map")),
    ("RD + memory score, K = 512 patches", "rd", ("combined", "mean", 512, "map")),
    ("RD + memory score, K = 8192 patches", "rd", ("combined", "mean", 8192, "map")),
    ("RD + memory map, student image score", "rd", ("combined", "mean", None, "student")),
    ("RD + memory map, auto image score", "rd", ("combined", "mean", None, "auto")),
    (
        "RD + memory map (std scale), student image score",
        "rd",
        ("combined", "std", None, "student"),
    ),
]
DEFAULT_ROW = "RD + memory map (std scale), student image score"
# the default before the auto image score: its INT8 bundles are in WORK/bundles<steps>-default
DEFAULT_ROW_BEFORE = "RD + memory score"


def rescore_suffix(rescore: tuple) -> str:
    """The file-name part of a rescored checkpoint: rescored-<suffix>.pt."""
    source, scale, bank, image_score = (*rescore, None)[:4]
    suffix = source if scale == "mean" else f"{source}-{scale}"
    suffix += f"-k{bank}" if bank else ""
    # "map" was the only rule when the earlier runs' files were named
    return suffix + (f"-{image_score}-score" if image_score not in (None, "map") else "")


def machine() -> dict:
    import os

    import torch
    from dmgrd_edge.runtime.device_info import cpu_model

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_root(work: Path, steps: int, seed: int) -> Path:
    """The folder of one steps-and-seed's runs; the default seed keeps the earlier name."""
    from dmgrd_edge.config import TrainConfig

    return work / (f"r{steps}" if seed == TrainConfig().seed else f"r{steps}-seed{seed}")


def train_run(
    key: str,
    dataset_root: Path,
    category: str,
    steps: int,
    work: Path,
    threads: int,
    console: Console,
    seed: int,
) -> tuple[Path, dict]:
    from dmgrd_edge.options import TrainJob
    from dmgrd_edge.train.trainer import train_category

    from dmgrd_edge.config import TrainConfig, model_config_from_options

    out = run_root(work, steps, seed) / key / category
    summary_path = out / "train_summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("steps") in (steps, 0):
            return out / "last.pt", summary
    model_options, train_options = TRAINED[key]
    model_cfg = model_config_from_options(**model_options)
    train_cfg = TrainConfig(
        steps=steps, warmup_steps=min(100, steps), threads=threads, seed=seed, **train_options
    )
    job = TrainJob(
        dataset="mvtec",
        root=str(dataset_root),
        category=category,
        out_dir=str(out),
        model=model_cfg,
        train=train_cfg,
        overwrite=True,
    )
    t0 = time.perf_counter()
    summary = train_category(job, console)
    summary["wall_seconds"] = time.perf_counter() - t0
    summary_path.write_text(json.dumps(summary, indent=2))
    return out / "last.pt", summary


def train_seconds(summary: dict, steps: int) -> float | None:
    if not summary.get("steps"):
        return 0.0
    rate = summary.get("train_img_per_s")
    return steps * 8 / rate if rate else summary.get("wall_seconds")


def image_score_chosen(checkpoint: Path) -> str | None:
    """The rule an `auto` image score chose on the validation pseudo-anomalies."""
    from dmgrd_edge.train.checkpoint import read_checkpoint

    choice = read_checkpoint(checkpoint)["metadata"].get("image_score_choice")
    return choice["chosen"] if choice else None


def evaluate(checkpoint: Path, console: Console) -> dict:
    """Test-split metrics of a checkpoint, kept beside it (``<name>.eval.json``) and reused
    while the checkpoint is unchanged."""
    from dmgrd_edge.train.evaluate import evaluate_checkpoint

    cache = checkpoint.with_suffix(".eval.json")
    stamp = checkpoint.stat().st_mtime_ns
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("checkpoint_mtime_ns") == stamp:
            return saved["row"]
    row = evaluate_checkpoint(checkpoint, device="cpu", console=console)["row"]
    keep = ("i_auroc", "p_auroc", "pro_30", "pro_full", "ms_per_image")
    row = {k: row[k] for k in keep if k in row}
    cache.write_text(json.dumps({"checkpoint_mtime_ns": stamp, "row": row}))
    return row


def int8_accuracy(checkpoint: Path, bundle: Path, console: Console) -> dict:
    """Export with INT8 and evaluate the CPU INT8 form and the fp32 ONNX on the test split."""
    from dmgrd_edge.export.pipeline import export_bundle
    from dmgrd_edge.runtime.bench import accuracy
    from dmgrd_edge.runtime.select import create_backend

    from dmgrd_edge.bundle import load_bundle
    from dmgrd_edge.options import ExportOptions

    if not (bundle / "manifest.json").is_file():
        export_bundle(
            ExportOptions(checkpoint=checkpoint, out=bundle, int8=True),
            log=lambda m: console.print(m),
        )
    loaded = load_bundle(bundle)
    source = loaded.manifest["source"]
    result = {}
    for precision in ("fp32", "int8"):
        chosen = create_backend(loaded, "onnxruntime", precision, log=lambda _: None)
        acc = accuracy(
            chosen.backend, loaded, Path(source["root"]), source["dataset"], source["category"], 8
        )
        result[precision] = {k: acc[k] for k in ("i_auroc", "p_auroc", "pro_30")}
        result[f"{precision}_file"] = chosen.file
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="folder for data, runs and bundles"
    )
    parser.add_argument(
        "--photos", type=Path, help="photograph set (default: WORK/photos, built if missing)"
    )
    parser.add_argument("--categories", default="brick,grass,gravel,coin")
    parser.add_argument(
        "--line", type=Path, help="generated line data (built if missing) for --line-categories"
    )
    parser.add_argument("--line-categories", default="")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="training seed (default: the trainer's); other seeds train in WORK/r<steps>-seed<N>",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per training (0: default)"
    )
    parser.add_argument(
        "--runs",
        default=",".join(MAIN_RUNS),
        help=f"trained variants to include, of {', '.join(TRAINED)}",
    )
    parser.add_argument(
        "--int8", default="", help="categories whose default model is exported with INT8"
    )
    parser.add_argument(
        "--int8-row",
        default=DEFAULT_ROW,
        choices=[name for name, _, _ in ROWS],
        help="the row whose model --int8 exports (default: the default's)",
    )
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="train nothing: report the runs already finished in WORK",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="result JSONs of earlier runs at the same steps whose categories join the table",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/detection_quality.json"
    )
    args = parser.parse_args()
    if args.seed is None:
        from dmgrd_edge.config import TrainConfig

        args.seed = TrainConfig().seed
    console = Console(stderr=True)
    started = time.perf_counter()

    from dmgrd_edge.train.rescore import rescore_checkpoint

    from dmgrd_edge.data.photos import build_photo_set
    from dmgrd_edge.data.synthetic import generate_line_data

    photos = args.photos or args.work / "photos"
    if not photos.exists():
        build_photo_set(photos)
    sets = [("photographs", photos, c) for c in args.categories.split(",") if c]
    line_categories = [c for c in args.line_categories.split(",") if c]
    if line_categories:
        line = args.line or args.work / "line"
        if not line.exists():
            generate_line_data(line, line_categories)
        sets += [("generated", line, c) for c in line_categories]
    runs = [r for r in args.runs.split(",") if r]
    unknown = sorted(set(runs) - set(TRAINED))
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {', '.join(TRAINED)}")
    results = []
    for kind, root, category in sets:
        trained = {}
        for key in runs:
            run_dir = run_root(args.work, args.steps, args.seed) / key / category
            if args.finished_only and not (run_dir / "train_summary.json").is_file():
                continue
            console.print(f"[bold]{kind}/{category}: {key} ({args.steps} steps)[/]")
            trained[key] = train_run(
                key, root, category, args.steps, args.work, args.threads, console, args.seed
            )
        for name, key, rescore in ROWS:
            if key not in trained:
                continue
            checkpoint, summary = trained[key]
            if rescore is not None:
                source, scale, bank, image_score = (*rescore, None)[:4]
                target = checkpoint.with_name(f"rescored-{rescore_suffix(rescore)}.pt")
                if not target.is_file():
                    rescore_checkpoint(
                        checkpoint,
                        target,
                        source,
                        map_scale=scale,
                        patch_bank_size=bank,
                        image_score=image_score,
                        device="cpu",
                        console=console,
                    )
                checkpoint = target
            chosen = image_score_chosen(checkpoint) if rescore is not None else None
            row = {
                "set": kind,
                "category": category,
                "variant": name,
                "steps": args.steps,
                "seed": args.seed,
                "train_seconds": train_seconds(summary, args.steps),
                **evaluate(checkpoint, console),
                **({"image_score_chosen": chosen} if chosen else {}),
            }
            results.append(row)
            console.print(
                f"{category:14s} {name:42s} I-AUC {100 * row['i_auroc']:.1f} "
                f"P-AUC {100 * row['p_auroc']:.1f} PRO@0.3 {100 * row['pro_30']:.1f}"
            )
    int8 = {}
    int8_run, int8_rescore = next((key, r) for name, key, r in ROWS if name == args.int8_row)
    suffix = rescore_suffix(int8_rescore) if int8_rescore else "trained"
    # WORK/bundles<steps>[-seed<N>]-<row>
    bundles = args.work / run_root(args.work, args.steps, args.seed).name.replace("r", "bundles", 1)
    for category in [c for c in args.int8.split(",") if c]:
        # the row's checkpoint (rescored above); the default row's bundles keep their name
        run = run_root(args.work, args.steps, args.seed) / int8_run / category
        checkpoint = run / (f"rescored-{suffix}.pt" if int8_rescore else "last.pt")
        folder = "default" if args.int8_row == DEFAULT_ROW_BEFORE else suffix
        int8[category] = int8_accuracy(
            checkpoint, bundles.parent / f"{bundles.name}-{folder}" / category, console
        )
    results += merged_rows(args.merge, args.steps, {(r["set"], r["category"]) for r in results})
    table = summarise(results)
    print(table)
    payload = {
        "benchmark": "detection_quality",
        "args": {k: str(v) for k, v in vars(args).items()},
        "default_variant": DEFAULT_ROW,
        "results": results,
        "means": means(results),
        "int8": int8,
        "int8_row": args.int8_row,
        "total_seconds": time.perf_counter() - started,
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1))
    console.print(f"wrote {args.out}")


STUDENT_SCORE_ROW = "RD + memory map, student image score"


def merged_rows(paths: list[Path], steps: int, have: set) -> list[dict]:
    """Rows of earlier result files at ``steps`` for categories this run did not measure.

    A file written before the student image score existed lacks that row; it is derived
    there from the same run's rows: its image score is the RD student's score times a
    constant (the same I-AUC as RD) and its map is the default's (the same P-AUC and
    PRO@0.3). Derived rows say so (``derived``); the runs that measure the row directly
    check the rule."""
    rows = []
    for path in paths:
        payload = json.loads(path.read_text())
        found = [r for r in payload["results"] if r["steps"] == steps]
        found = [r for r in found if (r["set"], r["category"]) not in have]
        for row in found:
            rows.append({**row, "merged_from": path.name})
        for kind, category in dict.fromkeys((r["set"], r["category"]) for r in found):
            by_name = {r["variant"]: r for r in found if r["category"] == category}
            if STUDENT_SCORE_ROW in by_name or not {"RD (no memory)", DEFAULT_ROW_BEFORE} <= set(
                by_name
            ):
                continue
            rd, default = by_name["RD (no memory)"], by_name[DEFAULT_ROW_BEFORE]
            rows.append(
                {
                    **default,
                    "variant": STUDENT_SCORE_ROW,
                    "i_auroc": rd["i_auroc"],
                    "derived": "I-AUC of RD, P-AUC and PRO of the default, same run",
                    "merged_from": path.name,
                }
            )
    return rows


def means(results: list[dict]) -> dict:
    out: dict = {}
    for kind in sorted({r["set"] for r in results}):
        for name in dict.fromkeys(r["variant"] for r in results):
            rows = [r for r in results if r["set"] == kind and r["variant"] == name]
            if rows:
                out.setdefault(kind, {})[name] = {
                    m: sum(r[m] for r in rows) / len(rows) for m in ("i_auroc", "p_auroc", "pro_30")
                }
    return out


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return " / ".join(f"{100 * row[m]:.1f}" for m in ("i_auroc", "p_auroc", "pro_30"))


def summarise(results: list[dict]) -> str:
    cats = list(dict.fromkeys((r["set"], r["category"]) for r in results))
    names = list(dict.fromkeys(r["variant"] for r in results))
    by_key = {(r["set"], r["category"], r["variant"]): r for r in results}
    head = "| variant | " + " | ".join(c for _, c in cats) + " | mean (photographs) |"
    lines = [head, "|" + "---|" * (len(cats) + 2)]
    avg = means(results).get("photographs", {})
    for name in names:
        cells = [_cell(by_key.get((kind, cat, name))) for kind, cat in cats]
        cells.append(_cell(avg.get(name)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "I-AUC / P-AUC / PRO@0.3 per category\n" + "\n".join(lines)


if __name__ == "__main__":
    main()
