"""Typed schemas of the records the toolkit reads back: checkpoint metadata and
`dmgrd-edge bench` results (the bundle manifest is checked in bundle.py with the same range
checks, dmgrd_edge/checks.py). Torch-free: the runtime side reads bench results too.

Each reader takes what came out of ``json.loads`` or ``torch.load`` and returns a typed
value, or raises the error class it is given with the field, the value and the valid range.
Nothing else escapes (no KeyError, TypeError or ValueError on a damaged or hand-edited file).
Fields the toolkit does not read are kept as they are, in ``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import checks
from .config import MAP_SCALES
from .errors import CheckpointError, DataError, DmgrdError


class _Reader:
    """Checks for the fields of one JSON object, each named ``where.key`` in messages."""

    def __init__(self, value: Any, where: str, error: type[DmgrdError], fix: str):
        self.where, self.error, self.fix = where, error, fix
        self.data = self.obj(where, value)

    def fail(self, problem: str) -> DmgrdError:
        return self.error(problem, self.fix)

    def obj(self, where: str, value: Any) -> dict:
        if not isinstance(value, dict):
            raise self.fail(f"{where} must be an object, got {type(value).__name__}")
        return value

    def get(self, key: str, optional: bool) -> Any:
        if key not in self.data and not optional:
            raise self.fail(f"{self.where} lacks the field {key!r}")
        return self.data.get(key)

    def text(self, key: str, optional: bool = False) -> str | None:
        value = self.get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{self.where}.{key} must be text, got {value!r}"[:300])
        return value

    def integer(self, key: str, lo: int | None = None, hi: int | None = None, **kw) -> Any:
        value = self.get(key, kw.get("optional", False))
        return self._range(checks.integer, key, value, lo, hi, **kw)

    def number(self, key: str, lo: float | None = None, hi: float | None = None, **kw) -> Any:
        value = self.get(key, kw.get("optional", False))
        return self._range(checks.number, key, value, lo, hi, **kw)

    def _range(self, check, key, value, lo, hi, **kw):
        try:
            result = check(f"{self.where}.{key}", value, lo, hi, error=self.error, **kw)
        except DmgrdError as exc:
            raise self.fail(exc.problem[:300]) from None
        return None if result is None else (float(result) if check is checks.number else result)

    def child(self, key: str, optional: bool = False) -> _Reader | None:
        value = self.get(key, optional)
        if value is None and optional:
            return None
        return _Reader(value, f"{self.where}.{key}", self.error, self.fix)


# checkpoint metadata --------------------------------------------------------------------

CHECKPOINT_FIX = "the checkpoint is damaged or was edited; retrain it or copy it again"


@dataclass(frozen=True)
class ScoreStats:
    """Image scores of the validation normals; ``threshold`` decides OK/NG."""

    count: int
    mean: float
    std: float
    threshold: float


@dataclass(frozen=True)
class MapStats:
    """The statistic (``mean``, ``p99``, ``std``: ModelConfig.map_scale) and its values on the
    validation normals that weigh the student and memory maps."""

    scale: str
    student: float
    memory: float


@dataclass(frozen=True)
class CheckpointMeta:
    dataset: str
    root: str
    category: str
    teacher_weights: str | None
    score_stats: ScoreStats | None
    map_stats: MapStats | None
    raw: dict = field(repr=False)


def checkpoint_meta(value: Any, where: str = "metadata") -> CheckpointMeta:
    r = _Reader(value, where, CheckpointError, CHECKPOINT_FIX)
    stats = None
    if (s := r.child("score_stats", optional=True)) is not None:
        stats = ScoreStats(
            count=s.integer("count", 1, optional=True) or 0,
            mean=s.number("mean"),
            std=s.number("std", 0),
            threshold=s.number("threshold"),
        )
    map_stats = None
    if (m := r.child("map_stats", optional=True)) is not None:
        scale = m.text("scale")
        if scale not in MAP_SCALES:
            raise r.fail(
                f"{where}.map_stats.scale must be one of {list(MAP_SCALES)}, got {scale!r}"
            )
        map_stats = MapStats(
            scale=scale,
            student=m.number("student", 0, lo_open=True),
            memory=m.number("memory", 0, lo_open=True),
        )
    if (p := r.child("pruning", optional=True)) is not None:
        p.number("ratio", 0, 1, hi_open=True, optional=True)
        if not isinstance(p.data.get("history", []), list):
            raise r.fail(f"{where}.pruning.history must be a list")
    if "history" in r.data and not isinstance(r.data["history"], list):
        raise r.fail(f"{where}.history must be a list, got {type(r.data['history']).__name__}")
    if "train_config" in r.data:
        r.child("train_config")
    return CheckpointMeta(
        dataset=r.text("dataset"),
        root=r.text("root"),
        category=r.text("category"),
        teacher_weights=r.text("teacher_weights", optional=True),
        score_stats=stats,
        map_stats=map_stats,
        raw=r.data,
    )


def checkpoint_payload(value: Any, where: str, format_name: str, version: int) -> dict:
    """A whole checkpoint (after ``torch.load``): its format tag and version, the fields
    every reader uses, and the metadata. Returns the payload unchanged."""
    from .config import ModelConfig, PreprocessConfig
    from .errors import ConfigError

    if not isinstance(value, dict) or value.get("format") != format_name:
        raise CheckpointError(
            f"{where} is not a dmgrd-edge checkpoint",
            "give a last.pt or best.pt written by `dmgrd-edge train`",
        )
    r = _Reader(value, where, CheckpointError, CHECKPOINT_FIX)
    found = value.get("format_version")
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise CheckpointError(
            f"{where}: format_version must be a whole number >= 1, got {found!r}"[:300],
            CHECKPOINT_FIX,
        )
    if found > version:
        raise CheckpointError(
            f"{where} has format version {found}",
            f"this dmgrd-edge reads up to {version}; upgrade dmgrd-edge",
        )
    for key, config in (("model_config", ModelConfig), ("preprocess", PreprocessConfig)):
        try:
            config.from_dict(r.child(key).data)
        except ConfigError as exc:
            raise CheckpointError(f"{where}: {key}: {exc.problem}", CHECKPOINT_FIX) from None
    r.child("state_dict")
    r.integer("step", 0)
    checkpoint_meta(r.child("metadata").data, f"{where}: metadata")
    return value


# bench results ----------------------------------------------------------------------------

BENCH_FIX = (
    "give files written by dmgrd-edge bench BUNDLE --out FILE (this one is damaged or edited)"
)


@dataclass(frozen=True)
class LatencyRow:
    batch: int
    ms_p50: float
    ms_p99: float
    images_per_s: float


@dataclass(frozen=True)
class BenchResult:
    latency: list[LatencyRow]
    backend: dict
    model: dict
    device: dict
    accuracy: dict[str, float | None]
    peak_host_rss_mib: float
    startup_s: float
    label: str | None
    pruning_ratio: float | None
    raw: dict = field(repr=False)


def bench_result(value: Any, where: str) -> BenchResult:
    r = _Reader(value, where, DataError, BENCH_FIX)
    rows = r.get("latency", optional=False)
    if not isinstance(rows, list) or not rows:
        raise r.fail(f"{where}.latency must be a non-empty list of batch rows, got {rows!r}"[:300])
    latency = []
    for i, row in enumerate(rows):
        lr = _Reader(row, f"{where}.latency[{i}]", DataError, BENCH_FIX)
        latency.append(
            LatencyRow(
                batch=lr.integer("batch", 1),
                ms_p50=lr.number("ms_p50", 0),
                ms_p99=lr.number("ms_p99", 0),
                images_per_s=lr.number("images_per_s", 0, lo_open=True),
            )
        )
    backend = r.child("backend")
    for key in ("backend", "file", "precision"):
        backend.text(key, optional=True)
    providers = backend.data.get("providers", [])
    if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers):
        raise r.fail(f"{where}.backend.providers must be a list of names, got {providers!r}"[:300])
    model = r.child("model")
    model.text("backbone", optional=True)
    model.integer("image_size", 1, optional=True)
    device = r.child("device", optional=True)
    if device is not None:
        device.text("cpu", optional=True)
        device.text("gpu", optional=True)
        if (jetson := device.child("jetson", optional=True)) is not None:
            mode = jetson.data.get("nvpmodel")
            if isinstance(mode, dict):
                jetson.child("nvpmodel").text("mode", optional=True)
                jetson.child("nvpmodel").text("raw", optional=True)
            elif mode is not None and not isinstance(mode, str):
                raise r.fail(f"{where}.device.jetson.nvpmodel must be text or an object")
    accuracy: dict[str, float | None] = {}
    if (a := r.child("accuracy", optional=True)) is not None:
        for key in ("i_auroc", "p_auroc", "pro_30"):
            accuracy[key] = a.number(key, 0, 1, optional=True)
    pruning = r.child("pruning", optional=True)
    ratio = pruning.number("ratio", 0, 1, hi_open=True, optional=True) if pruning else None
    return BenchResult(
        latency=latency,
        backend=backend.data,
        model=model.data,
        device=device.data if device is not None else {},
        accuracy=accuracy,
        peak_host_rss_mib=_optional(r, "peak_host_rss_mib"),
        startup_s=_optional(r, "startup_s"),
        label=r.text("label", optional=True),
        pruning_ratio=ratio,
        raw=r.data,
    )


def _optional(r: _Reader, key: str) -> float:
    value = r.number(key, 0, optional=True)
    return float("nan") if value is None else value
