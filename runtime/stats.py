"""Per-stage latency statistics (p50/p90/p99), fps and counters for the runtime."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

STAGES = ("capture_wait", "preprocess", "inference", "postprocess", "sinks", "end_to_end")


class Stats:
    def __init__(self, max_samples: int = 200_000):
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.max_samples = max_samples
        self.frames = 0
        self.ng = 0
        self.started = time.monotonic()
        self.first_frame_at: float | None = None

    def add(self, stage: str, ms: float) -> None:
        bucket = self.samples[stage]
        if len(bucket) < self.max_samples:
            bucket.append(ms)

    def frame_done(self, ng: bool) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = time.monotonic()
        self.frames += 1
        self.ng += int(ng)

    @property
    def fps(self) -> float:
        if self.first_frame_at is None or self.frames < 2:
            return 0.0
        return (self.frames - 1) / max(time.monotonic() - self.first_frame_at, 1e-9)

    def summary(self) -> dict:
        out = {"frames": self.frames, "ng": self.ng, "fps": self.fps,
               "wall_s": time.monotonic() - self.started, "stages_ms": {}}
        for stage in STAGES:
            values = np.asarray(self.samples.get(stage, []), np.float64)
            if values.size:
                out["stages_ms"][stage] = {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
                                           "p90": float(np.percentile(values, 90)),
                                           "p99": float(np.percentile(values, 99)), "count": int(values.size)}
        return out

    def table(self, extra: dict | None = None) -> str:
        summary = self.summary()
        lines = [f"{'stage':14s} {'mean':>8s} {'p50':>8s} {'p90':>8s} {'p99':>8s}  (ms)"]
        for stage, v in summary["stages_ms"].items():
            lines.append(f"{stage:14s} {v['mean']:8.2f} {v['p50']:8.2f} {v['p90']:8.2f} {v['p99']:8.2f}")
        lines.append(f"frames {summary['frames']}  NG {summary['ng']}  fps {summary['fps']:.1f}"
                     + "".join(f"  {k} {v}" for k, v in (extra or {}).items()))
        return "\n".join(lines)
