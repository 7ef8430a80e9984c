"""The OK/NG rule, shared by the line (pipeline, overlays) and by threshold calibration.

A frame is NG when its score is greater than the threshold; a score exactly at the
threshold is OK. A score that is not a number (a broken model file or input) is NG: the
line does not pass what it cannot judge.

Calibration picks the threshold with the same rule: at or above the highest-but-``k`` good
score, with ``k`` the number of frames the false-alarm rate allows (rounded down), so that
at most ``k`` of the frames it was calibrated on score above it, whatever the ties
(identical frames give identical scores: all of them sit at the threshold and all are OK).
It sits halfway between that score and the next higher one, so that the same frames scored
again at another batch size (floating-point sums in another order) fall on the same side.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from dmgrd_edge.errors import ConfigError, DataError


def is_ng(score, threshold: float):
    """True where ``score > threshold`` or the score is NaN (a bool for a scalar, else an
    array of bools)."""
    result = np.logical_not(np.less_equal(score, threshold))
    return bool(result) if np.ndim(result) == 0 else result


def allowed_false_alarms(count: int, false_alarm_rate: float) -> int:
    """How many of ``count`` good frames a rate lets be flagged: floor(rate * count),
    computed exactly (0.29 * 100 is 28.999999999999996 in floating point)."""
    return int(Fraction(false_alarm_rate) * count)


def threshold_for_rate(scores, false_alarm_rate: float) -> float:
    """A threshold that flags at most ``allowed_false_alarms`` of the scores under ``is_ng``:
    halfway between the highest score it must pass and the next higher score (the highest
    score itself when nothing may be flagged)."""
    if not 0 <= false_alarm_rate < 1:
        raise ConfigError(f"false-alarm rate must be in [0, 1), got {false_alarm_rate}")
    values = np.sort(np.asarray(scores, np.float64).ravel())
    if values.size == 0:
        raise DataError("no scores to calibrate a threshold on", "give good frames")
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise DataError(
            f"{bad} of {values.size} good frames scored NaN or infinity",
            "the model file or the frames are broken: re-export the bundle and check the source",
        )
    allowed = allowed_false_alarms(values.size, false_alarm_rate)
    boundary = values[values.size - 1 - allowed]
    above = values[values > boundary]
    threshold = float(boundary if above.size == 0 else (boundary + above[0]) / 2)
    assert int(np.count_nonzero(is_ng(values, threshold))) <= allowed
    return threshold
