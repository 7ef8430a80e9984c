"""`dmgrd-edge export`: checkpoint -> bundle (fp32 ONNX, INT8 Q/DQ ONNX, FP16 ONNX, engine).

Each step is timed and logged, checks the file it wrote, and the bundle appears only
when complete (staged in a sibling folder, then renamed over the old one).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from dmgrd_edge import __version__
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
from dmgrd_edge.errors import ConfigError

from .graph_check import require_trt_compatible
from .options import OUTPUTS, ExportOptions


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


def export_bundle(
    opts: ExportOptions, log: Callable[[str], None] = print, progress=None
) -> dict[str, Any]:
    """Run the whole export; returns the manifest written."""
    from dmgrd_edge.calib.data import collect
    from dmgrd_edge.train.checkpoint import load_model

    from .onnx_export import check_parity, torch_to_onnx

    opts.validate()
    for name in opts.planned_outputs():
        file_name, precision, _ = OUTPUTS[name]
        log(f"will write {file_name} ({precision})")
    timings: dict[str, float] = {}
    model, payload = load_model(opts.checkpoint)
    meta, cfg = payload["metadata"], model.config
    if "score_stats" not in meta:
        from dmgrd_edge.train.checkpoint import CheckpointError

        raise CheckpointError(
            f"{opts.checkpoint} has no validation score statistics (no threshold)",
            "export a checkpoint written after a validation step (last.pt at the end of training)",
        )
    if opts.int8 and not cfg.uses_student and not opts.int8_teacher:
        raise ConfigError(
            "the nearest-neighbour baseline's only layers to quantize for TensorRT are its teacher's",
            "add --int8-teacher (the CPU form quantizes the teacher anyway), or export without --int8",
        )
    pre = cfg.preprocess()
    source, dataset, category = _calibration_source(opts, meta)
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
        )
    for warning in data.warnings:
        log(f"warning: {warning}")
    staging = staging_dir(opts.out)
    try:
        files: dict[str, dict] = {}
        fp32_path = staging / "model.onnx"
        with step(log, "export fp32 ONNX", timings):
            proto = torch_to_onnx(model, fp32_path, opts.batch, cfg.image_size)
            graph = require_trt_compatible(proto, "model.onnx")
        with step(log, "check ONNX Runtime vs PyTorch parity", timings):
            parity = check_parity(model, fp32_path, normalize(data.guard_images, pre), opts.batch)
        files["model.onnx"] = file_entry(
            fp32_path, "onnx", "fp32", opset=graph.opset, nodes=sum(graph.op_counts.values())
        )
        calibration, guard = None, None
        if opts.int8:
            calibration, guard = _int8(opts, staging, proto, data, pre, files, timings, log)
        parities = {"fp32_onnxruntime_vs_torch": parity.as_dict()}
        if opts.fp16:
            with step(log, "export FP16-typed ONNX", timings):
                files["model.fp16.onnx"], parities["fp16_onnxruntime_vs_torch_fp32"] = _fp16(
                    staging, model, opts, normalize(data.guard_images, pre)
                )
        with step(log, "per-precision thresholds", timings):
            _precision_thresholds(
                staging, files, data, pre, float(meta["score_stats"]["threshold"]), log
            )
        manifest = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": cfg.to_dict(),
            "preprocess": pre.to_dict(),
            "inputs": [
                {
                    "name": "image",
                    "dtype": "float32",
                    "shape": [
                        "batch" if opts.batch.dynamic else opts.batch.min,
                        3,
                        cfg.image_size,
                        cfg.image_size,
                    ],
                }
            ],
            "outputs": [
                {
                    "name": "anomaly_map",
                    "dtype": "float32",
                    "shape": ["batch", 1, cfg.image_size, cfg.image_size],
                },
                {"name": "score", "dtype": "float32", "shape": ["batch"]},
            ],
            "batch": {"min": opts.batch.min, "opt": opts.batch.opt, "max": opts.batch.max},
            "threshold": float(meta["score_stats"]["threshold"]),
            "score_stats": meta["score_stats"],
            "files": files,
            "versions": _versions(),
            "source": {
                "checkpoint": Path(opts.checkpoint).name,
                "checkpoint_sha256": sha256_file(opts.checkpoint),
                "dataset": meta.get("dataset"),
                "root": meta.get("root"),
                "category": meta.get("category"),
                "step": payload["step"],
                "teacher_weights": meta.get("teacher_weights"),
                # a pruned checkpoint (dmgrd-edge prune): the cut, without the per-group widths
                "pruning": (
                    {k: v for k, v in meta["pruning"].items() if k not in ("widths", "from")}
                    if meta.get("pruning")
                    else None
                ),
            },
            "parity": parities,
            "calibration": calibration,
            "guard": guard,
            "export_seconds": timings,
            "memory_bank_bytes": model.deployed_memory_bytes(),
        }
        out = commit_bundle(staging, opts.out, manifest)
        log(f"wrote bundle {out}")
        return manifest
    finally:
        release_staging(staging)


def _precision_thresholds(staging: Path, files: dict, data, pre, base: float, log) -> None:
    """Lower precisions shift the scores (INT8 noise lowers the teacher-student cosine
    everywhere), so each model file gets its own threshold: the fp32 validation threshold
    moved by the median score difference on the held-out normal images."""
    from dmgrd_edge.calib.guard import run_onnx

    normals = data.guard_images[data.guard_labels == 0]
    reference = np.median(run_onnx(staging / "model.onnx", normals, pre)[1])
    files["model.onnx"].update(
        threshold=base, threshold_rule="mean + 3 std of validation normal scores"
    )
    for name in [
        n for n, entry in files.items() if entry["kind"] == "onnx" and entry["precision"] != "fp32"
    ]:
        shift = float(np.median(run_onnx(staging / name, normals, pre)[1]) - reference)
        files[name].update(
            threshold=base + shift,
            score_shift_vs_fp32=shift,
            threshold_rule=f"fp32 threshold + median score shift on {len(normals)} held-out normals",
        )
        log(f"{name}: scores shifted by {shift:+.4f} vs fp32; threshold {base + shift:.4f}")


# target -> (file name, ONNX Runtime / TensorRT consumer, graph must pass the TensorRT check)
INT8_FILES = {
    "tensorrt": (
        OUTPUTS["onnx-int8"][0],
        "TensorRT (and ONNX Runtime's CUDA/TensorRT providers)",
        True,
    ),
    "cpu": (OUTPUTS["onnx-int8-cpu"][0], "ONNX Runtime CPU provider", False),
}


def _int8(opts, staging, proto, data, pre, files, timings, log):
    """Both INT8 files (see calib/quantize.py); the TensorRT one's guard and calibration are
    the manifest's top-level ``guard``/``calibration``; the CPU one's sit in its file entry."""
    from dmgrd_edge.calib.data import CalibrationReader
    from dmgrd_edge.calib.guard import run_onnx

    fp32_path = staging / "model.onnx"
    reader = CalibrationReader(
        data.calibration, pre, batch_size=1 if opts.batch.dynamic else opts.batch.min
    )
    reference = run_onnx(fp32_path, data.guard_images, pre)
    result = {}
    for target in opts.int8_targets():
        quant, guard = result[target] = _int8_target(
            target, opts, staging, proto, data, pre, reader, reference, timings, log
        )
        name = INT8_FILES[target][0]
        extra = {
            "target": target,
            "runs_on": INT8_FILES[target][1],
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


def _int8_target(target, opts, staging, proto, data, pre, reader, reference, timings, log):
    from dmgrd_edge.calib.guard import compare, run_onnx, within
    from dmgrd_edge.calib.quantize import quantize_qdq

    from .onnx_export import int8_excluded_nodes

    name, _, trt_check = INT8_FILES[target]
    fp32_path, int8_path = staging / "model.onnx", staging / name
    cache = staging / f".calibration-ranges.{target}.json"
    always_fp32 = int8_excluded_nodes(proto, opts.int8_teacher or target == "cpu")
    with step(
        log,
        f"{name}: calibrate ({opts.calib_method}, {len(data.calibration)} images) and quantize",
        timings,
    ):
        quant = quantize_qdq(
            fp32_path, int8_path, reader, opts.calib_method, always_fp32, cache, target
        )
        if trt_check:
            require_trt_compatible(str(int8_path), name)
    with step(log, f"{name}: accuracy guard fp32 vs int8", timings):
        guard = compare(
            reference,
            run_onnx(int8_path, data.guard_images, pre),
            data.guard_labels,
            data.guard_masks,
        )
    guard["kept_in_higher_precision"] = []
    if opts.max_drop is not None and not within(guard, opts.max_drop):
        guard = _fit_drop(
            opts,
            target,
            fp32_path,
            int8_path,
            reader,
            data,
            pre,
            always_fp32,
            cache,
            reference,
            log,
            timings,
        )
    log(
        f"{name} guard: I-AUC {100 * guard['i_auroc_fp32']:.2f} -> {100 * guard['i_auroc_int8']:.2f}, "
        f"PRO@0.3 {100 * guard['pro_30_fp32']:.2f} -> {100 * guard['pro_30_int8']:.2f}, "
        f"map cosine {guard['map_cosine_mean']:.4f}"
    )
    cache.unlink(missing_ok=True)
    return quant, guard


def _fit_drop(
    opts,
    target,
    fp32_path,
    int8_path,
    reader,
    data,
    pre,
    always_fp32,
    cache,
    reference,
    log,
    timings,
):
    """Keep the most sensitive layers in fp32 (2, 4, 8, ...) until the drop fits. At least
    one layer stays int8: keeping every layer in fp32 is not an INT8 model."""
    from dmgrd_edge.calib.guard import compare, layer_sensitivity, run_onnx, within
    from dmgrd_edge.calib.quantize import quantize_qdq

    with step(log, f"{int8_path.name}: per-layer sensitivity", timings):
        ranked = layer_sensitivity(fp32_path, int8_path, data.guard_images[:4], pre)
    limit = max(1, len(ranked) - 1)
    keep, tries = min(2, limit), []
    while True:
        chosen = [r["node"] for r in ranked[:keep]]
        quantize_qdq(
            fp32_path, int8_path, reader, opts.calib_method, always_fp32 + chosen, cache, target
        )
        guard = compare(
            reference,
            run_onnx(int8_path, data.guard_images, pre),
            data.guard_labels,
            data.guard_masks,
        )
        tries.append(
            {
                "kept": keep,
                "i_auroc_drop_points": guard["i_auroc_drop_points"],
                "pro_30_drop_points": guard["pro_30_drop_points"],
            }
        )
        log(
            f"{int8_path.name}: kept {keep} layer(s) in fp32: I-AUC drop {guard['i_auroc_drop_points']:.2f}, "
            f"PRO@0.3 drop {guard['pro_30_drop_points']:.2f} points"
        )
        if within(guard, opts.max_drop) or keep >= limit:
            break
        keep = min(2 * keep, limit)
    guard["kept_in_higher_precision"] = chosen
    guard["sensitivity_top"] = ranked[:10]
    guard["max_drop_points"] = opts.max_drop
    guard["max_drop_met"] = within(guard, opts.max_drop)
    guard["tries"] = tries
    if not guard["max_drop_met"]:
        log(
            f"warning: {int8_path.name}: the drop stays above {opts.max_drop} points with {keep} of {len(ranked)} "
            "layers in fp32"
        )
    return guard


def _fp16(staging: Path, model, opts: ExportOptions, images: np.ndarray) -> tuple[dict, dict]:
    """FP16-typed graph: exported from the mixed-precision module, compared with fp32 PyTorch."""
    from .onnx_export import check_parity, torch_to_onnx

    path = staging / "model.fp16.onnx"
    proto = torch_to_onnx(model, path, opts.batch, model.config.image_size, fp16=True)
    require_trt_compatible(proto, "model.fp16.onnx")
    parity = check_parity(model, path, images, opts.batch, score_rtol=1e-2, map_atol=5e-2)
    entry = file_entry(
        path, "onnx", "fp16", kept_fp32="memory selection, MSFF, bottleneck and scoring head"
    )
    return entry, parity.as_dict()
