"""Backend choice: ``auto`` takes an engine built for this device when the bundle has one
and TensorRT is importable, else ONNX Runtime; it always says what it picked and why.

Calls in flight (``workers``): on ONNX Runtime's CPU provider a small model scales poorly
across the cores of one call (every operator is split and joined again), so ``auto`` runs
two calls at once, each on half the cores (``cores // workers`` threads): on 2 cores this
gave 1.45-1.48x the end-to-end frames per second of one call on both cores
(``benchmarks/runtime_stream.py``, docs/BENCHMARKS.md). Each frame then takes longer.
TensorRT and the CUDA/TensorRT providers get one call at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dmgrd_edge.bundle import Bundle
from dmgrd_edge.catalog import PRECISION_PREFERENCE
from dmgrd_edge.errors import ConfigError, choose

from .backend import Backend, BackendError

BACKENDS = ("auto", "tensorrt", "onnxruntime")
PRECISIONS = ("auto", *PRECISION_PREFERENCE)


@dataclass(frozen=True, kw_only=True)
class Selection:
    """What `create_backend` chose: the backend, the bundle file it runs, its precision and
    the number of calls to keep in flight."""

    backend: Backend
    file: str
    precision: str
    workers: int

    def describe(self) -> dict:
        return {**self.backend.describe(), "workers": self.workers}

    def close(self) -> None:
        self.backend.close()


def _engine_for(bundle: Bundle, precision: str):
    from dmgrd_edge.device import check_engine_matches, gpu_name, import_tensorrt

    trt = import_tensorrt()
    gpu = gpu_name()
    order = PRECISION_PREFERENCE if precision == "auto" else (precision,)
    engines = bundle.files(kind="engine")
    if not engines:
        raise BackendError(
            f"{bundle.root} has no TensorRT engine",
            f"build one here: dmgrd-edge build-engine {bundle.root}",
        )
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


def int8_target(entry: dict) -> str:
    """Which consumer an INT8 ONNX file was quantized for (bundles before the CPU file have
    only the TensorRT-shaped one, without the field)."""
    return entry.get("target", "tensorrt")


def onnx_file_for(bundle: Bundle, precision: str, accelerated: bool, log=print) -> tuple[str, str]:
    """(file name, precision) for ONNX Runtime. INT8 comes in two forms (calib/quantize.py):
    the TensorRT-shaped Q/DQ graph for the CUDA/TensorRT providers and the uint8 graph for
    the CPU provider, which runs the TensorRT-shaped one slower than fp32. ``auto`` takes
    INT8 in the form this provider runs fast, else fp32."""
    want = "tensorrt" if accelerated else "cpu"
    int8 = {
        int8_target(bundle.manifest["files"][n]): n
        for n in bundle.files(kind="onnx", precision="int8")
    }
    if precision == "auto":
        if want in int8:
            return int8[want], "int8"
        precision = "fp32"
    if precision == "int8" and int8:
        if want in int8:
            return int8[want], "int8"
        other = next(iter(int8.values()))
        consumer = "TensorRT" if want == "cpu" else "the CPU provider"
        log(
            f"note: {other} was quantized for {consumer}, not for this provider, and may "
            "run slowly here; re-export with --int8 (without --no-int8-cpu) to get the "
            f"{want} form"
        )
        return other, "int8"
    files = bundle.files(kind="onnx", precision=precision)
    if not files:
        raise BackendError(
            f"{bundle.root} has no {precision} ONNX model",
            f"models there: {bundle.files(kind='onnx')}; re-export with --int8/--fp16",
        )
    return files[0], precision


def auto_workers(accelerated: bool, cores: int | None = None) -> int:
    cores = cores or os.cpu_count() or 1
    return 2 if not accelerated and cores >= 2 else 1


def create_backend(
    bundle: Bundle,
    backend: str = "auto",
    precision: str = "auto",
    max_batch: int = 8,
    threads: int = 0,
    log=print,
    spin: bool = True,
    spin_between_runs: bool = True,
    workers: int | None = 1,
) -> Selection:
    """The backend for this bundle and what was chosen (``workers=None`` lets it choose the
    calls in flight, see the module text)."""
    choose("backend", backend, BACKENDS)
    choose("precision", precision, PRECISIONS)
    if backend in ("auto", "tensorrt"):
        try:
            name, entry = _engine_for(bundle, precision)
            bundle.verify([name])
            from .tensorrt_backend import TensorRTBackend

            if workers not in (None, 1):
                raise ConfigError(
                    "the TensorRT backend takes one call at a time (one CUDA stream), not "
                    f"{workers}",
                    "use --workers 1 or auto, or --backend onnxruntime",
                )
            size = (bundle.preprocess.height, bundle.preprocess.width)
            chosen = TensorRTBackend(
                bundle.root / name, entry["precision"], max_batch, entry.get("dla_core"), size
            )
            log(f"backend: TensorRT {entry['trt_version']} engine {name}")
            return Selection(backend=chosen, file=name, precision=chosen.precision, workers=1)
        except ConfigError:
            raise  # a usable engine, a request it cannot take (--workers, --batch): no fall-back
        except Exception as exc:
            if backend == "tensorrt":
                raise
            log(
                f"backend: no usable TensorRT engine ({getattr(exc, 'problem', exc)}); "
                "using ONNX Runtime"
            )
    import onnxruntime as ort

    from .onnx_backend import OnnxBackend

    available = ort.get_available_providers()
    accelerated = [
        p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available
    ]
    name, precision = onnx_file_for(bundle, precision, bool(accelerated), log)
    workers = workers or auto_workers(bool(accelerated))
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    chosen = OnnxBackend(
        bundle.root / name,
        providers=accelerated + ["CPUExecutionProvider"],
        threads=threads,
        precision=precision,
        spin=spin,
        spin_between_runs=spin_between_runs,
    )
    log(
        f"backend: ONNX Runtime ({', '.join(chosen.providers)}) with {name}, "
        f"{workers} call{'s' if workers > 1 else ''} in flight x {threads} "
        f"thread{'s' if threads > 1 else ''}"
    )
    return Selection(backend=chosen, file=name, precision=precision, workers=workers)
