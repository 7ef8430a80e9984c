"""Product changeover without a restart (``Line.reload``: SIGHUP, or a change of the line
configuration with ``watch_config = true``).

Per camera, the configuration read again may name another bundle, the same bundle may hold
another model file (re-exported) or a recalibrated threshold (``calibrate-threshold`` wrote
its manifest), or the camera may get another ``threshold``/``pixel_threshold``. The new
bundle is loaded and verified (every file's hash) and its backend made before anything is
switched; a bundle that fails is refused with the reason, and the camera keeps running on
the old one. A configuration that does not parse, or that adds, removes or renames cameras
or changes a source or sinks (which need a restart), is refused whole.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path

from dmgrd_edge import checks
from dmgrd_edge.bundle import load_bundle
from dmgrd_edge.errors import ConfigError, DmgrdError

from .line_config import load_line_config
from .threshold import choose_threshold

# the camera keys a changeover applies; any other change needs a restart
APPLIED = {"bundle", "threshold", "pixel_threshold"}


def _record(line, camera: str, what: str, **details) -> dict:
    record = {
        "camera": camera,
        "what": what,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        **details,
    }
    line.changeovers.append(record)
    return record


def apply_reload(line) -> None:
    log = line.log
    try:
        new = load_line_config(line.config.path)
    except DmgrdError as exc:
        log(f"changeover refused: {exc.problem}; the line keeps running as it was")
        _record(line, "*", "refused", reason=exc.problem)
        return
    if new.view != line.config.view:
        log("the [view] table changed, which needs a restart; the view runs on as it started")
    old_cams = {c.config.name: c for c in line.cameras}
    new_cams = {c.name: c for c in new.cameras}
    if set(old_cams) != set(new_cams):
        reason = (
            f"cameras {sorted(new_cams)} differ from the running {sorted(old_cams)}; adding or "
            "removing cameras needs a restart"
        )
        log(f"changeover refused: {reason}")
        _record(line, "*", "refused", reason=reason)
        return
    for name, cfg in new_cams.items():
        changed = [
            f
            for f in cfg.__dataclass_fields__
            if f not in APPLIED and getattr(cfg, f) != getattr(old_cams[name].config, f)
        ]
        if changed:
            reason = f"camera {name!r}: {', '.join(changed)} changed, which needs a restart"
            log(f"changeover refused: {reason}")
            _record(line, name, "refused", reason=reason)
            return
    for name, cfg in new_cams.items():
        _apply_camera(line, old_cams[name], cfg)


def _apply_camera(line, cam, cfg, via: str = "reload") -> dict | None:
    """Applies ``cfg`` (the camera's bundle and thresholds) to the running camera: the
    changeover's record, or None when nothing changed."""
    root = cfg.bundle.resolve()
    group = cam.group
    started = time.perf_counter()
    try:
        fresh = load_bundle(root)  # verifies every file's hash
    except DmgrdError as exc:
        return _refuse_bundle(line, cam, cfg, group, exc.problem, via)
    file_name = group.file
    same_model = (
        root == group.root
        and fresh.manifest["files"].get(file_name, {}).get("sha256")
        == group.bundle.manifest["files"][file_name]["sha256"]
    )
    target = group
    if not same_model:
        target = _target_group(line, cam, cfg, root, group, via)
        if isinstance(target, dict):  # refused: the record says why
            return target
    threshold = cfg.threshold if cfg.threshold is not None else fresh.threshold_for(target.file)
    pixel = threshold if cfg.pixel_threshold is None else cfg.pixel_threshold
    config = cam.pipeline.config
    before = config.threshold
    if same_model and (threshold, pixel) == (config.threshold, config.pixel_threshold):
        cam.config = cfg
        return None
    switched = {}
    if same_model:
        config.threshold, config.pixel_threshold = threshold, pixel
    else:  # the new thresholds take effect with the new model's first frame
        switched = line.switch(cam, target, thresholds=(threshold, pixel))
    cam.config = cfg
    return _announce(
        line, cam, target, "threshold" if same_model else "bundle", before, started,
        via=via, **switched,
    )  # fmt: skip


def _refuse_bundle(line, cam, cfg, group, problem: str, via: str = "reload") -> dict:
    """The camera keeps running on its group's bundle: the reason logged and recorded."""
    line.log(
        f"[{cam.config.name}] changeover to {cfg.bundle} refused: {problem}; "
        f"{group.root.name} keeps running"
    )
    return _record(
        line, cam.config.name, "refused", bundle=str(cfg.bundle), reason=problem, via=via
    )


def _target_group(line, cam, cfg, root, group, via: str):
    """The group that runs the bundle in ``root``: the folder's running one, or a new one
    where there is none or it cannot take the camera; the refusal's record when that one
    cannot be made (the folder keeps its group)."""
    target = line.groups.get(root)
    stale = None  # the folder's backend that cannot take the camera
    if target is group or (target is not None and target.threads and not target.alive):
        stale = target  # a new model file in the same folder, or a bundle whose threads ended
    if target is None or stale is not None:
        try:
            target = line._group(root, cfg)  # loads, verifies, makes the backend
        except DmgrdError as exc:
            if stale is not None:
                line.groups[root] = stale
            return _refuse_bundle(line, cam, cfg, group, exc.problem, via)
        if stale is not None and stale is not group:
            line.retired.append(stale)
    return target


def _announce(line, cam, group, what: str, before: float, started: float, **details) -> dict:
    """A camera's changeover logged and recorded (``announce``)."""
    return announce(
        line, cam.config.name, cam.pipeline.config, group.root, group.file, what, before,
        started, at_frame=cam.taken, **details,
    )  # fmt: skip


def announce(
    log_to, camera: str, config, root: Path, file: str, what: str, before: float,
    started: float, **details,
) -> dict:  # fmt: skip
    """A changeover logged and recorded in ``log_to`` (``log``, ``changeovers``: the line, or
    a single source's control): what changed, the bundle and model file the camera runs now,
    its threshold before and after, the time it took."""
    threshold = config.threshold
    ms = 1000 * (time.perf_counter() - started)
    log_to.log(
        f"[{camera}] changeover: {what} -> {root.name} ({file}), threshold {before:.4f} -> "
        f"{threshold:.4f} in {ms:.0f} ms; frames already in a backend call are decided by "
        "the old one"
    )
    return _record(
        log_to,
        camera,
        what,
        bundle=str(root),
        file=file,
        threshold=threshold,
        previous_threshold=before,
        ms=ms,
        **details,
    )


# -- on request: the control interface (runtime/view.py) -------------------------------------


class ChangeoverRefused(DmgrdError):
    """A changeover asked for on the control interface that was not made; what runs keeps
    running."""


class UnknownCamera(ConfigError):
    """A camera name the line does not have."""


def camera_named(line, name: str):
    for cam in line.cameras:
        if cam.config.name == name:
            return cam
    names = ", ".join(c.config.name for c in line.cameras)
    raise UnknownCamera(f"no camera {name!r} on this line", f"give one of: {names}")


def request_changeover(line, name: str, bundle: str) -> dict:
    """A bundle changeover of one camera asked for on the control interface, made in the
    line's loop like a reload: the bundle is verified and its backend made before the
    switch; a refused one raises ChangeoverRefused with the reason, the old one running on.
    A relative path is taken from the line configuration's folder, as in the file. The file
    is not changed: the next reload applies the file's bundle again."""
    cam = camera_named(line, name)
    path = Path(bundle).expanduser()
    if not path.is_absolute():
        path = line.config.path.parent / path
    record = _apply_camera(line, cam, dataclasses.replace(cam.config, bundle=path), "request")
    if record is None:
        return {"camera": name, "what": "unchanged", "bundle": str(cam.group.root)}
    if record["what"] == "refused":
        raise ChangeoverRefused(
            f"changeover of camera {name!r} to {bundle} refused: {record['reason']}",
            f"{cam.group.root.name} keeps running; give a bundle that verifies",
        )
    return record


def request_threshold(line, name: str, threshold, scores) -> dict:
    """A threshold chosen in the live view for one camera: written into its bundle for the
    model file it runs, as ``calibrate-threshold`` writes one (runtime/threshold.py), then
    applied through the changeover to every camera running that file without a threshold of
    its own. A camera with its own threshold in the line configuration is refused (the
    file's value wins at every reload)."""
    checks.threshold("threshold", threshold)
    cam = camera_named(line, name)
    if cam.config.threshold is not None:
        raise ChangeoverRefused(
            f"camera {name!r} has its own threshold ({cam.config.threshold}) in "
            f"{line.config.path.name}, which overrides the bundle's",
            "remove the camera's threshold from the line configuration to set it here, or "
            "change it there and send SIGHUP",
        )
    group = cam.group
    choose_threshold(
        load_bundle(group.root), group.file, float(threshold), scores, cam.config.source, name
    )
    records = []
    for other in list(line.cameras):
        if other.group is group and other.config.threshold is None:
            record = _apply_camera(line, other, other.config, "view")
            if record is not None and record["what"] == "refused":
                raise ChangeoverRefused(record["reason"], f"{group.root.name} keeps running")
            records += [record] if record is not None else []
    return {"camera": name, "threshold": float(threshold), "bundle": str(group.root),
            "file": group.file, "changeovers": records}  # fmt: skip


class LineControl:
    """The control interface of ``run --config``: every request runs in the line's loop,
    one at a time with the reloads (``Line.call``)."""

    def __init__(self, line):
        self.line = line

    def threshold(self, name: str, threshold, scores) -> dict:
        return self.line.call(lambda: request_threshold(self.line, name, threshold, scores))

    def changeover(self, name: str, bundle: str) -> dict:
        return self.line.call(lambda: request_changeover(self.line, name, bundle))

    def changeovers(self) -> list[dict]:
        return list(self.line.changeovers)


class PipelineControl:
    """The control interface of a single-source ``run --view``: a threshold is written into
    the bundle and applied to the running pipeline as on a line (logged and recorded); a
    bundle changeover needs ``run --config``."""

    def __init__(self, pipeline, root: Path, file: str, source: str, camera: str, *,
                 override: bool, pixel_override: bool, log=print):  # fmt: skip
        self.pipeline, self.root, self.file = pipeline, Path(root), file
        self.source, self.camera, self.log = source, camera, log
        self.override, self.pixel_override = override, pixel_override
        self.changeovers: list[dict] = []

    def threshold(self, name: str, threshold, scores) -> dict:
        checks.threshold("threshold", threshold)
        if self.override:
            raise ChangeoverRefused(
                f"camera {name!r} runs with --threshold, which overrides the bundle's",
                "run without --threshold to set the threshold here",
            )
        started = time.perf_counter()
        written, _ = choose_threshold(
            load_bundle(self.root), self.file, float(threshold), scores, self.source, name
        )
        config = self.pipeline.config
        before, value = config.threshold, written.threshold_for(self.file)
        config.threshold = value
        if not self.pixel_override:
            config.pixel_threshold = value
        record = announce(
            self, name, config, self.root, self.file, "threshold", before, started,
            at_frame=self.pipeline.stats.frames, via="view",
        )  # fmt: skip
        return {"camera": name, "threshold": value, "bundle": str(self.root),
                "file": self.file, "changeovers": [record]}  # fmt: skip

    def changeover(self, name: str, bundle: str) -> dict:
        raise ChangeoverRefused(
            "a bundle changeover needs the line runtime (run --config line.toml)",
            "run the camera from a line configuration to switch bundles while it runs",
        )

    def decided(self, score: float, ng: bool) -> None:  # a pipeline monitor: the summary's
        pass

    def summary(self) -> dict:
        return {"changeovers": self.changeovers} if self.changeovers else {}
