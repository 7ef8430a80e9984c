"""The record of one judged frame, shared by the pipeline (which makes it) and the sinks
(which write it). ``to_json`` is the line the JSONL sink writes: keys in this order, compact
separators."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from .postprocess import Region

DECISIONS = ("OK", "NG")
MAX_REGIONS = 20  # regions listed per event (the largest first)


@dataclass(frozen=True, kw_only=True)
class Latency:
    """Milliseconds per stage of this frame (inference: the batch's call over its frames)."""

    preprocess: float
    inference: float
    postprocess: float

    def to_dict(self) -> dict[str, float]:
        return {
            "preprocess": round(self.preprocess, 3),
            "inference": round(self.inference, 3),
            "postprocess": round(self.postprocess, 3),
        }


@dataclass(frozen=True, kw_only=True)
class Event:
    time: str  # UTC, ISO 8601 with milliseconds
    frame: int
    score: float
    decision: str
    regions: tuple[Region, ...] = ()
    latency_ms: Latency

    def __post_init__(self):
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {self.decision!r}")

    @property
    def ng(self) -> bool:
        return self.decision == "NG"

    @classmethod
    def judged(
        cls, frame: int, score: float, ng: bool, regions: list[Region], latency: Latency
    ) -> Event:
        """The event of a frame judged now."""
        return cls(
            time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            frame=frame,
            score=float(score),
            decision="NG" if ng else "OK",
            regions=tuple(regions[:MAX_REGIONS]),
            latency_ms=latency,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "frame": self.frame,
            "score": round(float(self.score), 6),
            "decision": self.decision,
            "regions": [r.as_dict() for r in self.regions],
            "latency_ms": self.latency_ms.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))
