"""Several paced cameras through one runtime (`dmgrd-edge run --config`'s Line): per camera
the frames decided per second, the frames dropped and the latency from capture to decision
(p50/p99), for 1, 2 and 4 cameras at 30 fps sharing one bundle, with the cameras' frames
batched into one backend call ("shared": up to one frame per camera per call) and with one
call per frame ("per-frame", batch 1); the gain is the decided frames of all cameras per
second, shared over per-frame.

Each camera is a generated line video (uncompressed) replayed at the rate by the runtime's
paced source (frames missed while capture was busy are dropped, as a camera's), with the
capture queue of `run` (4) and no sink. Each point streams for ``--seconds``.

    python benchmarks/runtime_multicam.py --bundle BUNDLE --precision int8

Torch is not imported.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from dmgrd_edge.runtime.device_info import device_info
from dmgrd_edge.runtime.line_config import LineConfig
from dmgrd_edge.runtime.multicam import Line
from runtime_stream import write_video

from dmgrd_edge.bundle import load_bundle
from dmgrd_edge.options import CameraConfig
from dmgrd_edge.report import write_result


def point(bundle: Path, video: Path, cameras: int, fps: float, batch: int, args) -> dict:
    cams = tuple(
        CameraConfig(
            name=f"cam{i}",
            source=str(video),
            bundle=bundle,
            input_fps=fps,
            loop=True,
            ng_warn_rate=1.0,
        )
        for i in range(cameras)
    )
    config = LineConfig(
        Path("line.toml"),
        cams,
        backend="onnxruntime",
        precision=args.precision,
        batch=batch,
        workers=args.workers,
        status_every_s=1e9,
    )
    line = Line(config, log=lambda *_: None).open()
    timer = threading.Timer(args.seconds, line.stop_event.set)
    started, cpu = time.perf_counter(), time.process_time()
    timer.start()
    line.run()
    wall = time.perf_counter() - started
    timer.cancel()
    per_camera = []
    for name, s in line.summary["cameras"].items():
        e2e = s["stages_ms"].get("end_to_end", {})
        per_camera.append(
            {
                "camera": name,
                "decided_fps": s["frames"] / wall,
                "frames": s["frames"],
                "dropped": s["dropped"],
                "dropped_share": s["dropped"] / max(1, s["frames"] + s["dropped"]),
                "p50_ms": e2e.get("p50"),
                "p99_ms": e2e.get("p99"),
            }
        )
    group = line.summary["bundles"][0]
    return {
        "cameras": cameras,
        "camera_fps": fps,
        "batch": batch,
        "mode": "shared" if batch > 1 else "per-frame",
        "seconds": wall,
        "decided_fps_total": sum(c["decided_fps"] for c in per_camera),
        "frames_per_call": group["frames_per_call"],
        "calls": group["calls"],
        "cores_busy": (time.process_time() - cpu) / wall,
        "per_camera": per_camera,
        "backend": group["backend"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--cameras", default="1,2,4", help="camera counts, comma list")
    parser.add_argument("--fps", type=float, default=30.0, help="each camera's frame rate")
    parser.add_argument("--workers", default="auto", help="backend calls in flight (as run's)")
    parser.add_argument("--seconds", type=float, default=10.0, help="streaming time per point")
    parser.add_argument("--category", default="washer", help="generated part in the video")
    parser.add_argument("--out", default="benchmarks/results/runtime_multicam.json")
    args = parser.parse_args()
    size = load_bundle(args.bundle).preprocess.height
    video = Path(tempfile.mkdtemp(prefix="dmgrd-multicam-")) / "line.avi"
    write_video(video, args.category, 150, size, 0.1, seed=7, codec="raw")
    points = []
    for n in [int(c) for c in args.cameras.split(",")]:
        for batch in sorted({1, n}):
            p = point(args.bundle, video, n, args.fps, batch, args)
            points.append(p)
            worst = max(c["p99_ms"] or 0 for c in p["per_camera"])
            print(
                f"{n} camera(s) {p['mode']:>9s} (batch {batch}): "
                f"{p['decided_fps_total']:6.1f} fps decided in all, per camera "
                + ", ".join(f"{c['decided_fps']:.1f}" for c in p["per_camera"])
                + f"; dropped {sum(c['dropped'] for c in p['per_camera'])}; "
                f"p50 {min(c['p50_ms'] or 0 for c in p['per_camera']):.0f}-"
                f"{max(c['p50_ms'] or 0 for c in p['per_camera']):.0f} ms, p99 <= {worst:.0f} ms; "
                f"{p['frames_per_call'] or 0:.2f} frames/call",
                flush=True,
            )
    gains = {}
    for n in {p["cameras"] for p in points}:
        shared = [p for p in points if p["cameras"] == n and p["batch"] > 1]
        single = [p for p in points if p["cameras"] == n and p["batch"] == 1]
        if shared and single and single[0]["decided_fps_total"]:
            gains[str(n)] = shared[0]["decided_fps_total"] / single[0]["decided_fps_total"]
    for n, gain in sorted(gains.items()):
        print(f"batching gain, {n} cameras: {gain:.2f}x decided frames per second")
    result = {
        "points": points,
        "batching_gain": gains,
        "seconds_per_point": args.seconds,
        "bundle": str(args.bundle),
        "precision": args.precision,
        "image_size": size,
        "device": device_info(),
    }
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
