"""Watches on the decided frames of one camera that warn instead of staying silent.

- ``threshold_origin``: where the threshold in use came from (training split, ``--threshold``,
  or ``calibrate-threshold`` on frames of some source kind), and whether that kind is the
  kind of source being run. A threshold never calibrated on frames of this source kind is
  said at start: compression, optics and lighting move the scores (an RTSP stream lifted
  every good frame above a threshold set at training).
- ``NgRateWatch``: an NG rate over the first ``frames`` decided frames above ``max_rate`` is
  not a production line (it is a threshold that does not fit the camera): one warning with
  the ``calibrate-threshold`` command to run.
- ``DriftWatch``: the population stability index (PSI) of the last ``window`` scores against
  the good scores of the threshold calibration (or, without one, the first ``window`` frames
  of the run), on the reference deciles; above ``max_psi`` it warns once, and again only
  after it came back below. The window holds every decided score (on a line nearly all are
  good ones; NG frames are not left out, else drift upwards would hide behind the threshold).

Each warning is a dict (``kind``, ``camera``, ``message``, figures) handed to every listener
(the console, sinks with ``warn``, the metrics endpoint) and kept for the run's summary.
Both watches cost a counter per frame, the drift watch a deque append and, every ``every``
frames, a sort of ``window`` numbers.
"""

from __future__ import annotations

import collections
import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dmgrd_edge import checks
from dmgrd_edge.errors import ConfigError

from .threshold import DECILES, source_kind


@dataclass(frozen=True)
class ThresholdOrigin:
    value: float
    origin: str  # "override", "training", "calibrated"
    calibrated_kind: str | None
    fits_source: bool
    message: str


def threshold_origin(
    entry: dict, file_name: str, threshold: float, override: bool, run_kind: str
) -> ThresholdOrigin:
    """Where the threshold in use came from, as a sentence for the start of a run."""
    calibration = entry.get("threshold_calibration")
    if override:
        return ThresholdOrigin(
            threshold,
            "override",
            None,
            False,
            f"threshold {threshold:.4f} from --threshold/the line configuration: not checked "
            f"against frames of this source ({run_kind})",
        )
    if not calibration:
        rule = entry.get("threshold_rule", "the training split's validation scores")
        return ThresholdOrigin(
            threshold,
            "training",
            None,
            False,
            f"threshold {threshold:.4f} of {file_name} was set at training ({rule}) and never "
            f"calibrated on frames of this source kind ({run_kind})",
        )
    kind = calibration.get("source_kind") or source_kind(str(calibration.get("source", "")))
    if calibration.get("method") == "view":  # chosen by a person on recent frames
        where = (
            f"chosen in the live view on {calibration.get('count', '?')} recent frames of "
            f"{calibration.get('source', '?')} ({kind or 'unknown kind'}) at "
            f"{calibration.get('calibrated_at', '?')}"
        )
    else:
        where = (
            f"calibrated on {calibration.get('count', '?')} good frames from "
            f"{calibration.get('source', '?')} ({kind or 'unknown kind'}) at "
            f"{calibration.get('calibrated_at', '?')}"
        )
    fits = kind == run_kind
    text = f"threshold {threshold:.4f} of {file_name} {where}"
    if not fits:
        text += f", not on frames of this source kind ({run_kind})"
    return ThresholdOrigin(threshold, "calibrated", kind, fits, text)


def calibrate_command(bundle: str, source: str, live: bool) -> str:
    frames = " --max-frames 2000" if live else ""
    return f"dmgrd-edge calibrate-threshold {bundle} --source '{source}'{frames}"


@dataclass
class Alerts:
    """Hands each warning to the listeners and keeps it (for the summary and the metrics)."""

    camera: str
    listeners: list[Callable[[dict], None]] = field(default_factory=list)
    raised: list[dict] = field(default_factory=list)

    def warn(self, kind: str, message: str, **figures) -> dict:
        record = {
            "kind": kind,
            "camera": self.camera,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "message": message,
            **figures,
        }
        self.raised.append(record)
        for listener in self.listeners:
            listener(record)
        return record

    def count(self, kind: str) -> int:
        return sum(1 for r in self.raised if r["kind"] == kind)


class NgRateWatch:
    def __init__(self, alerts: Alerts, fix: str, frames: int = 100, max_rate: float = 0.5):
        checks.integer("NG-rate watch frames", frames, 1, error=ConfigError)
        checks.number("NG-rate watch rate", max_rate, 0, 1, hi_open=False, error=ConfigError)
        self.alerts, self.fix, self.frames, self.max_rate = alerts, fix, frames, max_rate
        self.seen = self.ng = 0
        self.done = False

    def decided(self, score: float, ng: bool) -> None:
        if self.done:
            return
        self.seen += 1
        self.ng += int(ng)
        if self.seen < self.frames:
            return
        self.done = True
        rate = self.ng / self.seen
        if rate > self.max_rate:
            self.alerts.warn(
                "implausible_ng_rate",
                f"{self.ng} of the first {self.seen} frames were NG ({100 * rate:.0f} % > "
                f"{100 * self.max_rate:.0f} %): not a production line, the threshold does not "
                f"fit this camera; calibrate it on known-good frames: {self.fix}",
                ng=self.ng,
                frames=self.seen,
                rate=rate,
                fix=self.fix,
            )

    def summary(self) -> dict:
        return {"frames": self.seen, "ng": self.ng, "limit": self.max_rate}


