"""Stream a generated line video (>= 2000 frames, defects known) through the runtime with
the ONNX Runtime INT8 bundle; compare end-to-end fps with the backend's own throughput,
report pre+post-processing cost, detection against the generator's truth, and resident
memory growth.

The backend's own throughput is measured as `dmgrd-edge run` drives it (the same calls in
flight, ``--workers``, default auto) on one preprocessed frame, by wall clock. The stream is
run ``--repeats`` times (default 3) with a backend-alone measurement before, between and
after them (A S A S A S A), and each stream's end-to-end rate (frames over its wall clock) is
set against the mean of the two measurements next to it, because this machine's speed drifts
by several per cent over minutes; the median of those ratios is reported, with all of them.

    python benchmarks/runtime_stream.py --bundle BUNDLE --frames 2000

Torch is not imported (the runtime path is the one a Jetson runs).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from dmgrd_edge.runtime.bench import throughput
from dmgrd_edge.runtime.capture import Capture
from dmgrd_edge.runtime.device_info import device_info
from dmgrd_edge.runtime.pipeline import Pipeline, make_preprocess
from dmgrd_edge.runtime.select import create_backend
from dmgrd_edge.runtime.sinks import open_sink
from dmgrd_edge.runtime.sources import VideoCaptureSource, parse_uri

from dmgrd_edge.bundle import load_bundle
from dmgrd_edge.data.synthetic import DEFECTS, make_image
from dmgrd_edge.options import RunConfig, parse_workers
from dmgrd_edge.report import write_result


def rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


# lossless codecs only: MJPG artefacts raise every score (docs/BENCHMARKS.md), and the
# threshold is calibrated on lossless PNG frames. "raw" (uncompressed frames, the default) is
# what a line camera hands over (CSI through the ISP, UVC, GigE Vision): nothing to decode.
# PNG and FFV1 model a recorded file; their software decode is part of the end-to-end work and
# the script measures and reports it (decode_ms_per_frame)
CODECS = {"png": ("png ", ".avi"), "ffv1": ("FFV1", ".mkv"), "raw": ("RGBA", ".avi")}


def write_video(
    path: Path,
    category: str,
    frames: int,
    size: int,
    defect_rate: float,
    seed: int,
    codec: str = "png",
) -> list[bool]:
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*CODECS[codec][0]), 25, (size, size))
    if not writer.isOpened():
        others = ", ".join(c for c in CODECS if c != codec)
        raise SystemExit(
            f"this OpenCV build cannot write {codec} video; try --codec with one of: {others}"
        )
    truth = []
    for i in range(frames):
        defect = DEFECTS[int(rng.integers(len(DEFECTS)))] if rng.random() < defect_rate else None
        image, _ = make_image(category, seed, "video", i, size, defect)
        writer.write(np.ascontiguousarray(image[:, :, ::-1]))
        truth.append(defect is not None)
    writer.release()
    return truth


def decode_ms(path: Path, frames: int = 200) -> float:
    """Software decode cost per frame of the video (part of the end-to-end work)."""
    reader = cv2.VideoCapture(str(path))
    count, started = 0, time.perf_counter()
    while count < frames and reader.read()[0]:
        count += 1
    reader.release()
    return 1000 * (time.perf_counter() - started) / max(1, count)


class MemoryProbe:
    """RSS after the warm-up frames (sampled by the sink path) and at the end (when the
    pipeline closes its sinks); one file read each, not one per frame."""

    needs_overlay = False

    def __init__(self, after: int):
        self.after, self.start, self.end = after, None, None

    def write(self, event, frame, overlay):
        if event.frame == self.after:
            self.start = rss_mib()

    def close(self):
        self.end = rss_mib()


class ConstantBackend:
    """Answers at once with a flat map: streaming through it measures what the pipeline
    itself costs per frame (decode, preprocess, queues, post-processing, sinks)."""

    name, precision, calls_from_any_thread = "constant", "fp32", True
    batch_range = (1, None)

    def __init__(self, size: int):
        self.size = size

    def infer(self, batch):
        return np.zeros((len(batch), 1, self.size, self.size), np.float32), np.zeros(
            len(batch), np.float32
        )

    def describe(self) -> dict:
        return {"backend": self.name}


def pipeline_cost(bundle, video: Path, size: int, workers: int, events: Path) -> dict:
    """CPU milliseconds per frame of the pipeline alone, with the same sink and source."""
    pipeline = Pipeline(
        bundle,
        ConstantBackend(size),
        [open_sink(str(events), headless=True)],
        RunConfig(threshold=1.0, pixel_threshold=1.0, status_every_s=1e9, workers=workers),
        log=lambda *_: None,
    )
    capture = Capture(
        VideoCaptureSource(parse_uri(str(video))), make_preprocess(bundle), queue_size=8
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    pipeline.run(capture)
    frames = max(1, pipeline.stats.frames)
    return {
        "cpu_ms_per_frame": 1000 * (time.process_time() - cpu_started) / frames,
        "fps": frames / (time.perf_counter() - started),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--precision", default="int8")
    parser.add_argument(
        "--category", default=None, help="synthetic category (default: the bundle's)"
    )
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--defect-rate", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--no-spin", action="store_true", help="ONNX Runtime pool threads sleep when idle"
    )
    parser.add_argument(
        "--spin-between-runs",
        type=int,
        default=0,
        help="1: ONNX Runtime pool threads keep spinning after a run returns (dmgrd-edge run: 0)",
    )
    parser.add_argument(
        "--codec",
        default="raw",
        choices=sorted(CODECS),
        help="lossless video codec (raw: uncompressed, as a camera delivers)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="streams, each between two backend-alone runs"
    )
    parser.add_argument("--batch", type=int, default=1, help="frames per inference call")
    parser.add_argument(
        "--workers", default="auto", help="inference calls in flight, as `dmgrd-edge run --workers`"
    )
    parser.add_argument(
        "--backend-runs", type=int, default=600, help="calls for the backend's own rate"
    )
    parser.add_argument(
        "--calibrate-frames",
        type=int,
        default=1000,
        help="good frames (another seed) to calibrate the threshold on first; 0 keeps the bundle's",
    )
    parser.add_argument("--false-alarm-rate", type=float, default=0.002)
    parser.add_argument("--out", default="benchmarks/results/runtime_stream.json")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    size = bundle.preprocess.height
    category = args.category or bundle.manifest["source"]["category"]
    work = Path(tempfile.mkdtemp(prefix="dmgrd-stream-"))
    video = work / f"line{CODECS[args.codec][1]}"
    t0 = time.perf_counter()
    truth = write_video(
        video, category, args.frames, size, args.defect_rate, seed=7, codec=args.codec
    )
    decode = decode_ms(video)
    print(
        f"wrote {video} ({args.frames} frames, {sum(truth)} defective) in "
        f"{time.perf_counter() - t0:.0f} s"
    )

    chosen = create_backend(
        bundle,
        "onnxruntime",
        args.precision,
        threads=args.threads,
        log=print,
        spin=not args.no_spin,
        spin_between_runs=bool(args.spin_between_runs),
        workers=parse_workers(args.workers),
    )
    backend, workers = chosen.backend, chosen.workers

    x = np.repeat(
        make_preprocess(bundle)(make_image(category, 9, "video", 0, size)[0])[None], args.batch, 0
    )
    busy: list[float] = []  # cores busy while the backend runs alone

    def backend_fps_alone(runs: int) -> float:
        """The backend's own rate: back-to-back calls on one preprocessed frame, as many at
        once as the pipeline keeps in flight."""
        for _ in range(10):
            backend.infer(x)
        cpu, t = time.process_time(), time.perf_counter()
        rate = throughput(backend, x, workers, max(1, runs // workers))
        busy.append((time.process_time() - cpu) / (time.perf_counter() - t))
        return rate

    calibration = None
    if args.calibrate_frames:
        from dmgrd_edge.runtime.sources import ImageFolderSource
        from dmgrd_edge.runtime.threshold import calibrate, score_source

        good = work / "good"
        good.mkdir()
        for i in range(args.calibrate_frames):
            image, _ = make_image(category, 8, "video", i, size)
            cv2.imwrite(str(good / f"{i:05d}.png"), np.ascontiguousarray(image[:, :, ::-1]))
        scores = score_source(
            ImageFolderSource(parse_uri(str(good))), backend, make_preprocess(bundle)
        )
        bundle, calibration = calibrate(
            bundle,
            chosen.file,
            scores,
            args.false_alarm_rate,
            "generated good frames, seed 8",
        )
        print(
            f"threshold calibrated on {calibration['count']} good frames: "
            f"{calibration['threshold']:.4f}"
        )
    threshold = bundle.threshold_for(chosen.file)
    config = RunConfig(
        threshold=threshold,
        pixel_threshold=threshold,
        batch=args.batch,
        status_every_s=30,
        workers=workers,
    )
    streams, runs = [], []
    alone = [backend_fps_alone(args.backend_runs)]
    for repeat in range(max(1, args.repeats)):
        events = work / f"events{repeat}.jsonl"
        probe = MemoryProbe(after=100)
        pipeline = Pipeline(
            bundle, backend, [open_sink(str(events), headless=True), probe], config, log=print
        )
        capture = Capture(
            VideoCaptureSource(parse_uri(str(video))), make_preprocess(bundle), queue_size=8
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        code = pipeline.run(capture)
        wall = time.perf_counter() - started
        cores_busy = (
            time.process_time() - cpu_started
        ) / wall  # CPU seconds of all threads per second
        alone.append(backend_fps_alone(args.backend_runs))
        decisions = [
            json.loads(line)["decision"] == "NG" for line in events.read_text().splitlines()
        ]
        fps = len(decisions) / wall
        streams.append(
            {
                "end_to_end_fps": fps,
                "backend_fps_before": alone[-2],
                "backend_fps_after": alone[-1],
                "end_to_end_over_backend": fps / ((alone[-2] + alone[-1]) / 2),
                "cores_busy": cores_busy,
                "exit_code": code,
                "frames": len(decisions),
                "rss_growth_mib": (probe.end - probe.start) if probe.start else None,
            }
        )
        runs.append((pipeline, decisions, probe))
        print(
            f"stream {repeat + 1}/{args.repeats}: {fps:.1f} fps, backend alone {alone[-2]:.1f} / "
            f"{alone[-1]:.1f}"
            f" -> {streams[-1]['end_to_end_over_backend']:.3f}"
        )
    pipeline, decisions, probe = runs[0]
    # the median stream (the lower of the two middle ones for an even count)
    median = streams[
        int(np.argsort([r["end_to_end_over_backend"] for r in streams])[(len(streams) - 1) // 2])
    ]
    backend_fps = float(np.mean(alone))
    overhead = pipeline_cost(bundle, video, size, workers, work / "constant.jsonl")
    # the CPU time one frame of inference takes when the backend runs alone, and the ratio the
    # stream could reach if the pipeline's own CPU time were shared without any loss
    backend_cpu_ms = 1000 * float(np.mean(busy)) / backend_fps
    truth_arr, pred = np.array(truth[: len(decisions)]), np.array(decisions)
    stages = pipeline.summary["stages_ms"]
    ratios = [r["end_to_end_over_backend"] for r in streams]
    result = {
        "frames": len(decisions),
        "exit_code": max(r["exit_code"] for r in streams),
        "defective_frames": int(truth_arr.sum()),
        "repeats": len(streams),
        "end_to_end_over_backend": median["end_to_end_over_backend"],
        "end_to_end_over_backend_all": ratios,
        "end_to_end_over_backend_min": min(ratios),
        "end_to_end_fps": median["end_to_end_fps"],
        "backend_fps": backend_fps,
        "backend_fps_before": median["backend_fps_before"],
        "backend_fps_after": median["backend_fps_after"],
        "streams": streams,
        "backend_fps_alone_all": alone,
        "decisions_identical_across_repeats": all(d == decisions for _, d, _ in runs),
        "codec": args.codec,
        "decode_ms_per_frame": decode,
        "capture_wait_ms": stages["capture_wait"],
        "pre_plus_post_ms_mean": stages["preprocess"]["mean"] + stages["postprocess"]["mean"],
        "preprocess_ms": stages["preprocess"],
        "postprocess_ms": stages["postprocess"],
        "inference_ms": stages["inference"],
        "sinks_ms": stages["sinks"],
        "frame_latency_ms": stages["end_to_end"],
        "workers": workers,
        "threads_per_call": backend.threads,
        "cores_busy_stream": median["cores_busy"],
        "cores_busy_backend_alone": float(np.mean(busy)),
        "pipeline_alone_cpu_ms_per_frame": overhead["cpu_ms_per_frame"],
        "pipeline_alone_fps": overhead["fps"],
        "backend_cpu_ms_per_frame": backend_cpu_ms,
        "ratio_bound_if_shared_without_loss": backend_cpu_ms
        / (backend_cpu_ms + overhead["cpu_ms_per_frame"]),
        "recall": float(pred[truth_arr].mean()) if truth_arr.any() else None,
        "false_alarm_rate": float(pred[~truth_arr].mean()),
        "false_alarms": int(pred[~truth_arr].sum()),
        "missed": int((~pred[truth_arr]).sum()),
        "threshold": threshold,
        "threshold_calibration": calibration,
        "rss_after_100_frames_mib": probe.start,
        "rss_end_mib": probe.end,
        "rss_growth_mib": (probe.end - probe.start) if probe.start else None,
        "dropped": max(p.summary["dropped"] for p, _, _ in runs),
        "backend": chosen.describe(),
        "device": device_info(),
        "bundle": str(args.bundle),
        "category": category,
        "image_size": size,
    }
    print(f"{'metric':34s} value")
    for key in (
        "frames",
        "codec",
        "workers",
        "threads_per_call",
        "decode_ms_per_frame",
        "repeats",
        "end_to_end_fps",
        "backend_fps_before",
        "backend_fps_after",
        "end_to_end_over_backend",
        "end_to_end_over_backend_min",
        "cores_busy_backend_alone",
        "cores_busy_stream",
        "backend_cpu_ms_per_frame",
        "pipeline_alone_cpu_ms_per_frame",
        "ratio_bound_if_shared_without_loss",
        "pre_plus_post_ms_mean",
        "recall",
        "false_alarm_rate",
        "false_alarms",
        "missed",
        "decisions_identical_across_repeats",
        "rss_growth_mib",
        "dropped",
    ):
        value = result[key]
        print(f"{key:34s} {value:.3f}" if isinstance(value, float) else f"{key:34s} {value}")
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
