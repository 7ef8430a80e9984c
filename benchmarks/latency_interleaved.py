"""Latency of several bundles measured in turns, so that a machine whose speed drifts over
minutes (shared VMs: 10-20 %) hits all of them alike: in each round every bundle and
precision runs ``--runs`` calls one after another; the figure per variant is the median over
rounds of the per-round median, and its ratio to the first bundle is taken per round (paired)
before the median.

    python benchmarks/latency_interleaved.py BUNDLE_A BUNDLE_B ... [--precision fp32,int8]

ONNX Runtime, one call at a time on ``--threads`` (0: all cores), batch 1. Torch-free.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from dmgrd_edge.runtime.device_info import device_info
from dmgrd_edge.runtime.select import create_backend

from dmgrd_edge.bundle import load_bundle
from dmgrd_edge.report import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", type=Path, nargs="+")
    parser.add_argument(
        "--names", default=None, help="comma list, one per bundle (default: folder names)"
    )
    parser.add_argument("--precision", default="fp32,int8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/latency_interleaved.json")
    args = parser.parse_args()
    names = args.names.split(",") if args.names else [b.name for b in args.bundles]
    if len(names) != len(args.bundles):
        raise SystemExit(f"--names gives {len(names)} names for {len(args.bundles)} bundles")
    precisions = args.precision.split(",")
    variants = []
    for name, path in zip(names, args.bundles):
        bundle = load_bundle(path)
        size = bundle.preprocess.height
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        for precision in precisions:
            chosen = create_backend(
                bundle,
                "onnxruntime",
                precision,
                threads=args.threads,
                log=lambda *_: None,
                workers=1,
            )
            backend = chosen.backend
            for _ in range(5):
                backend.infer(x)
            variants.append(
                {
                    "name": name,
                    "precision": precision,
                    "file": chosen.file,
                    "backend": backend,
                    "x": x,
                    "rounds_ms": [],
                }
            )
    for _ in range(args.rounds):
        for v in variants:
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                v["backend"].infer(v["x"])
                times.append(1000 * (time.perf_counter() - t0))
            v["rounds_ms"].append(float(np.median(times)))
    rows = []
    for v in variants:
        first = next(w for w in variants if w["precision"] == v["precision"])
        ratios = [a / b for a, b in zip(v["rounds_ms"], first["rounds_ms"])]
        rows.append(
            {
                "name": v["name"],
                "precision": v["precision"],
                "file": v["file"],
                "ms_p50": float(np.median(v["rounds_ms"])),
                "ms_rounds": v["rounds_ms"],
                "ratio_to_first": float(np.median(ratios)),
                "ratio_rounds": ratios,
            }
        )
    print(
        f"{'variant':32s} {'precision':9s} {'ms (median of rounds)':>22s} {'min-max':>13s} "
        f"{'x first':>8s}"
    )
    for r in rows:
        print(
            f"{r['name']:32s} {r['precision']:9s} {r['ms_p50']:22.2f} "
            f"{min(r['ms_rounds']):6.2f}-{max(r['ms_rounds']):<6.2f} {r['ratio_to_first']:8.2f}"
        )
    result = {
        "rows": rows,
        "rounds": args.rounds,
        "runs": args.runs,
        "threads": args.threads,
        "bundles": [str(b) for b in args.bundles],
        "device": device_info(),
    }
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
