"""ONNX Runtime (CPU) latency of the exported fp32 graph and both INT8 graphs (the TensorRT
Q/DQ form and the CPU form) for every backbone, file sizes, ONNX-vs-PyTorch parity, and the
fp32 -> int8 accuracy change on generated line data.

    python benchmarks/export_latency.py --checkpoint RUN/washer-dmgrd/last.pt

Latency: median (and p90) of repeated runs after warm-up, batch 1 and 8, one process; the
three sessions take turns in rounds, so that a slow spell of the machine hits all of them.
Their pool threads stop spinning when a call returns (as in `dmgrd-edge run`); otherwise
the session that just ran keeps the cores busy while the next one starts. Measured for
each ``--threads`` count (0: all cores, the default of one call at a time; 1: one call per
core, what `dmgrd-edge run` uses on the CPU provider with two calls in flight).
The default backbone's figures come from the trained checkpoint (its own training data for
calibration, its test split for accuracy). The ResNet teachers have no ImageNet weights on
an offline machine; their latency is measured on untrained models with the same shapes
(latency does not depend on weight values), and no accuracy is reported for them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from dmgrd_edge.calib.data import CalibrationReader
from dmgrd_edge.calib.quantize import quantize_qdq
from dmgrd_edge.export.onnx_export import check_parity, int8_excluded_nodes, torch_to_onnx
from dmgrd_edge.runtime.bench import accuracy
from dmgrd_edge.runtime.device_info import device_info
from dmgrd_edge.runtime.onnx_backend import OnnxBackend

from dmgrd_edge.config import ModelConfig
from dmgrd_edge.data.preprocess import normalize
from dmgrd_edge.data.synthetic import make_image
from dmgrd_edge.model import BACKBONES, DMGRD
from dmgrd_edge.options import BatchProfile, ExportOptions
from dmgrd_edge.report import write_result


def untrained_model(name: str, size: int) -> DMGRD:
    torch.manual_seed(0)
    model = DMGRD(
        ModelConfig(backbone=name, image_size=size), pretrained=(name == "efficientnet_lite0")
    ).eval()
    images = np.stack([make_image("washer", 0, "train", i, size)[0] for i in range(30)])
    x = torch.from_numpy(normalize(images, model.config.preprocess()))
    model.fill_memory(x, x.flip(-1))
    return model


FILES = (
    ("fp32", "fp32", None),
    ("int8", "int8 (TensorRT Q/DQ)", "tensorrt"),
    ("int8_cpu", "int8 (CPU form)", "cpu"),
)


def interleaved_latency(
    backends: dict, batch: int, size: int, warmup: int, runs: int, per_turn: int
) -> dict:
    x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    times = {key: [] for key in backends}
    for backend in backends.values():
        for _ in range(warmup):
            backend.infer(x)
    for _ in range(max(1, runs // per_turn)):
        for key, backend in backends.items():
            for _ in range(per_turn):
                t0 = time.perf_counter()
                backend.infer(x)
                times[key].append(1000 * (time.perf_counter() - t0))
    return {
        key: (float(np.percentile(t, 50)), float(np.percentile(t, 90))) for key, t in times.items()
    }


def measure(name, model, work: Path, calib_images, method, args) -> dict:
    size = model.config.image_size
    pre = model.config.preprocess()
    batch = BatchProfile(1, 1, 8)
    paths = {key: work / f"{name}.{key}.onnx" for key, _, _ in FILES}
    proto = torch_to_onnx(model, paths["fp32"], batch, size)
    guard = normalize(calib_images[:8], pre)
    parity = check_parity(model, paths["fp32"], guard, batch)
    reader = CalibrationReader(calib_images, pre)
    for key, _, target in FILES[1:]:
        exclude = int8_excluded_nodes(proto, quantize_teacher=target == "cpu")
        quantize_qdq(paths["fp32"], paths[key], reader, method, exclude, None, target)
    row = {
        "backbone": name,
        "calibration": f"{method}, {len(calib_images)} images",
        "parity_score_rel": parity.score_max_rel_err,
        "parity_map_abs": parity.map_max_abs_err,
    }
    for key, path in paths.items():
        row[f"{key}_mb"] = path.stat().st_size / 1e6
    for threads in args.thread_counts:
        backends = {
            key: OnnxBackend(path, threads=threads, spin_between_runs=False)
            for key, path in paths.items()
        }
        timing = {"threads": backends["fp32"].threads}
        for b in (1, 8):
            runs = args.runs if b == 1 else max(4, args.runs // 4)
            result = interleaved_latency(backends, b, size, args.warmup, runs, 5 if b == 1 else 2)
            for key, (p50, p90) in result.items():
                timing[f"{key}_b{b}_ms"], timing[f"{key}_b{b}_p90_ms"] = p50, p90
            for key, _, _ in FILES[1:]:
                timing[f"{key}_vs_fp32_b{b}"] = timing[f"{key}_b{b}_ms"] / timing[f"fp32_b{b}_ms"]
        row.setdefault("by_threads", []).append(timing)
        del backends
    row.update(
        {k: v for k, v in row["by_threads"][0].items() if k != "threads"}
    )  # the first count, flat
    return row


def accuracy_delta(checkpoint: Path, work: Path, args) -> dict:
    """Export the trained checkpoint with --int8 as a user would, then score the test split
    with both ONNX models through ONNX Runtime and the numpy metrics."""
    from dmgrd_edge.export.pipeline import export_bundle

    from dmgrd_edge.bundle import load_bundle

    out = work / "bundle"
    manifest = export_bundle(
        ExportOptions(
            checkpoint=checkpoint,
            out=out,
            int8=True,
            calib_count=args.calib_count,
            calib_method="entropy",
            batch=BatchProfile(1, 1, 8),
        ),
        log=print,
    )
    bundle = load_bundle(out)
    source = manifest["source"]
    result = {
        "bundle": str(out),
        "guard": manifest["guard"],
        "calibration": manifest["calibration"],
    }
    result["guard_cpu"] = manifest["files"]["model.int8-cpu.onnx"]["guard"]
    for key, name in (
        ("fp32", "model.onnx"),
        ("int8", "model.int8.onnx"),
        ("int8_cpu", "model.int8-cpu.onnx"),
    ):
        result[key] = accuracy(
            OnnxBackend(out / name),
            bundle,
            Path(args.data or manifest["source"].get("root")),
            source["dataset"],
            source["category"],
            8,
        )
        if key != "fp32":
            for metric in ("i_auroc", "pro_30", "p_auroc"):
                result[f"{key}_{metric}_drop_points"] = 100 * (
                    result["fp32"][metric] - result[key][metric]
                )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, help="trained default-backbone checkpoint (for accuracy)"
    )
    parser.add_argument("--data", type=Path, help="dataset root of that checkpoint, if it moved")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--calib-count", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--threads", default="0,1", help="comma list of ONNX Runtime thread counts (0: all cores)"
    )
    parser.add_argument("--keep", type=Path, help="keep the exported files here")
    parser.add_argument("--out", default="benchmarks/results/export_latency.json")
    args = parser.parse_args()
    args.thread_counts = [int(t) for t in args.threads.split(",")]
    work = args.keep or Path(tempfile.mkdtemp(prefix="dmgrd-export-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    size = args.image_size
    rows, delta = [], None
    for name in args.backbones.split(","):
        if name == "efficientnet_lite0" and args.checkpoint:
            from dmgrd_edge.train.checkpoint import load_model

            model, payload = load_model(args.checkpoint)
            from dmgrd_edge.train.loop import load_images

            from dmgrd_edge.data.datasets import index_category

            meta = payload["metadata"]
            paths = [
                s.path
                for s in index_category(
                    meta["dataset"], args.data or meta["root"], meta["category"]
                ).train
            ]
            calib = load_images(paths[: args.calib_count], model.config.preprocess())
            method = "entropy"
        else:
            model = untrained_model(name, size)
            calib = np.stack([make_image("washer", 1, "train", i, size)[0] for i in range(16)])
            method = "minmax"  # latency only: the cheapest calibration, same graph
        print(f"== {name}", flush=True)
        rows.append(measure(name, model, work, calib, method, args))
        print(json.dumps(rows[-1]), flush=True)
        del model
    if args.checkpoint:
        delta = accuracy_delta(args.checkpoint, work, args)
    print(
        f"{'backbone':18s} {'file':22s} {'threads':>7s} {'b1 ms':>7s} {'x fp32':>6s} {'b8 ms':>7s} "
        f"{'x fp32':>6s} "
        f"{'MB':>6s}"
    )
    for r in rows:
        for t in r["by_threads"]:
            for key, label, _ in FILES:
                ratio = lambda b: "" if key == "fp32" else f"{t[f'{key}_vs_fp32_b{b}']:.2f}"  # noqa: E731
                print(
                    f"{r['backbone']:18s} {label:22s} {t['threads']:7d} {t[f'{key}_b1_ms']:7.1f} "
                    f"{ratio(1):>6s} "
                    f"{t[f'{key}_b8_ms']:7.1f} {ratio(8):>6s} {r[f'{key}_mb']:6.1f}"
                )
        print(
            f"{'':18s} parity fp32 vs torch: score rel {r['parity_score_rel']:.1e}, "
            f"map abs {r['parity_map_abs']:.1e}"
        )
    if delta:
        for key, label, _ in FILES[1:]:
            print(
                f"accuracy on the test split (efficientnet_lite0), fp32 -> {label}: "
                + ", ".join(
                    f"{m} {100 * delta['fp32'][k]:.2f} -> {100 * delta[key][k]:.2f}"
                    for m, k in (("I-AUC", "i_auroc"), ("P-AUC", "p_auroc"), ("PRO@0.3", "pro_30"))
                )
            )
    record = {
        "benchmark": "export_latency",
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
        "accuracy": delta,
        "device": device_info(),
        "torch": str(torch.__version__),
    }
    write_result(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
