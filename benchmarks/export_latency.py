"""ONNX Runtime (CPU) latency of the exported fp32 and INT8 graphs for every backbone, file
sizes, ONNX-vs-PyTorch parity, and the fp32 -> int8 accuracy change on generated line data.

    python benchmarks/export_latency.py --checkpoint RUN/washer-dmgrd/last.pt

Latency: median (and p90) of repeated runs after warm-up, batch 1 and 8, one process.
The default backbone's figures come from the trained checkpoint (its own training data for
calibration, its test split for accuracy). The ResNet teachers have no ImageNet weights on
an offline machine; their latency is measured on untrained models with the same shapes
(latency does not depend on weight values), and no accuracy is reported for them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from dmgrd_edge.calib.data import CalibrationReader
from dmgrd_edge.calib.quantize import quantize_qdq
from dmgrd_edge.export.onnx_export import check_parity, int8_excluded_nodes, torch_to_onnx
from dmgrd_edge.export.options import BatchProfile, ExportOptions
from dmgrd_edge.runtime.bench import accuracy, latency
from dmgrd_edge.runtime.device_info import device_info
from dmgrd_edge.runtime.onnx_backend import OnnxBackend

from dmgrd_edge.config import ModelConfig
from dmgrd_edge.data.preprocess import normalize
from dmgrd_edge.data.synthetic import make_image
from dmgrd_edge.model import BACKBONES, DMGRD
from dmgrd_edge.report import redact_paths


def untrained_model(name: str, size: int) -> DMGRD:
    torch.manual_seed(0)
    model = DMGRD(ModelConfig(backbone=name, image_size=size), pretrained=(name == "efficientnet_lite0")).eval()
    images = np.stack([make_image("washer", 0, "train", i, size)[0] for i in range(30)])
    x = torch.from_numpy(normalize(images, model.config.preprocess()))
    model.fill_memory(x, x.flip(-1))
    return model


def measure(name, model, work: Path, calib_images, method, args) -> dict:
    size = model.config.image_size
    pre = model.config.preprocess()
    batch = BatchProfile(1, 1, 8)
    fp32, int8 = work / f"{name}.onnx", work / f"{name}.int8.onnx"
    proto = torch_to_onnx(model, fp32, batch, size)
    guard = normalize(calib_images[:8], pre)
    parity = check_parity(model, fp32, guard, batch)
    quantize_qdq(fp32, int8, CalibrationReader(calib_images, pre), method, int8_excluded_nodes(proto), None)
    row = {"backbone": name, "calibration": f"{method}, {len(calib_images)} images",
           "fp32_mb": fp32.stat().st_size / 1e6, "int8_mb": int8.stat().st_size / 1e6,
           "parity_score_rel": parity.score_max_rel_err, "parity_map_abs": parity.map_max_abs_err}
    for precision, path in (("fp32", fp32), ("int8", int8)):
        backend = OnnxBackend(path, threads=args.threads)
        for b in (1, 8):
            runs = args.runs if b == 1 else max(3, args.runs // 4)
            t = latency(backend, b, (size, size), args.warmup, runs)
            row[f"{precision}_b{b}_ms"], row[f"{precision}_b{b}_p90_ms"] = t["ms_p50"], t["ms_p90"]
    row["int8_vs_fp32_b1"] = row["int8_b1_ms"] / row["fp32_b1_ms"]
    row["int8_vs_fp32_b8"] = row["int8_b8_ms"] / row["fp32_b8_ms"]
    return row


def accuracy_delta(checkpoint: Path, work: Path, args) -> dict:
    """Export the trained checkpoint with --int8 as a user would, then score the test split
    with both ONNX models through ONNX Runtime and the numpy metrics."""
    from dmgrd_edge.export.pipeline import export_bundle

    from dmgrd_edge.bundle import load_bundle

    out = work / "bundle"
    manifest = export_bundle(ExportOptions(checkpoint, out, int8=True, calib_count=args.calib_count,
                                           calib_method="entropy", batch=BatchProfile(1, 1, 8)), log=print)
    bundle = load_bundle(out)
    source = manifest["source"]
    result = {"bundle": str(out), "guard": manifest["guard"], "calibration": manifest["calibration"]}
    for precision, name in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        result[precision] = accuracy(OnnxBackend(out / name, threads=args.threads), bundle,
                                     Path(manifest["source"].get("root") or args.data), source["dataset"],
                                     source["category"], 8)
    result["i_auroc_drop_points"] = 100 * (result["fp32"]["i_auroc"] - result["int8"]["i_auroc"])
    result["pro_30_drop_points"] = 100 * (result["fp32"]["pro_30"] - result["int8"]["pro_30"])
    result["p_auroc_drop_points"] = 100 * (result["fp32"]["p_auroc"] - result["int8"]["p_auroc"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="trained default-backbone checkpoint (for accuracy)")
    parser.add_argument("--data", type=Path, help="dataset root of that checkpoint, if it moved")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--calib-count", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the exported files here")
    parser.add_argument("--out", default="benchmarks/results/export_latency.json")
    args = parser.parse_args()
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
            paths = [s.path for s in index_category(meta["dataset"], args.data or meta["root"], meta["category"]).train]
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
    header = (f"{'backbone':18s} {'fp32 b1':>8s} {'int8 b1':>8s} {'ratio':>6s} {'fp32 b8':>8s} {'int8 b8':>8s} "
              f"{'ratio':>6s} {'fp32 MB':>8s} {'int8 MB':>8s} {'score rel':>9s} {'map abs':>8s}")
    print(header)
    for r in rows:
        print(f"{r['backbone']:18s} {r['fp32_b1_ms']:8.1f} {r['int8_b1_ms']:8.1f} {r['int8_vs_fp32_b1']:6.2f} "
              f"{r['fp32_b8_ms']:8.1f} {r['int8_b8_ms']:8.1f} {r['int8_vs_fp32_b8']:6.2f} {r['fp32_mb']:8.1f} "
              f"{r['int8_mb']:8.1f} {r['parity_score_rel']:9.1e} {r['parity_map_abs']:8.1e}")
    if delta:
        print(f"accuracy on the test split (efficientnet_lite0): I-AUC {100 * delta['fp32']['i_auroc']:.2f} -> "
              f"{100 * delta['int8']['i_auroc']:.2f}, P-AUC {100 * delta['fp32']['p_auroc']:.2f} -> "
              f"{100 * delta['int8']['p_auroc']:.2f}, PRO@0.3 {100 * delta['fp32']['pro_30']:.2f} -> "
              f"{100 * delta['int8']['pro_30']:.2f}")
    record = {"benchmark": "export_latency", "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
              "accuracy": delta, "device": device_info(), "torch": str(torch.__version__)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(redact_paths(json.dumps(record, indent=2)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
