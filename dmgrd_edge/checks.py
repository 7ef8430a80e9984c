"""Range checks for the numbers a user gives (command-line options, manifest fields).

Every command checks its numbers with these before any work starts (before a model loads,
a source opens or a file is written). A refusal names the option, the value given and the
valid range, so the message alone says what to type instead. Not-a-number and infinity are
never in range: every comparison with NaN is false, so ``value <= 0`` alone lets it through.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import ConfigError, DmgrdError

AUTO = "0: automatic"  # the note for thread counts, where 0 lets the library choose


def describe_range(
    lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
) -> str:
    """'>= 1', '> 0', 'in [1, 8]', 'in (0, 0.5)' or '' (no bound)."""
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def _refuse(
    name: str, value: Any, kind: str, where: str, note: str | None, error: type[DmgrdError]
) -> DmgrdError:
    wanted = f"a {kind} {where}".rstrip()
    return error(
        f"{name} must be {wanted}, got {value!r}",
        f"give {name} {wanted}" + (f" ({note})" if note else ""),
    )


def integer(
    name: str,
    value: Any,
    lo: int | None = None,
    hi: int | None = None,
    *,
    optional: bool = False,
    note: str | None = None,
    error: type[DmgrdError] = ConfigError,
) -> Any:
    """``value`` if it is a whole number within [lo, hi]; None only if ``optional`` (an
    option left unset)."""
    if value is None and optional:
        return None
    where = describe_range(lo, hi)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _refuse(name, value, "whole number", where, note, error)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _refuse(name, value, "whole number", where, note, error)
    return value


def number(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
    note: str | None = None,
    error: type[DmgrdError] = ConfigError,
) -> Any:
    """``value`` if it is a finite real number within the range; None only if ``optional``."""
    if value is None and optional:
        return None
    where = describe_range(lo, hi, lo_open, hi_open)
    kind = "finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _refuse(name, value, kind, where, note, error)
    x = float(value)
    if not math.isfinite(x):
        raise _refuse(name, value, kind, where, note, error)
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise _refuse(name, value, kind, where, note, error)
    if hi is not None and (x >= hi if hi_open else x > hi):
        raise _refuse(name, value, kind, where, note, error)
    return value


def threshold(
    name: str, value: Any, *, optional: bool = False, error: type[DmgrdError] = ConfigError
) -> Any:
    """A decision threshold: any finite number. NaN would make every frame OK (no score is
    greater than NaN), +inf too, -inf every frame NG."""
    return number(
        name,
        value,
        optional=optional,
        error=error,
        note="NaN or infinity would decide every frame the same way",
    )


def batch_range(manifest: dict) -> tuple[int, int]:
    """(min, max) batch of a bundle, as its manifest records them (``batch``: min/opt/max,
    the batch profile given to `dmgrd-edge export --batch`)."""
    return int(manifest["batch"]["min"]), int(manifest["batch"]["max"])


def batch_for_bundle(name: str, value: int, manifest: dict) -> int:
    """A batch of at least 1 and at most the bundle's maximum (smaller batches than its
    minimum are padded; larger ones were never exported)."""
    _, top = batch_range(manifest)
    return integer(
        name,
        value,
        1,
        top,
        note=f"this bundle was exported for batches up to {top}; re-export with "
        "--batch MIN:OPT:MAX for larger ones",
    )
