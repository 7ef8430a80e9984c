"""`dmgrd-edge export`: checkpoint -> bundle (fp32 ONNX, INT8 Q/DQ ONNX, FP16 ONNX, and with
``engine=True`` the TensorRT engine, built here in the bundle being staged).

Each step is timed and logged, checks the file it wrote, and the bundle appears only
when complete (staged in a sibling folder, then renamed over the old one).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from dmgrd_edge import __version__, catalog
from dmgrd_edge.bundle import (
    SCHEMA,
    SCHEMA_VERSION,
    commit_bundle,
    file_entry,
    release_staging,
    sha256_file,
    staging_dir,
)
from dmgrd_edge.data.preprocess import normalize
from dmgrd_edge.errors import ConfigError, GuardError
from dmgrd_edge.options import ExportOptions

from .graph_check import require_trt_compatible

FP32_ONNX = catalog.by_key("onnx-fp32").name
FP16_ONNX = catalog.by_key("onnx-fp16").name
# an INT8 file exported without --max-drop that loses more than this many points of I-AUC
# or PRO@0.3 on the guard set is written with a warning that says so
UNGUARDED_WARNING_POINTS = 1.0


@contextlib.contextmanager
def step(log: Callable[[str], None], what: str, record: dict):
    started = time.perf_counter()
    log(f"{what} ...")
    yield
    record[what] = round(time.perf_counter() - started, 2)
    log(f"{what}: done in {record[what]:.1f} s")


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch

    return {
        "dmgrd_edge": __version__,
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def _calibration_source(opts: ExportOptions, meta: dict) -> tuple[Path, str | None, str | None]:
    if opts.calib_data is not None:
        return Path(opts.calib_data), opts.calib_dataset, opts.calib_category
    return Path(meta["root"]), meta["dataset"], meta["category"]


@dataclass
class _ModelFiles:
    """What the export wrote into the staging folder, for the manifest."""

    files: dict[str, dict]
    parity: dict[str, Any]
    calibration: dict[str, Any] | None = None
    guard: dict[str, Any] | None = None


def _check_checkpoint(opts: ExportOptions, cfg, meta: dict) -> None:
    if "score_stats" not in meta:
        from dmgrd_edge.train.checkpoint import CheckpointError

        raise CheckpointError(
            f"{opts.checkpoint} has no validation score statistics (no threshold)",
            "export a checkpoint written after a validation step (last.pt at the end of training)",
        )
    if opts.int8 and not cfg.uses_student and not opts.int8_teacher:
        raise ConfigError(
            "the nearest-neighbour baseline's only layers to quantize for TensorRT are "
            "its teacher's",
            "add --int8-teacher (the CPU form quantizes the teacher anyway), "
            "or export without --int8",
        )


def _collect(opts: ExportOptions, meta: dict, pre, timings: dict, log, progress):
    """Calibration and guard images (calib/data.py), read through the shared preprocess."""
    from dmgrd_edge.calib.data import collect
    from dmgrd_edge.config import SynthesisConfig

    source, dataset, category = _calibration_source(opts, meta)
    # pseudo-anomalies as the model's training made them
    synthesis = SynthesisConfig.from_dict((meta.get("train_config") or {}).get("synthesis"))
    with step(log, "read calibration and guard images", timings):
        data = collect(
            source,
            dataset,
            category,
            pre,
            opts.calib_count,
            opts.guard_count,
            opts.calib_pseudo,
            opts.seed,
            progress,
            synthesis=synthesis,
        )
    for warning in data.warnings:
        log(f"warning: {warning}")
    return data


def _write_model_files(opts, staging: Path, model, data, pre, threshold: float, timings, log):
    """Every ONNX file of the plan into ``staging``, each checked, with its threshold."""
    from .onnx_export import check_parity, torch_to_onnx

    fp32_path = staging / FP32_ONNX
    with step(log, "export fp32 ONNX", timings):
        proto = torch_to_onnx(model, fp32_path, opts.batch, model.config.image_size)
        graph = require_trt_compatible(proto, FP32_ONNX)
    with step(log, "check ONNX Runtime vs PyTorch parity", timings):
        parity = check_parity(model, fp32_path, normalize(data.guard_images, pre), opts.batch)
    written = _ModelFiles(files={}, parity={"fp32_onnxruntime_vs_torch": parity.as_dict()})
    written.files[FP32_ONNX] = file_entry(
        fp32_path, "onnx", "fp32", opset=graph.opset, nodes=sum(graph.op_counts.values())
    )
    if opts.int8:
        written.calibration, written.guard = _int8(
            opts, staging, proto, data, pre, written.files, timings, log
        )
    if opts.fp16:
        with step(log, "export FP16-typed ONNX", timings):
            written.files[FP16_ONNX], written.parity["fp16_onnxruntime_vs_torch_fp32"] = _fp16(
                staging, model, opts, normalize(data.guard_images, pre)
            )
    with step(log, "per-precision thresholds", timings):
        _precision_thresholds(staging, written.files, data, pre, threshold, log)
    return written


def _io_shapes(opts: ExportOptions, size: int) -> dict[str, list]:
    batch = "batch" if opts.batch.dynamic else opts.batch.min
    return {
        "inputs": [{"name": "image", "dtype": "float32", "shape": [batch, 3, size, size]}],
        "outputs": [
            {"name": "anomaly_map", "dtype": "float32", "shape": ["batch", 1, size, size]},
            {"name": "score", "dtype": "float32", "shape": ["batch"]},
        ],
    }


def _source_record(opts: ExportOptions, meta: dict, step_done: int) -> dict[str, Any]:
    return {
        "checkpoint": Path(opts.checkpoint).name,
        "checkpoint_sha256": sha256_file(opts.checkpoint),
        "dataset": meta.get("dataset"),
        "root": meta.get("root"),
        "category": meta.get("category"),
        "step": step_done,
        "teacher_weights": meta.get("teacher_weights"),
        # `--image-score auto`: the rule chosen on validation, the one rule the graph computes
        "image_score_chosen": (meta.get("image_score_choice") or {}).get("chosen"),
        # a pruned checkpoint (dmgrd-edge prune): the cut, without the per-group widths
        "pruning": (
            {k: v for k, v in meta["pruning"].items() if k not in ("widths", "from")}
            if meta.get("pruning")
            else None
        ),
    }


def _manifest(opts, model, payload, written: _ModelFiles, timings) -> dict[str, Any]:
    cfg, meta = model.config, payload["metadata"]
    shapes = _io_shapes(opts, cfg.image_size)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": cfg.to_dict(),
        "preprocess": cfg.preprocess().to_dict(),
        "inputs": shapes["inputs"],
        "outputs": shapes["outputs"],
        "batch": {"min": opts.batch.min, "opt": opts.batch.opt, "max": opts.batch.max},
        "threshold": float(meta["score_stats"]["threshold"]),
        "score_stats": meta["score_stats"],
        "files": written.files,
        "versions": _versions(),
        "source": _source_record(opts, meta, payload["step"]),
        "parity": written.parity,
        "calibration": written.calibration,
        "guard": written.guard,
        "export_seconds": timings,
        "memory_bank_bytes": model.deployed_memory_bytes(),
    }


def export_bundle(
    opts: ExportOptions, log: Callable[[str], None] = print, progress=None
) -> dict[str, Any]:
    """Run the whole export; returns the manifest written."""
    from dmgrd_edge.train.checkpoint import load_model

    opts.validate()
    if opts.engine:  # refused now, not after the ONNX files are made
        from .tensorrt_engine import require_builder

        log(f"TensorRT engines are built on {require_builder()}")
    for name in opts.planned_outputs():
        planned = catalog.by_key(name)
        log(f"will write {planned.name} ({planned.precision or 'as built'})")
    timings: dict[str, float] = {}
    model, payload = load_model(opts.checkpoint)
    meta, cfg = payload["metadata"], model.config
    _check_checkpoint(opts, cfg, meta)
    pre = cfg.preprocess()
    data = _collect(opts, meta, pre, timings, log, progress)
    staging = staging_dir(opts.out)
    try:
        threshold = float(meta["score_stats"]["threshold"])
        written = _write_model_files(opts, staging, model, data, pre, threshold, timings, log)
        if opts.engine:
            written.files.update(_engines(opts, staging, cfg.image_size, timings, log))
        manifest = _manifest(opts, model, payload, written, timings)
        out = commit_bundle(staging, opts.out, manifest)
        log(f"wrote bundle {out}")
        return manifest
    finally:
        release_staging(staging)


def _engines(opts: ExportOptions, staging: Path, image_size: int, timings, log) -> dict:
    """The TensorRT engine of ``--engine``, built in the staging folder: it is committed with
    the rest of the bundle, or nothing is."""
    from .tensorrt_engine import build_engines

    with step(log, f"build the {opts.engine_precision} TensorRT engine", timings):
        return build_engines(
            staging,
            [opts.engine_precision],
            opts.batch,
            image_size,
            opts.workspace,
            opts.dla_core,
            log,
        )


def _precision_thresholds(staging: Path, files: dict, data, pre, base: float, log) -> None:
    """Lower precisions shift the scores (INT8 noise lowers the teacher-student cosine
    everywhere), so each model file gets its own threshold: the fp32 validation threshold
    moved by the median score difference on the held-out normal images."""
    from dmgrd_edge.calib.guard import run_onnx

    normals = data.guard_images[data.guard_labels == 0]
    reference = np.median(run_onnx(staging / FP32_ONNX, normals, pre)[1])
    files[FP32_ONNX].update(
        threshold=base, threshold_rule="mean + 3 std of validation normal scores"
    )
    for name in [
        n for n, entry in files.items() if entry["kind"] == "onnx" and entry["precision"] != "fp32"
    ]:
        shift = float(np.median(run_onnx(staging / name, normals, pre)[1]) - reference)
        files[name].update(
            threshold=base + shift,
            score_shift_vs_fp32=shift,
            threshold_rule=(
                f"fp32 threshold + median score shift on {len(normals)} held-out normals"
            ),
        )
        log(f"{name}: scores shifted by {shift:+.4f} vs fp32; threshold {base + shift:.4f}")


def _int8(opts, staging, proto, data, pre, files, timings, log):
    """Both INT8 files (see calib/quantize.py); the TensorRT one's guard and calibration are
    the manifest's top-level ``guard``/``calibration``; the CPU one's sit in its file entry."""
    from dmgrd_edge.calib.data import CalibrationReader
    from dmgrd_edge.calib.guard import run_onnx

    fp32_path = staging / FP32_ONNX
    reader = CalibrationReader(
        data.calibration, pre, batch_size=1 if opts.batch.dynamic else opts.batch.min
    )
    reference = run_onnx(fp32_path, data.guard_images, pre)
    result = {}
    for target in opts.int8_targets():
        quant, guard = result[target] = _int8_target(
            target, opts, staging, proto, data, pre, reader, reference, timings, log
        )
        name = catalog.int8_file(target).name
        extra = {
            "target": target,
            "runs_on": catalog.int8_file(target).consumer,
            "quantized_layers": quant["quantized_layers"],
        }
        if target != "tensorrt":
            extra.update(calibration=quant, guard=guard)
        files[name] = file_entry(staging / name, "onnx", "int8", **extra)
    quant, guard = result["tensorrt"]  # always written with --int8 (ExportOptions.int8_targets)
    calibration = {
        **data.summary(),
        **quant,
        "preprocess": "dmgrd_edge.data.preprocess (the runtime's)",
        "teacher": "int8" if opts.int8_teacher else "fp32 (no Q/DQ)",
        "fp32_nodes": "memory selection, scoring head" + ("" if opts.int8_teacher else ", teacher"),
    }
    return calibration, guard


@dataclass(frozen=True, kw_only=True)
class _Int8Job:
    """One INT8 file to write and check: its target, paths, calibration reader, guard set
    and the fp32 reference outputs on it."""

    opts: ExportOptions
    target: str
    fp32_path: Path
    int8_path: Path
    reader: Any
    data: Any
    pre: Any
    always_fp32: list[str]
    cache: Path
    reference: tuple
    log: Callable[[str], None]
    timings: dict

    def quantize(self, kept_fp32: Sequence[str] = ()) -> dict:
        from dmgrd_edge.calib.quantize import quantize_qdq

        return quantize_qdq(
            self.fp32_path,
            self.int8_path,
            self.reader,
            self.opts.calib_method,
            self.always_fp32 + list(kept_fp32),
            self.cache,
            self.target,
        )

    def guard(self) -> dict:
        from dmgrd_edge.calib.guard import compare, run_onnx

        data = self.data
        return compare(
            self.reference,
            run_onnx(self.int8_path, data.guard_images, self.pre),
            data.guard_labels,
            data.guard_masks,
        )


def _int8_target(target, opts, staging, proto, data, pre, reader, reference, timings, log):
    from dmgrd_edge.calib.guard import within

    from .onnx_export import int8_excluded_nodes

    planned = catalog.int8_file(target)
    name = planned.name
    job = _Int8Job(
        opts=opts,
        target=target,
        fp32_path=staging / FP32_ONNX,
        int8_path=staging / name,
        reader=reader,
        data=data,
        pre=pre,
        always_fp32=int8_excluded_nodes(proto, opts.int8_teacher or target == "cpu"),
        cache=staging / f".calibration-ranges.{target}.json",
        reference=reference,
        log=log,
        timings=timings,
    )
    with step(
        log,
        f"{name}: calibrate ({opts.calib_method}, {len(data.calibration)} images) and quantize",
        timings,
    ):
        quant = job.quantize()
        if planned.trt_parsable:
            require_trt_compatible(str(job.int8_path), name)
    with step(log, f"{name}: accuracy guard fp32 vs int8", timings):
        guard = job.guard()
    guard["kept_in_higher_precision"] = []
    if opts.max_drop is not None and not within(guard, opts.max_drop):
        guard = _fit_drop(job)
    log(
        f"{name} guard: I-AUC {100 * guard['i_auroc_fp32']:.2f} -> "
        f"{100 * guard['i_auroc_int8']:.2f}, "
        f"PRO@0.3 {100 * guard['pro_30_fp32']:.2f} -> {100 * guard['pro_30_int8']:.2f}, "
        f"map cosine {guard['map_cosine_mean']:.4f}"
    )
    warning = unguarded_warning(name, guard, opts.max_drop)
    if warning:
        log(warning)
    job.cache.unlink(missing_ok=True)
    return quant, guard


def unguarded_warning(name: str, guard: dict, max_drop: float | None) -> str | None:
    """The warning for an INT8 file exported without --max-drop whose guard lost more than
    UNGUARDED_WARNING_POINTS of I-AUC or PRO@0.3; None otherwise."""
    from dmgrd_edge.calib.guard import within

    if max_drop is not None or within(guard, UNGUARDED_WARNING_POINTS):
        return None
    return (
        f"warning: {name} loses {guard['i_auroc_drop_points']:.1f} I-AUC and "
        f"{guard['pro_30_drop_points']:.1f} PRO@0.3 points against fp32 on the guard set; "
        f"export with --max-drop N to keep its most sensitive layers in fp32, or deploy "
        f"{FP32_ONNX}"
    )


def _fit_drop(job: _Int8Job) -> dict:
    """Keep the most sensitive layers in fp32 (2, 4, 8, ...) until the drop fits. At least
    one layer stays int8: keeping every layer in fp32 is not an INT8 model."""
    from dmgrd_edge.calib.guard import layer_sensitivity, within

    name, max_drop = job.int8_path.name, job.opts.max_drop
    with step(job.log, f"{name}: per-layer sensitivity", job.timings):
        ranked = layer_sensitivity(job.fp32_path, job.int8_path, job.data.guard_images[:4], job.pre)
    limit = max(1, len(ranked) - 1)
    keep, tries = min(2, limit), []
    while True:
        chosen = [r["node"] for r in ranked[:keep]]
        job.quantize(chosen)
        guard = job.guard()
        tries.append(
            {
                "kept": keep,
                "i_auroc_drop_points": guard["i_auroc_drop_points"],
                "pro_30_drop_points": guard["pro_30_drop_points"],
            }
        )
        job.log(
            f"{name}: kept {keep} layer(s) in fp32: I-AUC drop "
            f"{guard['i_auroc_drop_points']:.2f}, "
            f"PRO@0.3 drop {guard['pro_30_drop_points']:.2f} points"
        )
        if within(guard, max_drop) or keep >= limit:
            break
        keep = min(2 * keep, limit)
    guard["kept_in_higher_precision"] = chosen
    guard["sensitivity_top"] = ranked[:10]
    guard["max_drop_points"] = max_drop
    guard["max_drop_met"] = within(guard, max_drop)
    guard["tries"] = tries
    if not guard["max_drop_met"]:
        job.log(
            f"warning: {name}: the drop stays above {max_drop} points with {keep} "
            f"of {len(ranked)} layers in fp32"
        )
    return guard


def _fp16(staging: Path, model, opts: ExportOptions, images: np.ndarray) -> tuple[dict, dict]:
    """FP16-typed graph: exported from the mixed-precision module, compared with fp32 PyTorch."""
    from .onnx_export import check_parity, torch_to_onnx

    path = staging / FP16_ONNX
    proto = torch_to_onnx(model, path, opts.batch, model.config.image_size, fp16=True)
    require_trt_compatible(proto, FP16_ONNX)
    parity = check_parity(model, path, images, opts.batch, score_rtol=1e-2, map_atol=5e-2)
    entry = file_entry(
        path, "onnx", "fp16", kept_fp32="memory selection, MSFF, bottleneck and scoring head"
    )
    return entry, parity.as_dict()


def require_max_drop(manifest: dict[str, Any], out: Path, max_drop: float | None) -> None:
    """GuardError (exit code 5) when an INT8 file of the written bundle misses ``--max-drop``;
    the bundle stays, with each guard's figures in its manifest."""
    guards = [manifest["guard"] or {}] + [
        f["guard"] for f in manifest["files"].values() if "guard" in f
    ]
    if any(g.get("max_drop_met") is False for g in guards):
        raise GuardError(
            f"INT8 misses --max-drop {max_drop}: see guard in {Path(out) / 'manifest.json'}",
            "use more/better calibration images (--calib-count, --calib-pseudo), another "
            f"--calib-method, a larger --max-drop, or deploy {FP32_ONNX} (fp32/fp16)",
        )
