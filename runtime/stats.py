"""Per-stage latency statistics (p50/p90/p99), fps and counters for the runtime.

A line runs for days: at 100 fps and six stages that is over 300 million samples a week,
so samples are not kept. Each stage keeps a streaming quantile estimator instead, a
histogram with logarithmically spaced buckets (the DDSketch construction): bucket ``i``
holds the samples in (gamma^(i-1), gamma^i] ms with gamma = (1 + a) / (1 - a), and a
quantile is read off the bucket holding that rank, as the value 2 gamma^i / (gamma + 1),
which is within a relative error ``a`` of every sample in the bucket.

Chosen over a fixed-size reservoir because its error is bounded and deterministic: every
quantile is within RELATIVE_ERROR (0.5 %) of the exact one (numpy's linear
interpolation between the neighbouring order statistics) for any distribution and any
run length, with the tail (p99) as accurate as the median, while a fixed-size reservoir
keeps a random sample: its error is a random rank error, largest in the tail, and the
same result never comes twice. Memory is fixed at construction: one int64 array of about
2.5 thousand buckets (20 KiB) per stage, from 0.1 microseconds to 10^7 ms; count, mean,
minimum and maximum are exact. Estimates are clamped to [minimum, maximum]; samples below
the lowest bucket are counted in it (an absolute error under 0.1 microseconds), above the
highest in the top one.
"""

from __future__ import annotations

import math
import time

import numpy as np

STAGES = ("capture_wait", "preprocess", "inference", "postprocess", "sinks", "end_to_end")

RELATIVE_ERROR = 0.005
LOWEST_MS, HIGHEST_MS = 1e-4, 1e7


class LatencySketch:
    """Streaming quantiles of positive latencies in ms in bounded memory (module text)."""

    def __init__(
        self,
        relative_error: float = RELATIVE_ERROR,
        lowest: float = LOWEST_MS,
        highest: float = HIGHEST_MS,
    ):
        self.gamma = (1 + relative_error) / (1 - relative_error)
        self.log_gamma = math.log(self.gamma)
        self.offset = math.floor(math.log(lowest) / self.log_gamma)  # index of the lowest bucket
        top = math.ceil(math.log(highest) / self.log_gamma)
        self.counts = np.zeros(top - self.offset + 1, np.int64)
        self.count, self.total = 0, 0.0
        self.min, self.max = math.inf, -math.inf

    def add(self, ms: float) -> None:
        if not math.isfinite(ms):
            return  # a clock that jumped: not a latency
        ms = max(ms, 0.0)
        index = math.ceil(math.log(ms) / self.log_gamma) - self.offset if ms > 0 else 0
        self.counts[min(max(index, 0), len(self.counts) - 1)] += 1
        self.count += 1
        self.total += ms
        self.min, self.max = min(self.min, ms), max(self.max, ms)

    def _value(self, cumulative: np.ndarray, rank: int) -> float:
        """The estimate of the order statistic ``rank`` (0-based); the ends are exact."""
        if rank <= 0 or rank >= self.count - 1:
            return self.min if rank <= 0 else self.max
        bucket = int(np.searchsorted(cumulative, rank, side="right"))
        value = 2 * self.gamma ** (bucket + self.offset) / (self.gamma + 1)
        return min(max(value, self.min), self.max)

    def quantiles(self, qs) -> list[float]:
        """Quantiles in [0, 1], interpolated between order statistics as numpy's default."""
        if not self.count:
            return [math.nan for _ in qs]
        cumulative = np.cumsum(self.counts)
        out = []
        for q in qs:
            position = q * (self.count - 1)
            low, high = math.floor(position), math.ceil(position)
            a, b = self._value(cumulative, low), self._value(cumulative, high)
            out.append(a + (position - low) * (b - a))
        return out

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def nbytes(self) -> int:
        return int(self.counts.nbytes)


class Stats:
    def __init__(self):
        self.sketches: dict[str, LatencySketch] = {}
        self.frames = 0
        self.ng = 0
        self.started = time.monotonic()
        self.first_frame_at: float | None = None

    def add(self, stage: str, ms: float) -> None:
        sketch = self.sketches.get(stage)
        if sketch is None:
            sketch = self.sketches[stage] = LatencySketch()
        sketch.add(ms)

    def nbytes(self) -> int:
        """Memory held for the latency samples: fixed once each stage has had one."""
        return sum(s.nbytes for s in self.sketches.values())

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
        out = {
            "frames": self.frames,
            "ng": self.ng,
            "fps": self.fps,
            "wall_s": time.monotonic() - self.started,
            "stages_ms": {},
        }
        for stage in STAGES:
            sketch = self.sketches.get(stage)
            if sketch is not None and sketch.count:
                p50, p90, p99 = sketch.quantiles((0.5, 0.9, 0.99))
                out["stages_ms"][stage] = {
                    "mean": sketch.mean,
                    "p50": p50,
                    "p90": p90,
                    "p99": p99,
                    "max": sketch.max,
                    "count": sketch.count,
                }
        return out

    def table(self, extra: dict | None = None) -> str:
        summary = self.summary()
        lines = [f"{'stage':14s} {'mean':>8s} {'p50':>8s} {'p90':>8s} {'p99':>8s}  (ms)"]
        for stage, v in summary["stages_ms"].items():
            lines.append(
                f"{stage:14s} {v['mean']:8.2f} {v['p50']:8.2f} {v['p90']:8.2f} {v['p99']:8.2f}"
            )
        lines.append(
            f"frames {summary['frames']}  NG {summary['ng']}  fps {summary['fps']:.1f}"
            + "".join(f"  {k} {v}" for k, v in (extra or {}).items())
        )
        return "\n".join(lines)
