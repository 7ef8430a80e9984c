"""The line configuration (TOML, read with the standard library's tomllib): several cameras,
several bundles, one process (``dmgrd-edge run --config line.toml``).

```toml
[line]                       # optional; every key has a default
backend = "auto"             # auto, tensorrt, onnxruntime
precision = "auto"           # auto, int8, fp16, fp32
batch = 4                    # most frames in one backend call (cameras sharing a bundle)
workers = "auto"             # backend calls in flight per bundle
threads = 0                  # ONNX Runtime threads per call (0: cores / calls in flight)
metrics = "127.0.0.1:9108"   # Prometheus endpoint (off when absent)
status_every_s = 5.0
watch_config = false         # true: a change of this file is a changeover (as SIGHUP)

[view]                       # optional: the live view and control interface (runtime/view.py)
listen = "127.0.0.1:8090"    # HOST:PORT (127.0.0.1 unless a host is given)
token = "a-long-secret"      # optional: every request must carry it
# optional: max_fps (stream frames per second and camera, 5), window (recent scores per
# camera for the threshold slider, 500), ng_frames (last NG frames kept per camera, 8)

[[camera]]
name = "left"                # unique; in messages, metrics and warnings
source = "rtsp://cam-left/stream"
bundle = "bundles/washer"    # relative paths: to this file's folder
threshold = 0.81             # optional: overrides the model file's calibrated one
sinks = ["left.jsonl", "mqtt://127.0.0.1:1883/line/left?qos=1"]
# optional: input_fps, input_width, input_height, loop, queue_size, max_retries,
# max_frames, pixel_threshold, ng_warn_rate, ng_warn_frames, drift_window, drift_psi
```

Sources and sinks are read as on the command line (relative to the working directory).
Every problem names the file and the key (``camera[2].threshold``) and says what fits.
"""

from __future__ import annotations

import inspect
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from dmgrd_edge import checks
from dmgrd_edge.errors import ConfigError
from dmgrd_edge.options import CameraConfig

from .view import ViewConfig, check_view_value


@dataclass(frozen=True)
class LineConfig:
    path: Path
    cameras: tuple[CameraConfig, ...]
    backend: str = "auto"
    precision: str = "auto"
    batch: int = 4
    workers: str = "auto"
    threads: int = 0
    metrics: str | None = None
    status_every_s: float = 5.0
    watch_config: bool = False
    view: ViewConfig | None = None
    extra: dict = field(default_factory=dict)


_LINE_KEYS = {f.name for f in fields(LineConfig)} - {"path", "cameras", "extra", "view"}
_VIEW_KEYS = {f.name for f in fields(ViewConfig)}
_CAMERA_KEYS = {f.name for f in fields(CameraConfig)}
_REQUIRED = ("name", "source", "bundle")


def _refuse(path: Path, key: str, problem: str, fix: str):
    return ConfigError(f"{path}: {key}: {problem}", fix)


def _typed(path, key, value, kinds, what):
    if isinstance(value, bool) and bool not in kinds:
        raise _refuse(path, key, f"{value!r} is not {what}", f"give {what}")
    if not isinstance(value, kinds):
        raise _refuse(path, key, f"{value!r} is not {what}", f"give {what}")
    return value


def _check_number(path, key, value, check):
    """Run one of dmgrd_edge.checks with the key's full name in the message."""
    try:
        return check(value)
    except ConfigError as exc:
        raise _refuse(path, key, exc.problem, exc.fix or "see the line configuration's keys")


def load_line_config(path: Path) -> LineConfig:
    path = Path(path)
    data = _read_toml(path)
    unknown = sorted(set(data) - {"line", "camera", "view"})
    if unknown:
        raise _refuse(
            path,
            unknown[0],
            "unknown table",
            "the file has a [line] table, [[camera]] tables and a [view] table",
        )
    line = data.get("line", {})
    _typed(path, "line", line, (dict,), "a table ([line])")
    for key in line:
        if key not in _LINE_KEYS:
            raise _refuse(
                path, f"line.{key}", "unknown key", f"known: {', '.join(sorted(_LINE_KEYS))}"
            )
    cameras = data.get("camera")
    if not cameras:
        raise _refuse(
            path,
            "camera",
            "no camera",
            "add at least one [[camera]] table with name, source and bundle",
        )
    _typed(path, "camera", cameras, (list,), "an array of tables ([[camera]])")
    options = _line_options(path, line)
    parsed, names = [], set()
    for i, table in enumerate(cameras):
        parsed.append(_camera(path, i, table))
        if parsed[-1].name in names:
            raise _refuse(
                path, f"camera[{i}].name", f"{parsed[-1].name!r} is used twice", "give unique names"
            )
        names.add(parsed[-1].name)
    if "view" in data:
        options["view"] = _view(path, data["view"])
    return LineConfig(path, tuple(parsed), **options)


def _read_toml(path: Path) -> dict:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"line configuration not found: {path}", "check the --config path")
    try:
        return tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", "fix the syntax at that line")


