"""Soak: at least 100,000 frames through `dmgrd-edge run` (a looped generated line video),
sampling the run's resident memory from /proc after warm-up.

Reports resident memory growth after warm-up (the goal is under 5 MiB), frames dropped, and
whether the JSONL has one line per decided frame and the video sink holds every frame. The
run is a real `dmgrd-edge run` subprocess without torch, as on the line; only building the
small bundle (when --bundle is not given) uses torch.

    nice -n 15 python benchmarks/runtime_soak.py --frames 100000

Without --bundle a tiny model (64 px synthetic washer data, a few training steps, fp32 ONNX)
is trained and exported into the work folder: the soak measures the runtime, not the model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from dmgrd_edge.runtime.device_info import cpu_model

from dmgrd_edge.data.synthetic import make_image
from dmgrd_edge.report import redact_paths

CLI = "import sys; sys.modules['torch'] = None\nfrom dmgrd_edge.cli import main\nmain()"


def make_bundle(work: Path) -> Path:
    """A tiny bundle, as the test suite makes it (tests/conftest.py)."""
    from dmgrd_edge.export.pipeline import export_bundle
    from dmgrd_edge.options import TrainJob
    from dmgrd_edge.train.trainer import train_category

    from dmgrd_edge.config import ModelConfig, TrainConfig
    from dmgrd_edge.data.synthetic import generate_line_data
    from dmgrd_edge.options import BatchProfile, ExportOptions

    root = generate_line_data(work / "line", ["washer"], 12, 4, 2, size=64, seed=0)
    run = work / "run"
    config = ModelConfig(image_size=64, memory_size=4)
    train = TrainConfig(steps=4, batch_size=4, warmup_steps=1, val_every=2, checkpoint_every=2)
    job = TrainJob(
        dataset="mvtec",
        root=str(root),
        category="washer",
        out_dir=str(run),
        model=config,
        train=train,
    )
    train_category(job)
    out = work / "bundle"
    export_bundle(
        ExportOptions(
            checkpoint=run / "last.pt", out=out, calib_count=4, batch=BatchProfile(1, 1, 4)
        ),
        log=lambda _: None,
    )
    return out


def write_clip(path: Path, frames: int, size: int) -> None:
    """Uncompressed frames (what a line camera hands over): nothing to decode."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"RGBA"), 25, (size, size))
    if not writer.isOpened():
        raise SystemExit("this OpenCV build cannot write uncompressed AVI")
    for i in range(frames):
        image, _ = make_image("washer", 0, "video", i, size)
        writer.write(np.ascontiguousarray(image[:, :, ::-1]))
    writer.release()


def machine() -> str:
    kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return f"{os.cpu_count()} cores of an {cpu_model()} VM, {kib / 2**20:.0f} GiB, no GPU"


