"""What a camera at the line gets: frames arriving at a fixed rate through `dmgrd-edge run`'s
pipeline, per camera rate and number of inference calls in flight: frames decided per
second, frames dropped, and the latency from capture to decision (p50/p90/p99).

The camera is a generated line video (uncompressed, as a camera delivers) replayed at each
rate by the runtime's own paced source (`--input-fps`: the newest frame on time, frames
missed while capture was busy dropped), with the capture queue of `dmgrd-edge run` (4) and
a JSONL event sink. Each point streams for ``--seconds``.

    python benchmarks/runtime_live.py --bundle BUNDLE

Torch is not imported.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from dmgrd_edge.runtime.capture import Capture
from dmgrd_edge.runtime.device_info import device_info
from dmgrd_edge.runtime.pipeline import Pipeline, make_preprocess
from dmgrd_edge.runtime.select import create_backend
from dmgrd_edge.runtime.sinks import open_sink
from dmgrd_edge.runtime.sources import open_source, parse_uri
from runtime_stream import write_video

from dmgrd_edge.bundle import load_bundle
from dmgrd_edge.options import RunConfig, parse_workers
from dmgrd_edge.report import write_result


def stream_at(
    bundle, chosen, video: Path, rate: float, seconds: float, queue_size: int, events: Path
) -> dict:
    threshold = bundle.threshold_for(chosen.file)
    config = RunConfig(
        threshold=threshold, pixel_threshold=threshold, status_every_s=1e9, workers=chosen.workers
    )
    pipeline = Pipeline(
        bundle, chosen.backend, [open_sink(str(events), headless=True)], config, log=lambda *_: None
    )
    capture = Capture(
        open_source(parse_uri(str(video), fps=rate, loop=True)),
        make_preprocess(bundle),
        queue_size=queue_size,
    )
    timer = threading.Timer(
        seconds, pipeline.stop_event.set
    )  # as SIGINT would: finish what was read
    started, cpu = time.perf_counter(), time.process_time()
    timer.start()
    pipeline.run(capture)
    wall = time.perf_counter() - started
    timer.cancel()
    s = pipeline.summary
    offered = s["frames"] + s["dropped"]
    return {
        "camera_fps": rate,
        "workers": chosen.workers,
        "threads_per_call": chosen.backend.threads,
        "decided_fps": s["frames"] / wall,
        "frames": s["frames"],
        "dropped": s["dropped"],
        "dropped_share": s["dropped"] / max(1, offered),
        "latency_ms": s["stages_ms"]["end_to_end"],
        "inference_ms": s["stages_ms"]["inference"],
        "cores_busy": (time.process_time() - cpu) / wall,
        "seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--precision", default="int8")
    parser.add_argument(
        "--rates", default="30,60,90,120,150", help="camera frame rates, comma list"
    )
    parser.add_argument(
        "--workers", default="1,auto", help="calls in flight to compare, comma list (as --workers)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="streaming time per point")
    parser.add_argument(
        "--queue-size", type=int, default=4, help="capture queue (dmgrd-edge run's default: 4)"
    )
    parser.add_argument("--out", default="benchmarks/results/runtime_live.json")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    size = bundle.preprocess.height
    work = Path(tempfile.mkdtemp(prefix="dmgrd-live-"))
    video = work / "line.avi"
    write_video(video, bundle.manifest["source"]["category"], 300, size, 0.1, seed=7, codec="raw")
    rates = [float(r) for r in args.rates.split(",")]
    points = []
    for workers in args.workers.split(","):
        chosen = create_backend(
            bundle,
            "onnxruntime",
            args.precision,
            log=print,
            spin_between_runs=False,
            workers=parse_workers(workers),
        )
        backend = chosen.backend
        x = make_preprocess(bundle)(np.zeros((size, size, 3), np.uint8))[None]
        for _ in range(10):
            backend.infer(x)
        for rate in rates:
            point = stream_at(
                bundle,
                chosen,
                video,
                rate,
                args.seconds,
                args.queue_size,
                work / f"events-{workers}-{rate:g}.jsonl",
            )
            points.append({**point, "workers_option": workers})
            lat = point["latency_ms"]
            print(
                f"workers {workers:>4s} camera {rate:6.1f} fps: decided "
                f"{point['decided_fps']:6.1f} fps, dropped "
                f"{100 * point['dropped_share']:5.1f} %, latency p50/p90/p99 "
                f"{lat['p50']:.1f}/{lat['p90']:.1f}/"
                f"{lat['p99']:.1f} ms",
                flush=True,
            )
    print(
        f"\n{'workers':>8s} {'camera fps':>10s} {'decided fps':>11s} {'dropped %':>9s} "
        f"{'p50 ms':>7s} {'p90 ms':>7s} "
        f"{'p99 ms':>7s} {'busy':>5s}"
    )
    for p in points:
        lat = p["latency_ms"]
        print(
            f"{p['workers_option']:>8s} {p['camera_fps']:10.0f} {p['decided_fps']:11.1f} "
            f"{100 * p['dropped_share']:9.1f} "
            f"{lat['p50']:7.1f} {lat['p90']:7.1f} {lat['p99']:7.1f} {p['cores_busy']:5.2f}"
        )
    result = {
        "points": points,
        "queue_size": args.queue_size,
        "seconds_per_point": args.seconds,
        "bundle": str(args.bundle),
        "image_size": size,
        "backend": chosen.describe(),
        "device": device_info(),
    }
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
