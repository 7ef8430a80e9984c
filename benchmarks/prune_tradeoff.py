"""Pruning trade-off: what `dmgrd-edge prune` buys in latency and costs in accuracy.

From one trained checkpoint: the checkpoint itself, the same model trained ``--steps`` more
(so every variant below has seen as many steps), and pruned variants at each ``--ratios``
fine-tuned for the same ``--steps``. Each is exported with INT8 (both forms) and measured
with `dmgrd-edge bench --workers 1` in its own process (ONNX Runtime on this CPU: fp32 and the
INT8 form for the provider, latency one call at a time on all cores, accuracy on the test
split); then the `dmgrd-edge report` logic over all of them (Pareto front, recommendation,
plot).

    python benchmarks/prune_tradeoff.py --checkpoint RUNS/washer-dmgrd/last.pt

Data: the checkpoint's own dataset root and category unless --data/--category say otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dmgrd_edge.config import ModelConfig
from dmgrd_edge.export.pipeline import export_bundle
from dmgrd_edge.options import ExportOptions
from dmgrd_edge.model.pruning import trainable_parameter_count
from dmgrd_edge.report import redact_paths
from dmgrd_edge.tradeoff import write_report
from dmgrd_edge.train.checkpoint import load_model, read_checkpoint
from dmgrd_edge.options import TrainJob
from dmgrd_edge.options import PruneJob
from dmgrd_edge.train.prune import finetune_config, prune_checkpoint
from dmgrd_edge.train.trainer import train_category


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--ratios", default="0.25,0.5,0.75")
    parser.add_argument(
        "--steps", type=int, default=100, help="fine-tune steps (and extra steps of the baseline)"
    )
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--data", default=None)
    parser.add_argument("--category", default=None)
    parser.add_argument("--calib-count", type=int, default=100)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/pruning")
    parser.add_argument(
        "--work", default=None, help="folder for the checkpoints and bundles (default: a new temp)"
    )
    args = parser.parse_args()
    payload = read_checkpoint(args.checkpoint)
    meta = payload["metadata"]
    data, category = args.data or meta["root"], args.category or meta["category"]
    finetune = finetune_config(
        meta.get("train_config", {}), args.steps, args.lr, threads=args.threads
    )
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dmgrd-prune-"))
    print(f"checkpoints and bundles in {work} (bundle0 = first variant, ...)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = {"trained": args.checkpoint}
    timings = {}
    t0 = time.perf_counter()
    config = ModelConfig.from_dict(payload["model_config"])
    train_category(
        TrainJob(
            dataset=meta["dataset"],
            root=data,
            category=category,
            out_dir=str(work / "continued"),
            model=config,
            train=finetune,
            pretrained=False,
            init_from=str(args.checkpoint),
        )
    )
    checkpoints[f"trained +{args.steps} steps"] = work / "continued" / "last.pt"
    timings["continued_s"] = time.perf_counter() - t0
    for ratio in (float(r) for r in args.ratios.split(",")):
        t0 = time.perf_counter()
        prune_checkpoint(
            PruneJob(
                checkpoint=str(args.checkpoint),
                out_dir=str(work / f"pruned{ratio:g}"),
                ratio=ratio,
                finetune=finetune,
                data=data,
                category=category,
            )
        )
        checkpoints[f"pruned {100 * ratio:.0f}% +{args.steps} steps"] = (
            work / f"pruned{ratio:g}" / "last.pt"
        )
        timings[f"prune_finetune_{ratio:g}_s"] = time.perf_counter() - t0
    rows, results = [], []
    for i, (label, ckpt) in enumerate(checkpoints.items()):
        model, _ = load_model(ckpt)
        bundle = work / f"bundle{i}"
        export_bundle(
            ExportOptions(
                checkpoint=Path(ckpt), out=bundle, int8=True, calib_count=args.calib_count
            ),
            log=lambda _: None,
        )
        row = {"variant": label, "trainable_params_m": trainable_parameter_count(model) / 1e6}
        for precision in ("fp32", "int8"):
            # the command a user runs, in its own process: its memory figures are the
            # runtime's alone
            path = out / f"bench_{i}_{precision}.json"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dmgrd_edge.cli",
                    "bench",
                    str(bundle),
                    "--backend",
                    "onnxruntime",
                    "--precision",
                    precision,
                    "--batch",
                    "1,8",
                    "--runs",
                    str(args.runs),
                    "--workers",
                    "1",
                    "--threads",
                    str(args.threads),
                    "--data",
                    str(data),
                    "--dataset",
                    meta["dataset"],
                    "--category",
                    category,
                    "--label",
                    f"{model.config.backbone} {label}",
                    "--out",
                    str(path),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            path.write_text(redact_paths(path.read_text()))
            result = json.loads(path.read_text())
            results.append(path)
            acc = result["accuracy"]
            b1 = next(r for r in result["latency"] if r["batch"] == 1)
            row[precision] = {
                "file": result["backend"]["file"],
                "ms_p50_b1": b1["ms_p50"],
                "i_auroc": acc["i_auroc"],
                "p_auroc": acc["p_auroc"],
                "pro_30": acc["pro_30"],
            }
        rows.append(row)
        print(
            f"{label:28s} params {row['trainable_params_m']:.2f} M | fp32 "
            f"{row['fp32']['ms_p50_b1']:.2f} ms "
            f"PRO {100 * row['fp32']['pro_30']:.2f} | int8 {row['int8']['ms_p50_b1']:.2f} ms "
            f"PRO {100 * row['int8']['pro_30']:.2f}",
            flush=True,
        )
    report = write_report(results, out)
    print(
        f"\n{'variant':28s} {'params M':>8s} {'fp32 ms':>8s} {'int8 ms':>8s} {'fp32 I/P/PRO':>20s} "
        f"{'int8 I/P/PRO':>20s}"
    )
    for row in rows:
        acc = {
            p: "/".join(f"{100 * row[p][k]:.2f}" for k in ("i_auroc", "p_auroc", "pro_30"))
            for p in ("fp32", "int8")
        }
        print(
            f"{row['variant']:28s} {row['trainable_params_m']:8.2f} "
            f"{row['fp32']['ms_p50_b1']:8.2f} "
            f"{row['int8']['ms_p50_b1']:8.2f} {acc['fp32']:>20s} {acc['int8']:>20s}"
        )
    summary = {
        "rows": rows,
        "steps": args.steps,
        "lr": args.lr,
        "calib_count": args.calib_count,
        "category": category,
        "timings_s": timings,
        "report": {k: str(v) for k, v in report["paths"].items()},
    }
    (out / "prune_tradeoff.json").write_text(redact_paths(json.dumps(summary, indent=2)))
    print(f"wrote {out / 'prune_tradeoff.json'} and the trade-off report in {out}")


if __name__ == "__main__":
    main()