def load_average() -> float:
    """The 1-minute load average: how busy the cores were with this and other work."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class LineCounter:
    """Newlines of a growing file, reading only what was added since the last call."""

    def __init__(self, path: Path):
        self.path, self.offset, self.lines = path, 0, 0

    def update(self) -> int:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return self.lines
        self.offset += len(data)
        self.lines += data.count(b"\n")
        return self.lines


def video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.isOpened():
        ok, _ = cap.read()
        if not ok:
            break
        count += 1
    cap.release()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="default: train and export a tiny one")
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=5_000, help="frames before the baseline")
    parser.add_argument("--clip-frames", type=int, default=500, help="frames in the looped clip")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    parser.add_argument("--out", default="benchmarks/results/runtime_soak.json")
    parser.add_argument(
        "--conditions", default="", help="what else ran on the machine, for the record"
    )
    args = parser.parse_args()
    if args.frames < 1 or not 0 <= args.warmup < args.frames:
        raise SystemExit("--frames must be >= 1 and 0 <= --warmup < --frames")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="dmgrd-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or make_bundle(work)
    size = json.loads((bundle / "manifest.json").read_text())["model"]["image_size"]
    clip, events, video, stats = (
        work / "clip.avi",
        work / "events.jsonl",
        work / "out.avi",
        work / "stats.json",
    )
    for path in (events, video, stats):
        path.unlink(missing_ok=True)
    write_clip(clip, args.clip_frames, size)

    command = [
        sys.executable,
        "-c",
        CLI,
        "run",
        str(bundle),
        "--source",
        str(clip),
        "--loop",
        "--headless",
        "--max-frames",
        str(args.frames),
        "--sink",
        str(events),
        "--sink",
        str(video),
        "--stats-json",
        str(stats),
    ]
    counter = LineCounter(events)
    samples: list[tuple[float, int, int]] = []  # (seconds, frames in the JSONL, RSS KiB)
    loads: list[float] = []
    start = time.perf_counter()
    with open(work / "run.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=os.environ)
        while proc.poll() is None:
            time.sleep(args.interval)
            rss = rss_kib(proc.pid)
            if rss is not None and proc.poll() is None:
                samples.append((time.perf_counter() - start, counter.update(), rss))
                loads.append(load_average())
    wall = time.perf_counter() - start
    lines = counter.update()
    summary = json.loads(stats.read_text()) if stats.is_file() else {}

    after = [s for s in samples if s[1] >= args.warmup]
    if len(after) < 2:
        raise SystemExit(f"too few samples after warm-up ({len(after)}); see {work / 'run.log'}")
    base_kib = after[0][2]
    rss_after = np.array([s[2] for s in after])
    head = float(np.median(rss_after[: max(1, len(after) // 10)]))
    tail = float(np.median(rss_after[-max(1, len(after) // 10) :]))
    decided = summary.get("frames")
    in_video = video_frames(video) if video.is_file() else 0
    result = {
        "machine": machine(),
        "conditions": args.conditions,
        "load_average_1min": {
            "mean": round(float(np.mean(loads)), 2) if loads else None,
            "max": round(max(loads), 2) if loads else None,
        },
        "python": platform.python_version(),
        "command": redact_paths(
            "nice -n 15 python benchmarks/runtime_soak.py " + shlex.join(sys.argv[1:])
        ),
        "exit_code": proc.returncode,
        "frames_asked": args.frames,
        "frames_decided": decided,
        "frames_dropped": summary.get("dropped"),
        "frames_corrupt": summary.get("corrupt"),
        "jsonl_lines": lines,
        "jsonl_lines_equal_frames_decided": lines == decided,
        "video_frames": in_video,
        "video_complete": in_video == decided,
        "image_size": size,
        "wall_seconds": round(wall, 1),
        "fps": round(decided / wall, 1) if decided else None,
        "warmup_frames": args.warmup,
        "samples_after_warmup": len(after),
        "rss_mib_at_warmup": round(base_kib / 1024, 2),
        "rss_mib_final": round(after[-1][2] / 1024, 2),
        "rss_mib_max_after_warmup": round(int(rss_after.max()) / 1024, 2),
        "rss_growth_mib": round((after[-1][2] - base_kib) / 1024, 2),
        "rss_growth_max_mib": round((int(rss_after.max()) - base_kib) / 1024, 2),
        "rss_growth_median_tenths_mib": round((tail - head) / 1024, 2),
        "goal_growth_mib": 5.0,
        "stages_ms": summary.get("stages_ms"),
        "rss_trace": [
            {"seconds": round(t, 1), "frames": f, "rss_mib": round(r / 1024, 2)}
            for t, f, r in samples[:: max(1, len(samples) // 200)]
        ],
    }
    result["passed"] = bool(
        proc.returncode == 0
        and decided == args.frames
        and result["jsonl_lines_equal_frames_decided"]
        and result["video_complete"]
        and result["frames_dropped"] == 0
        and result["rss_growth_max_mib"] < 5.0
    )
    rows = [
        ("frames decided / asked", f"{decided} / {args.frames}"),
        ("frames dropped", result["frames_dropped"]),
        (
            "JSONL lines == frames decided",
            f"{lines} ({result['jsonl_lines_equal_frames_decided']})",
        ),
        ("video frames (complete)", f"{in_video} ({result['video_complete']})"),
        ("wall s / fps", f"{result['wall_seconds']} / {result['fps']}"),
        ("RSS at warm-up MiB", result["rss_mib_at_warmup"]),
        ("RSS final MiB", result["rss_mib_final"]),
        (
            "RSS growth final / max MiB",
            f"{result['rss_growth_mib']} / {result['rss_growth_max_mib']}",
        ),
        ("RSS growth (median last - first tenth)", result["rss_growth_median_tenths_mib"]),
        ("passed (goal < 5 MiB)", result["passed"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
