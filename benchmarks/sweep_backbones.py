"""Backbone sweep on generated line data: EfficientNet-Lite0/Lite1/Lite2 x pruning 0 / 50 %
x fp32 / INT8 (12 variants) with `dmgrd-edge sweep`, then its report.

    python benchmarks/sweep_backbones.py --work W                # the full sweep (resumable)
    python benchmarks/sweep_backbones.py --work W --tiny         # a few steps of each stage,
                                                                 # then the full sweep's time
                                                                 # estimated from it

The data: `dmgrd-edge generate-data` washer, 60 good training images, 10 good and 20 defective
test images, 256 px, seed 0. Training budget: --steps per backbone (batch 8, Adam 0.005,
warm-up then cosine), --prune-steps of fine-tune after the 50 % cut (lr 0.001), INT8
calibrated on --calib-count training images. Bench: ONNX Runtime on this CPU, batch 1 and 4,
one call at a time for latency, accuracy on the test split.

The full run copies the results (paths redacted) and the report to --out. The estimate
scales the measured training and fine-tune time per step to the asked step counts and adds
the other stages as measured (they do not depend on the step count); on a shared CPU it is
as slow as the CPU was during the tiny run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rich.console import Console

from dmgrd_edge.data.synthetic import generate_line_data
from dmgrd_edge.options import SweepConfig
from dmgrd_edge.report import redact_paths
from dmgrd_edge.workflow.sweep import Sweep

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def machine() -> str:
    """This machine in words, for the result files: CPU model and core count."""
    import os

    from dmgrd_edge.runtime.device_info import cpu_model

    return f"{os.cpu_count()}-core {cpu_model()}"


def config(args, work: Path, steps: int, prune_steps: int) -> SweepConfig:
    return SweepConfig(
        data=str(work / "line"),
        category="washer",
        out=str(work / f"sweep-{steps}-{prune_steps}"),
        backbones=BACKBONES,
        models=("default",),
        ratios=(0.0, 0.5),
        precisions=("fp32", "int8"),
        image_size=256,
        steps=steps,
        prune_steps=prune_steps,
        calib_count=args.calib_count,
        guard_count=20,
        bench_batches=(1, 4),
        bench_runs=args.runs,
        threads=args.threads,
        device=args.device,
    )


def _scaled(seconds: float, img_per_s: float | None, batch: int, tiny: int, full: int) -> float:
    """A training stage's time at ``full`` steps: its fixed part (loading, model, memory,
    validation) as measured, plus the steps at the measured images per second."""
    if not img_per_s:
        return seconds
    per_step = batch / img_per_s
    return max(0.0, seconds - tiny * per_step) + full * per_step


def estimate(sweep: Sweep, steps: int, prune_steps: int, tiny_steps: int, tiny_prune: int):
    """Wall and CPU seconds the sweep would take with ``steps``/``prune_steps``, from the
    tiny run's stages: training scaled by step count, the rest as measured."""
    rows, totals, seen = [], {"wall": 0.0, "cpu": 0.0}, set()
    batch = sweep.config.batch_size
    for v in sweep.variants:
        result = json.loads(sweep.paths.result(v).read_text())
        s, ips = result["sweep"]["seconds"], result["sweep"]["train_img_per_s"]
        stages = []
        if v.run not in seen and not v.ratio:  # one training per backbone
            stages.append(("train", steps, tiny_steps))
        if v.ratio and v.stem not in seen:
            stages.append(("prune", prune_steps, tiny_prune))
        if v.stem not in seen:
            stages += [("eval", 1, 1), ("export", 1, 1)]
        stages.append(("bench", 1, 1))
        row = {"variant": v.id}
        for stage, full, tiny in stages:
            if stage not in s:
                continue
            wall, cpu = s[stage], s.get(f"{stage}_cpu", s[stage])
            if full != tiny:  # the steps scale; the fixed part (loading, memory) does not
                wall = _scaled(wall, ips, batch, tiny, full)
                cpu = cpu * wall / s[stage] if s[stage] else cpu
            row[stage], row[f"{stage}_cpu"] = round(wall, 1), round(cpu, 1)
            totals["wall"] += wall
            totals["cpu"] += cpu
        seen |= {v.run, v.stem}
        rows.append(row)
    return rows, totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="data, runs and bundles")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--prune-steps", type=int, default=100)
    parser.add_argument("--calib-count", type=int, default=60)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="estimate the full sweep's time")
    parser.add_argument("--tiny-steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep_backbones"))
    args = parser.parse_args()
    console = Console(stderr=True)
    line = args.work / "line"
    if not line.is_dir():
        generate_line_data(line, ["washer"], 60, 10, 4, 256, seed=0)
    steps, prune = (
        (args.tiny_steps, args.tiny_steps) if args.tiny else (args.steps, args.prune_steps)
    )
    sweep = Sweep(config(args, args.work, steps, prune), console)
    started = time.perf_counter()
    summary = sweep.run()
    seconds = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        rows, totals = estimate(sweep, args.steps, args.prune_steps, steps, prune)
        record = {
            "benchmark": "sweep_backbones estimate",
            "machine": f"{machine()}, load: whatever ran beside the tiny run",
            "tiny_run": {"steps": steps, "prune_steps": prune, "seconds": round(seconds, 1)},
            "estimate_for": {"steps": args.steps, "prune_steps": args.prune_steps},
            "estimated_wall_seconds_at_this_load": round(totals["wall"], 1),
            "estimated_cpu_seconds": round(totals["cpu"], 1),
            "stages": rows,
        }
        target = args.out / "estimate.json"
        target.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record, indent=2))
        print(
            f"estimated for {args.steps} steps / {args.prune_steps} fine-tune steps: "
            f"{totals['wall'] / 60:.1f} min at the tiny run's load, "
            f"{totals['cpu'] / 60:.1f} CPU-minutes (on 2 free cores: between "
            f"{totals['cpu'] / 120:.1f} and {totals['cpu'] / 60:.1f} min)"
        )
        return
    for v in sweep.variants:  # the results, with this machine's paths taken out
        text = sweep.paths.result(v).read_text()
        for folder in (str(args.work.resolve()), str(args.work)):
            text = text.replace(folder, "<work>")
        text = redact_paths(text)
        (args.out / sweep.paths.result(v).name).write_text(text)
    for name in ("report.md", "report.csv", "report.html", "pareto.png"):
        shutil.copyfile(sweep.paths.report / name, args.out / name)
    record = {
        "benchmark": "sweep_backbones",
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items() if k not in ("work", "out")},
        "seconds": round(seconds, 1),
        "recommended": summary["recommended"],
    }
    (args.out / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    print((args.out / "report.md").read_text())
    print(f"sweep: {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
