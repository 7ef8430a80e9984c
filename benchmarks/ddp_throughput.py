"""Training throughput of one model on 1 process vs N gloo processes (DDP) on this CPU, with
the same total batch; prints a table and writes JSON.

    nice -n 15 python benchmarks/ddp_throughput.py --image-size 128 --steps 20

img/s counts the images of the whole batch per second of the training loop (rank 0's loop,
which waits for the others every step); wall includes process start, data loading, memory
fill and the final validation. On a machine with few cores N processes share the same cores,
so the figure is about equal: the point of DDP here is correctness, on N GPUs it is speed.
Each run names its torch threads per process (1x2: one process on 2 threads).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from dmgrd_edge.runtime.device_info import cpu_model
from dmgrd_edge.train.checkpoint import read_checkpoint
from dmgrd_edge.train.distributed import launch
from dmgrd_edge.options import TrainJob
from dmgrd_edge.train.trainer import train_category
from rich.console import Console

from dmgrd_edge.config import ModelConfig, TrainConfig
from dmgrd_edge.data.synthetic import generate_line_data
from dmgrd_edge.report import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--runs",
        default="1x1,1x2,2x1",
        help="processes x torch threads per process, one run each, in this order",
    )
    parser.add_argument("--out", default="benchmarks/results/ddp_throughput.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dmgrd-ddp-"))
    data = generate_line_data(work / "line", ["washer"], 24, 2, 1, args.image_size, 0)

    def job(name: str, threads: int) -> TrainJob:
        return TrainJob(
            dataset="mvtec",
            root=str(data),
            category="washer",
            out_dir=str(work / name),
            model=ModelConfig(image_size=args.image_size),
            train=TrainConfig(
                steps=args.steps,
                batch_size=args.batch_size,
                warmup_steps=1,
                val_every=args.steps,
                checkpoint_every=args.steps,
                threads=threads,
            ),
            device="cpu",
        )

    rows = []
    for run in args.runs.split(","):
        processes, threads = (int(v) for v in run.split("x"))
        name = f"p{processes}t{threads}"
        t0 = time.perf_counter()
        if processes == 1:
            summary = train_category(job(name, threads), Console(stderr=True))
        else:
            summary = launch([job(name, threads)], processes, "cpu")[0]
        wall = time.perf_counter() - t0
        history = read_checkpoint(work / name / "last.pt")["metadata"]["history"]
        rows.append(
            {
                "processes": processes,
                "threads_per_process": threads,
                "train_img_per_s": round(summary["train_img_per_s"], 2),
                "wall_s": round(wall, 1),
                "final_loss": history[-1]["loss"],
                "final_val_p_auroc": history[-1].get("p_auroc"),
            }
        )
    print(f"| processes | threads each | train img/s | wall s | loss at step {args.steps} |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['processes']} | {r['threads_per_process']} | {r['train_img_per_s']} | "
            f"{r['wall_s']} | {r['final_loss']:.4f} |"
        )
    record = {
        "benchmark": "ddp_throughput",
        "command": "python benchmarks/ddp_throughput.py "
        f"--image-size {args.image_size} --steps {args.steps} --batch-size {args.batch_size} "
        f"--runs {args.runs}",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "shared": True},
        "model": "default (efficientnet_lite0, patch memory in the score)",
        "backend": "gloo",
        "rows": rows,
    }
    write_result(args.out, record)


if __name__ == "__main__":
    main()
