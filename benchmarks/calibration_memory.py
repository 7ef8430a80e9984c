"""Peak memory and time of INT8 calibration + quantization, with statistics collected in
chunks (what dmgrd-edge export does) and in one pass (ONNX Runtime's default), each in its
own process.

    python benchmarks/calibration_memory.py --bundle BUNDLE \
        --images LINE/washer/train/good --count 48
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dmgrd_edge.report import redact_paths
from dmgrd_edge.runtime.device_info import device_info


def one_run(bundle: Path, images: Path, count: int, target: str, chunked: bool) -> dict:
    """In this process: calibrate and quantize, return peak RSS and seconds."""
    import numpy as np
    import onnx
    from dmgrd_edge.calib.data import CalibrationReader
    from dmgrd_edge.calib.quantize import quantize_qdq
    from dmgrd_edge.export.onnx_export import int8_excluded_nodes

    from dmgrd_edge.bundle import load_bundle
    from dmgrd_edge.data.imageio import read_image
    from dmgrd_edge.data.preprocess import resize_rgb

    class OnePass(CalibrationReader):
        set_range = None  # no strided collection: ONNX Runtime takes the whole set at once

    loaded = load_bundle(bundle)
    files = sorted(p for p in images.iterdir() if p.is_file())
    pictures = np.stack(
        [resize_rgb(read_image(files[i % len(files)]), loaded.preprocess) for i in range(count)]
    )
    reader = (CalibrationReader if chunked else OnePass)(pictures, loaded.preprocess)
    model = bundle / "model.onnx"
    exclude = int8_excluded_nodes(onnx.load(str(model), load_external_data=False), target == "cpu")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        quantize_qdq(model, Path(work) / "q.onnx", reader, "entropy", exclude, None, target)
    return {
        "target": target,
        "chunked": chunked,
        "images": count,
        "seconds": time.perf_counter() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder of good images")
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--target", default="cpu", choices=["cpu", "tensorrt"])
    parser.add_argument("--child", choices=["chunked", "one-pass"], help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/calibration_memory.json")
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                one_run(args.bundle, args.images, args.count, args.target, args.child == "chunked")
            )
        )
        return
    rows = []
    for mode in ("chunked", "one-pass"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--bundle",
                str(args.bundle),
                "--images",
                str(args.images),
                "--count",
                str(args.count),
                "--target",
                args.target,
                "--child",
                mode,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'collection':10s} {'images':>6s} {'peak RSS MiB':>13s} {'seconds':>8s}")
    for r in rows:
        print(
            f"{'chunked' if r['chunked'] else 'one pass':10s} {r['images']:6d} "
            f"{r['peak_rss_mib']:13.0f} "
            f"{r['seconds']:8.1f}"
        )
    Path(args.out).write_text(
        redact_paths(
            json.dumps(
                {
                    "benchmark": "calibration_memory",
                    "rows": rows,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "device": device_info(),
                },
                indent=2,
            )
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