def psi(reference_edges: np.ndarray, window: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of ``window`` on the bins cut by ``reference_edges`` (the
    reference's deciles: each bin holds a tenth of the reference)."""
    expected = np.full(len(reference_edges) + 1, 1.0 / (len(reference_edges) + 1))
    counts = np.bincount(
        np.searchsorted(reference_edges, window, side="right"), minlength=expected.size
    )
    actual = np.clip(counts / max(window.size, 1), eps, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class DriftWatch:
    def __init__(
        self,
        alerts: Alerts,
        reference: list[float] | None,
        window: int = 500,
        max_psi: float = 0.25,
        every: int = 50,
        fix: str = "",
    ):
        checks.integer("drift window", window, 20, error=ConfigError)
        checks.number("drift PSI limit", max_psi, 0, lo_open=True, error=ConfigError)
        self.alerts, self.window, self.max_psi, self.fix = alerts, window, max_psi, fix
        self.every = max(1, min(every, window // 4))  # a short window is looked at more often
        self.scores: collections.deque = collections.deque(maxlen=window)
        self.edges = None if not reference else np.asarray(reference, np.float64)
        self.reference_from = "threshold calibration" if reference else "first frames of the run"
        self.value = math.nan
        self.median_shift = math.nan
        self.active = False
        self.seen = 0

    def decided(self, score: float, ng: bool) -> None:
        if not math.isfinite(score):
            return
        self.scores.append(score)
        self.seen += 1
        if len(self.scores) < self.window or self.seen % self.every:
            return
        window = np.fromiter(self.scores, np.float64, len(self.scores))
        if self.edges is None:  # no calibration record: the run's first window is the reference
            self.edges = np.quantile(window, DECILES)
            return
        self.value = psi(self.edges, window)
        spread = max(self.edges[-1] - self.edges[0], 1e-12)
        self.median_shift = float((np.median(window) - self.edges[4]) / spread)
        if self.value > self.max_psi and not self.active:
            self.active = True
            self.alerts.warn(
                "score_drift",
                f"the last {self.window} scores moved away from the good scores of the "
                f"{self.reference_from}: PSI {self.value:.3f} > {self.max_psi} (median shifted "
                f"by {self.median_shift:+.2f} of the reference's 10-90 % spread); check the "
                f"camera, lighting and product, then recalibrate: {self.fix}",
                psi=self.value,
                median_shift=self.median_shift,
                window=self.window,
            )
        elif self.value <= self.max_psi and self.active:
            self.active = False
            self.alerts.warn(
                "score_drift_cleared",
                f"scores back near the reference: PSI {self.value:.3f} <= {self.max_psi}",
                psi=self.value,
            )

    def summary(self) -> dict:
        return {
            "psi": None if math.isnan(self.value) else self.value,
            "median_shift": None if math.isnan(self.median_shift) else self.median_shift,
            "active": self.active,
            "reference": self.reference_from,
            "window": self.window,
        }


class CameraWatch:
    """The watches of one camera, fed by the pipeline with every decided frame
    (``Pipeline.monitors``); says at start where its threshold came from."""

    def __init__(
        self,
        camera: str,
        origin: ThresholdOrigin,
        fix: str,
        reference: list[float] | None = None,
        ng_frames: int = 100,
        ng_rate: float = 0.5,
        drift_window: int = 0,
        drift_psi: float = 0.25,
        log=print,
    ):
        self.camera, self.origin, self.fix = camera, origin, fix
        self.alerts = Alerts(camera, [lambda r: log(f"warning: [{camera}] {r['message']}")])
        self.ng = NgRateWatch(self.alerts, fix, ng_frames, ng_rate) if ng_rate < 1 else None
        self.drift = (
            DriftWatch(self.alerts, reference, drift_window, drift_psi, fix=fix)
            if drift_window
            else None
        )
        if origin.fits_source:
            log(f"[{camera}] {origin.message}")
        else:
            log(
                f"warning: [{camera}] {origin.message}; scores move with the camera, codec and "
                f"lighting: calibrate on known-good frames of this line with: {fix}"
            )

    def listen(self, listener: Callable[[dict], None]) -> None:
        self.alerts.listeners.append(listener)

    def decided(self, score: float, ng: bool) -> None:
        if self.ng is not None:
            self.ng.decided(score, ng)
        if self.drift is not None:
            self.drift.decided(score, ng)

    def summary(self) -> dict:
        return {
            "threshold_origin": {
                "origin": self.origin.origin,
                "calibrated_kind": self.origin.calibrated_kind,
                "fits_source": self.origin.fits_source,
                "message": self.origin.message,
            },
            "ng_watch": None if self.ng is None else self.ng.summary(),
            "drift": None if self.drift is None else self.drift.summary(),
            "warnings": list(self.alerts.raised),
        }


def watch_for_run(
    camera: str,
    bundle,
    bundle_arg: str,
    file_name: str,
    threshold: float,
    override: bool,
    spec,
    source: str,
    sinks: list,
    log=print,
    **options,
) -> CameraWatch:
    """The CameraWatch of a run: threshold origin from the manifest entry of the model file,
    the fix command for this source, warnings also to every sink that takes them."""
    entry = bundle.manifest["files"].get(file_name, {})
    origin = threshold_origin(entry, file_name, threshold, override, spec.kind)
    reference = (entry.get("threshold_calibration") or {}).get("deciles")
    fix = calibrate_command(bundle_arg, source, spec.live)
    watch = CameraWatch(camera, origin, fix, reference, log=log, **options)
    for sink in sinks:
        if hasattr(sink, "warn"):
            watch.listen(sink.warn)
    return watch
