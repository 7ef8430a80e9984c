"""Backend choice: ``auto`` takes an engine built for this device when the bundle has one
and TensorRT is importable, else ONNX Runtime; it always says what it picked and why."""

from __future__ import annotations

from dmgrd_edge.bundle import Bundle
from dmgrd_edge.errors import choose

from .backend import BackendError

BACKENDS = ("auto", "tensorrt", "onnxruntime")
PRECISIONS = ("auto", "int8", "fp16", "fp32")


def _engine_for(bundle: Bundle, precision: str):
    from dmgrd_edge.export.tensorrt_engine import check_engine_matches, gpu_name, import_tensorrt

    trt = import_tensorrt()
    gpu = gpu_name()
    order = ("int8", "fp16", "fp32") if precision == "auto" else (precision,)
    engines = bundle.files(kind="engine")
    if not engines:
        raise BackendError(f"{bundle.root} has no TensorRT engine",
                           f"build one here: dmgrd-edge build-engine {bundle.root}")
    mismatch = None
    for want in order:
        for name in engines:
            entry = bundle.manifest["files"][name]
            if entry.get("precision") != want:
                continue
            try:
                check_engine_matches(entry, gpu, trt.__version__, name)
                return name, entry
            except Exception as exc:  # noqa: BLE001 - keep the reason, try the next engine
                mismatch = exc
    if mismatch is not None:
        raise mismatch
    raise BackendError(f"no {precision} engine in {bundle.root}", f"engines there: {engines}")


def create_backend(bundle: Bundle, backend: str = "auto", precision: str = "auto", max_batch: int = 8,
                   threads: int = 0, log=print, spin: bool = True):
    choose("backend", backend, BACKENDS)
    choose("precision", precision, PRECISIONS)
    if backend in ("auto", "tensorrt"):
        try:
            name, entry = _engine_for(bundle, precision)
            bundle.verify([name])
            from .tensorrt_backend import TensorRTBackend

            chosen = TensorRTBackend(bundle.root / name, entry["precision"], max_batch)
            chosen.bundle_file = name
            log(f"backend: TensorRT {entry['trt_version']} engine {name}")
            return chosen
        except Exception as exc:
            if backend == "tensorrt":
                raise
            log(f"backend: no usable TensorRT engine ({getattr(exc, 'problem', exc)}); using ONNX Runtime")
    import onnxruntime as ort

    from .onnx_backend import OnnxBackend

    available = ort.get_available_providers()
    accelerated = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if precision == "auto":
        # The Q/DQ graph pays off where Q/DQ is fused (TensorRT/CUDA providers); on the CPU
        # provider it measured slower than fp32 (docs/BENCHMARKS.md), so fp32 is the default.
        has_int8 = bool(bundle.files(kind="onnx", precision="int8"))
        precision = "int8" if accelerated and has_int8 else "fp32"
    files = bundle.files(kind="onnx", precision=precision)
    if not files:
        raise BackendError(f"{bundle.root} has no {precision} ONNX model",
                           f"models there: {bundle.files(kind='onnx')}; re-export with --int8/--fp16")
    chosen = OnnxBackend(bundle.root / files[0], providers=accelerated + ["CPUExecutionProvider"], threads=threads,
                         precision=precision, spin=spin)
    chosen.bundle_file = files[0]
    log(f"backend: ONNX Runtime ({', '.join(chosen.providers)}) with {files[0]}")
    return chosen