def _line_options(path: Path, line: dict) -> dict:
    """The [line] table's values, checked, as LineConfig keywords."""
    options = {}
    for key in ("backend", "precision", "metrics"):
        if key in line:
            options[key] = _typed(path, f"line.{key}", line[key], (str,), "a string")
    if "workers" in line:
        options["workers"] = str(
            _typed(path, "line.workers", line["workers"], (str, int), '"auto" or a number')
        )
    for key, lo in (("batch", 1), ("threads", 0)):
        if key in line:
            options[key] = _check_number(
                path, f"line.{key}", line[key], lambda v, k=key, lo=lo: checks.integer(k, v, lo)
            )
    if "watch_config" in line:
        options["watch_config"] = _typed(
            path, "line.watch_config", line["watch_config"], (bool,), "true or false"
        )
    if "status_every_s" in line:
        options["status_every_s"] = float(
            _check_number(
                path,
                "line.status_every_s",
                line["status_every_s"],
                lambda v: checks.number("status_every_s", v, 0, lo_open=True),
            )
        )
    return options


def _view(path: Path, table) -> ViewConfig:
    """The [view] table, checked key by key."""
    _typed(path, "view", table, (dict,), "a table ([view])")
    for key in table:
        if key not in _VIEW_KEYS:
            raise _refuse(
                path, f"view.{key}", "unknown key", f"known: {', '.join(sorted(_VIEW_KEYS))}"
            )
    if "listen" not in table:
        raise _refuse(path, "view.listen", "missing", 'give HOST:PORT, e.g. "127.0.0.1:8090"')
    values = {}
    for key in ("listen", "token"):
        if key in table:
            values[key] = _typed(path, f"view.{key}", table[key], (str,), "a string")
    for key, kinds, what in (
        ("max_fps", (int, float), "a number"),
        ("window", (int,), "a whole number"),
        ("ng_frames", (int,), "a whole number"),
    ):
        if key in table:
            values[key] = _typed(path, f"view.{key}", table[key], kinds, what)
    for key, value in values.items():
        _check_number(path, f"view.{key}", value, lambda v, k=key: check_view_value(k, v))
    return ViewConfig(**values)


def _camera(path: Path, i: int, table) -> CameraConfig:
    where = f"camera[{i}]"
    _typed(path, where, table, (dict,), "a table")
    for key in table:
        if key not in _CAMERA_KEYS:
            raise _refuse(
                path, f"{where}.{key}", "unknown key", f"known: {', '.join(sorted(_CAMERA_KEYS))}"
            )
    for key in _REQUIRED:
        if key not in table:
            raise _refuse(
                path, f"{where}.{key}", "missing", "every camera needs name, source, bundle"
            )
    values: dict = {}
    for key in ("name", "source", "bundle"):
        values[key] = _typed(path, f"{where}.{key}", table[key], (str,), "a string")
        if not values[key].strip():
            raise _refuse(path, f"{where}.{key}", "empty", f"give the camera's {key}")
    bundle = Path(values["bundle"]).expanduser()
    values["bundle"] = bundle if bundle.is_absolute() else (path.parent / bundle)
    sinks = table.get("sinks", [])
    _typed(path, f"{where}.sinks", sinks, (list,), "a list of sink URIs")
    for j, uri in enumerate(sinks):
        _typed(path, f"{where}.sinks[{j}]", uri, (str,), "a sink URI")
    values["sinks"] = tuple(sinks)
    if "loop" in table:
        values["loop"] = _typed(path, f"{where}.loop", table["loop"], (bool,), "true or false")
    number_checks = {
        "threshold": lambda v: checks.threshold("threshold", v),
        "pixel_threshold": lambda v: checks.threshold("pixel_threshold", v),
        "input_fps": lambda v: checks.number("input_fps", v, 0, lo_open=True),
        "input_width": lambda v: checks.integer("input_width", v, 1),
        "input_height": lambda v: checks.integer("input_height", v, 1),
        "queue_size": lambda v: checks.integer("queue_size", v, 1),
        "max_retries": lambda v: checks.integer("max_retries", v, 0),
        "max_frames": lambda v: checks.integer("max_frames", v, 1),
        "ng_warn_rate": lambda v: checks.number("ng_warn_rate", v, 0, 1),
        "ng_warn_frames": lambda v: checks.integer("ng_warn_frames", v, 1),
        "drift_window": lambda v: v if v == 0 else checks.integer("drift_window", v, 20),
        "drift_psi": lambda v: checks.number("drift_psi", v, 0, lo_open=True),
    }
    for key, check in number_checks.items():
        if key in table:
            value = table[key]
            if key == "drift_window":
                _typed(path, f"{where}.{key}", value, (int,), "0 (off) or a number >= 20")
            values[key] = _check_number(path, f"{where}.{key}", value, check)
    return CameraConfig(**values)


# options of `run` that go with --config (the rest is set per camera in the file)
WITH_CONFIG = {"config", "stats_json", "max_frames", "headless", "view_token"}


def refuse_with_config(given: dict, command) -> None:
    """`run --config` with a single-source option that was changed from its default is an
    error naming the option, not an option silently ignored."""
    for name, param in inspect.signature(command).parameters.items():
        if name in WITH_CONFIG or name not in given:
            continue
        default = getattr(param.default, "default", param.default)
        if given[name] != default and not (given[name] == [] and default in (None, ...)):
            flag = name if name == "bundle" else "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} does not go with --config",
                "set it per camera (or in [line]) in the line configuration file",
            )
