"""A sweep of 4 variants (2 categories x 2 model forms) through the local runner (one after
another) and through a local Ray instance (2 tasks at once, 1 CPU each); wall time and the
metrics of each variant, which must be the same with the same seeds. Prints a table, writes
JSON. Needs the `cluster` extra (pip install -e ".[cluster]").

    nice -n 15 python benchmarks/ray_sweep.py --steps 10

Both runners train every variant on 1 torch thread (the Ray task holds 1 CPU), so the two
runs compute the same floats. Ray's wall time includes starting its workers, not ray.init.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from dmgrd_edge.runtime.device_info import cpu_model
from dmgrd_edge.options import TrainJob
from dmgrd_edge.train.runners import LocalRunner, RayRunner
from rich.console import Console

from dmgrd_edge.config import PAPER_MODEL_FIELDS, ModelConfig, TrainConfig
from dmgrd_edge.data.synthetic import generate_line_data
from dmgrd_edge.report import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--out", default="benchmarks/results/ray_sweep.json")
    args = parser.parse_args()
    import ray

    work = Path(tempfile.mkdtemp(prefix="dmgrd-sweep-"))
    categories = ["washer", "woven_fabric"]
    forms = {"default": {}, "paper": PAPER_MODEL_FIELDS}  # the paper's memory-guided student
    data = generate_line_data(work / "line", categories, 24, 4, 2, args.image_size, 0)

    def jobs(where: str) -> list[TrainJob]:
        return [
            TrainJob(
                dataset="mvtec",
                root=str(data),
                category=category,
                out_dir=str(work / where / form / category),
                model=ModelConfig(image_size=args.image_size, memory_size=8, **fields),
                train=TrainConfig(
                    steps=args.steps,
                    batch_size=4,
                    warmup_steps=1,
                    val_every=args.steps,
                    checkpoint_every=args.steps,
                    threads=1,
                ),
                device="cpu",
            )
            for form, fields in forms.items()
            for category in categories
        ]

    console = Console(stderr=True)
    t0 = time.perf_counter()
    local = LocalRunner().run(jobs("local"), console)
    local_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    remote = RayRunner(num_cpus=1).run(jobs("ray"), console)
    ray_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = RayRunner(num_cpus=1).run(jobs("ray"), console)  # all finished: nothing runs
    again_wall = time.perf_counter() - t0
    ray.shutdown()

    rows = []
    for job, a, b in zip(jobs("x"), local, remote):
        form = "paper" if job.model.memory_read == "image" else "default"
        va, vb = a["final_validation"], b["final_validation"]
        rows.append(
            {
                "variant": f"{form}/{job.category}",
                "i_auroc": va["i_auroc"],
                "p_auroc": va["p_auroc"],
                "pro_30": va["pro_30"],
                "loss": va["loss"],
                "identical_local_vs_ray": va == vb,
            }
        )
    print("| variant | val I-AUC | val P-AUC | val PRO@0.3 | loss | local == Ray |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['i_auroc']:.4f} | {r['p_auroc']:.4f} | {r['pro_30']:.4f} | "
            f"{r['loss']:.4f} | {r['identical_local_vs_ray']} |"
        )
    print()
    print("| runner | wall s |")
    print("|---|---|")
    print(f"| local, one after another | {local_wall:.1f} |")
    print(
        f"| Ray, {args.cpus} CPUs, 1 per task (ray.init {init_s:.1f} s not counted) | "
        f"{ray_wall:.1f} |"
    )
    print(f"| Ray again, all finished (nothing runs) | {again_wall:.1f} |")
    record = {
        "benchmark": "ray_sweep",
        "command": f"python benchmarks/ray_sweep.py --image-size {args.image_size} "
        f"--steps {args.steps} --cpus {args.cpus}",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "shared": True},
        "ray_version": ray.__version__,
        "wall_s": {
            "local": round(local_wall, 1),
            "ray": round(ray_wall, 1),
            "ray_init": round(init_s, 1),
            "ray_rerun_all_finished": round(again_wall, 2),
        },
        "rerun_returned_the_same_summaries": again == remote,
        "variants": rows,
    }
    write_result(args.out, record)


if __name__ == "__main__":
    main()
