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

import datetime as dt
import time

from dmgrd_edge.bundle import load_bundle
from dmgrd_edge.errors import DmgrdError

from .line_config import load_line_config

# the camera keys a changeover applies; any other change needs a restart
APPLIED = {"bundle", "threshold", "pixel_threshold"}


def _record(line, camera: str, what: str, **details) -> None:
    line.changeovers.append(
        {
            "camera": camera,
            "what": what,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            **details,
        }
    )


def apply_reload(line) -> None:
    log = line.log
    try:
        new = load_line_config(line.config.path)
    except DmgrdError as exc:
        log(f"changeover refused: {exc.problem}; the line keeps running as it was")
        _record(line, "*", "refused", reason=exc.problem)
        return
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


def _apply_camera(line, cam, cfg) -> None:
    root = cfg.bundle.resolve()
    group = cam.group
    started = time.perf_counter()
    try:
        fresh = load_bundle(root)  # verifies every file's hash
    except DmgrdError as exc:
        _refuse_bundle(line, cam, cfg, group, exc.problem)
        return
    file_name = group.file
    same_model = (
        root == group.root
        and fresh.manifest["files"].get(file_name, {}).get("sha256")
        == group.bundle.manifest["files"][file_name]["sha256"]
    )
    if not same_model:
        target = _target_group(line, cam, cfg, root, group)
        if target is None:
            return
        line.switch(cam, target)
        group = target
    _apply_thresholds(line, cam, cfg, fresh, group, moved=not same_model, started=started)


def _refuse_bundle(line, cam, cfg, group, problem: str) -> None:
    """The camera keeps running on its group's bundle: the reason logged and recorded."""
    line.log(
        f"[{cam.config.name}] changeover to {cfg.bundle} refused: {problem}; "
        f"{group.root.name} keeps running"
    )
    _record(line, cam.config.name, "refused", bundle=str(cfg.bundle), reason=problem)


def _target_group(line, cam, cfg, root, group):
    """The group that runs the bundle in ``root``: the folder's running one, or a new one
    where there is none or it cannot take the camera; None when that one cannot be made (the
    changeover is refused and the folder keeps its group)."""
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
            _refuse_bundle(line, cam, cfg, group, exc.problem)
            return None
        if stale is not None and stale is not group:
            line.retired.append(stale)
    return target


def _apply_thresholds(line, cam, cfg, fresh, group, *, moved: bool, started: float) -> None:
    """The camera's thresholds from its configuration (or the bundle's calibration), logged
    and recorded when they or the bundle changed."""
    threshold = cfg.threshold if cfg.threshold is not None else fresh.threshold_for(group.file)
    pixel = threshold if cfg.pixel_threshold is None else cfg.pixel_threshold
    config = cam.pipeline.config
    if moved or threshold != config.threshold or pixel != config.pixel_threshold:
        before = config.threshold
        config.threshold, config.pixel_threshold = threshold, pixel
        cam.config = cfg
        ms = 1000 * (time.perf_counter() - started)
        what = "bundle" if moved else "threshold"
        line.log(
            f"[{cam.config.name}] changeover: {what} -> {group.root.name} "
            f"({group.file}), threshold {before:.4f} -> {threshold:.4f} "
            f"in {ms:.0f} ms; frames already in a backend call are decided by the old one"
        )
        _record(
            line,
            cam.config.name,
            what,
            bundle=str(group.root),
            threshold=threshold,
            previous_threshold=before,
            ms=ms,
            at_frame=cam.taken,
        )
