"""Train DM-GRD and the plain-RD ablation on generated line data; print a side-by-side
table (I-AUC, P-AUC, PRO@0.3, training img/s) and write JSON.

    python benchmarks/train_synthetic.py --steps 300 --categories washer

Defaults fit the 20-minute CPU budget of a 2-core machine at 256 px. The last checkpoint
is evaluated (no model selection on the test set).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from dmgrd_edge.train.evaluate import evaluate_checkpoint
from dmgrd_edge.options import TrainJob
from dmgrd_edge.train.trainer import train_category
from rich.console import Console

from dmgrd_edge.config import ModelConfig, TrainConfig
from dmgrd_edge.data.synthetic import generate_line_data
from dmgrd_edge.report import write_result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", default="washer,woven_fabric")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results/train_synthetic.json")
    parser.add_argument(
        "--work", default=None, help="keep data and checkpoints here (default: a temp folder)"
    )
    args = parser.parse_args()
    console = Console(stderr=True)
    categories = args.categories.split(",")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dmgrd-bench-"))
    data = generate_line_data(
        work / "line",
        categories,
        overwrite=True,
        n_train=args.n_train,
        n_test_good=12,
        n_test_per_defect=4,
        size=args.image_size,
        seed=0,
    )
    results, started = [], time.time()
    for category in categories:
        for variant, use_memory in (("DM-GRD", True), ("RD (no memory)", False)):
            model_cfg = ModelConfig(
                backbone=args.backbone, image_size=args.image_size, use_memory=use_memory
            )
            train_cfg = TrainConfig(
                steps=args.steps,
                batch_size=args.batch_size,
                warmup_steps=max(1, args.steps // 20),
                val_every=args.steps,
                checkpoint_every=args.steps,
                seed=111,
            )
            run_dir = work / "runs" / f"{category}-{'dmgrd' if use_memory else 'rd'}"
            t0 = time.time()
            summary = train_category(
                TrainJob(
                    dataset="mvtec",
                    root=str(data),
                    category=category,
                    out_dir=str(run_dir),
                    model=model_cfg,
                    train=train_cfg,
                    device=args.device,
                    overwrite=True,
                ),
                console,
            )
            train_s = time.time() - t0
            evaluation = evaluate_checkpoint(
                run_dir / "last.pt", device=args.device, console=console
            )
            row = evaluation["row"]
            results.append(
                {
                    "category": category,
                    "variant": variant,
                    "i_auroc": row.get("i_auroc"),
                    "p_auroc": row.get("p_auroc"),
                    "pro_30": row.get("pro_30"),
                    "pro_full": row.get("pro_full"),
                    "train_img_per_s": summary["train_img_per_s"],
                    "train_seconds": train_s,
                    "ms_per_image": row["ms_per_image"],
                }
            )
    header = (
        f"{'category':14s} {'variant':16s} {'I-AUC':>7s} {'P-AUC':>7s} {'PRO@0.3':>8s} "
        f"{'img/s':>7s} {'train s':>8s}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['category']:14s} {r['variant']:16s} {100 * r['i_auroc']:7.2f} "
            f"{100 * r['p_auroc']:7.2f} "
            f"{100 * r['pro_30']:8.2f} {r['train_img_per_s']:7.2f} {r['train_seconds']:8.0f}"
        )
    record = {
        "benchmark": "train_synthetic",
        "args": vars(args),
        "results": results,
        "total_seconds": time.time() - started,
        "machine": {
            "cpu": cpu_name(),
            "cores": torch.get_num_threads(),
            "torch": str(torch.__version__),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    write_result(args.out, record)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
