"""Decision-threshold calibration on good frames from the line (torch-free).

The threshold written at training comes from a handful of validation images; the right one
comes from the camera, codec and lighting of the line. This reads known-good frames from any
source, scores them with the backend that will run, and stores the threshold that flags at
most the wanted share of them (the rule of ``decision.py``, the one the line decides by) in
the bundle manifest, for that model file.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from dmgrd_edge import checks
from dmgrd_edge.bundle import Bundle, add_files
from dmgrd_edge.errors import ConfigError, DataError

from .decision import allowed_false_alarms, threshold_for_rate
from .sources import Source, SourceError, Status, parse_uri

DECILES = tuple(round(0.1 * i, 1) for i in range(1, 10))


def source_kind(source: str) -> str | None:
    try:
        return parse_uri(source).kind
    except SourceError:
        return None


def score_source(
    source: Source,
    backend,
    preprocess,
    batch: int = 8,
    max_frames: int | None = None,
    max_failed_reads: int = 100,
) -> np.ndarray:
    """Scores of the source's frames; corrupt files are skipped, but ``max_failed_reads``
    reads in a row without a frame (a camera that stopped) are a SourceError, not a wait
    for ever."""
    scores, pending, failed = [], [], 0
    try:
        while max_frames is None or len(scores) + len(pending) < max_frames:
            status, image = source.read()
            if status is Status.END:
                break
            if status is not Status.OK:
                failed += 1
                if failed >= max_failed_reads:
                    raise SourceError(
                        f"the source gave no frame in {failed} reads in a row",
                        "check the camera or stream (cable, URL, that nothing else "
                        "holds it) and calibrate again",
                    )
                continue
            failed = 0
            pending.append(preprocess(image))
            if len(pending) == batch:
                scores.extend(backend.infer(np.stack(pending))[1].tolist())
                pending = []
        if pending:
            scores.extend(backend.infer(np.stack(pending))[1].tolist())
    finally:
        source.close()
    return np.asarray(scores, np.float64)


def calibrate(
    bundle: Bundle,
    file_name: str,
    scores: np.ndarray,
    false_alarm_rate: float,
    source: str,
    log=print,
) -> tuple[Bundle, dict]:
    if not 0 < false_alarm_rate < 0.5:
        raise ConfigError(f"--false-alarm-rate must be in (0, 0.5), got {false_alarm_rate}")
    if scores.size < 10:
        raise DataError(
            f"only {scores.size} good frames scored",
            "give at least 10 (better: 1 / rate) good frames",
        )
    allowed = allowed_false_alarms(scores.size, false_alarm_rate)
    if allowed == 0:
        log(
            f"warning: {scores.size} frames cannot resolve a false-alarm rate of "
            f"{false_alarm_rate}; "
            f"the threshold is their maximum (give >= {int(np.ceil(1 / false_alarm_rate))} frames)"
        )
    threshold = threshold_for_rate(scores, false_alarm_rate)
    summary = {
        "threshold": threshold,
        "count": int(scores.size),
        "false_alarm_rate": false_alarm_rate,
        "p50": float(np.median(scores)),
        "max": float(scores.max()),
        "source": source,
        # what `run` compares with the source it serves (runtime/watch.py), and the reference
        # distribution of good scores its drift watch measures against
        "source_kind": source_kind(source),
        "deciles": [float(v) for v in np.quantile(scores, DECILES)],
        "calibrated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rule = (
        f"at most {allowed} of {scores.size} good frames score above it "
        f"(false-alarm rate {false_alarm_rate:g}; NG: score > threshold)"
    )
    return write_threshold(bundle, file_name, threshold, summary, rule), summary


def write_threshold(
    bundle: Bundle, file_name: str, threshold: float, record: dict, rule: str
) -> Bundle:
    """Stores ``threshold`` for the model file ``file_name`` in the bundle's manifest (written
    atomically), with the record of how it was set and the rule it follows: the one writer of
    a threshold after export (``calibrate-threshold`` and the live view)."""
    checks.threshold("threshold", threshold)
    entry = dict(bundle.manifest["files"][file_name])
    entry.update(threshold=threshold, threshold_calibration=record, threshold_rule=rule)
    return add_files(bundle, {file_name: entry})


def choose_threshold(
    bundle: Bundle, file_name: str, threshold: float, scores, source: str, camera: str
) -> tuple[Bundle, dict]:
    """Stores a threshold a person chose in the live view while looking at the camera's
    recent scores (``scores``: good and defective frames alike, so no good-score deciles are
    recorded and the drift watch keeps the run's own reference)."""
    scores = np.asarray(scores, np.float64)
    ng = int(np.count_nonzero(scores > threshold))
    record = {
        "threshold": float(threshold),
        "count": int(scores.size),
        "ng": ng,
        "method": "view",
        "camera": camera,
        "source": source,
        "source_kind": source_kind(source),
        "p50": float(np.median(scores)) if scores.size else None,
        "max": float(scores.max()) if scores.size else None,
        "calibrated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rule = (
        f"chosen in the live view of camera {camera}: {ng} of its {scores.size} recent frames "
        "score above it (NG: score > threshold)"
    )
    return write_threshold(bundle, file_name, float(threshold), record, rule), record
