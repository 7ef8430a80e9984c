"""Device identity and the TensorRT import, shared by the engine builder (export) and the
runtime, which must agree on them: the ``tensorrt`` module (8.6 or newer), the GPU name that
engines are built and matched with, and the check that an engine fits this machine.

Torch-free; ``tensorrt`` and ``pycuda`` are imported only inside the functions that need
them, so importing this module needs neither.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import DmgrdError

MIN_TENSORRT = (8, 6)
BOARD_MODEL = Path("/proc/device-tree/model")  # a Jetson's board name (device tree)


class EngineError(DmgrdError):
    """TensorRT missing, or an engine that cannot be built or does not fit this device."""


def import_tensorrt():
    """The tensorrt module, 8.6 or newer; a clear refusal otherwise."""
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as exc:
        raise EngineError(
            "TensorRT is not installed on this machine, so no engine can be built",
            "build on the target: on a Jetson use JetPack's python3-libnvinfer "
            "(venv with --system-site-packages), elsewhere pip install "
            "'dmgrd-edge[tensorrt]'; then `dmgrd-edge build-engine BUNDLE`",
        ) from exc
    if trt_version(trt.__version__) < MIN_TENSORRT:
        raise EngineError(
            f"TensorRT {trt.__version__} is too old: dmgrd-edge needs 8.6 or newer",
            "JetPack 5 (TensorRT 8.5, Python 3.8) is not supported; flash JetPack 6 "
            "(TensorRT 8.6 or 10.x, Python 3.10), or use --backend onnxruntime",
        )
    return trt


def trt_version(version: str) -> tuple[int, int]:
    found = re.match(r"(\d+)\.(\d+)", version)
    if not found:
        raise EngineError(f"cannot read the TensorRT version {version!r}", "reinstall TensorRT")
    return int(found.group(1)), int(found.group(2))


def gpu_name() -> str:
    """The device's name as engines record it at build and are matched against at run: the
    name CUDA gives device 0 (the device TensorRT and the backend use, read through pycuda),
    and on a Jetson the board's model after it (every Orin module's GPU is called "Orin").
    One way only, so a build and a run on the same device always agree; without pycuda or a
    CUDA device it raises."""
    try:
        import pycuda.driver as cuda  # noqa: PLC0415
    except ImportError as exc:
        raise EngineError(
            "pycuda is not installed; engines are named and matched by the CUDA device it reports",
            "pip install pycuda (on a Jetson in the venv made with --system-site-packages)",
        ) from exc
    try:
        cuda.init()
        name = str(cuda.Device(0).name()).strip()
    except cuda.Error as exc:
        raise EngineError(
            f"no usable CUDA device ({exc})",
            "check the NVIDIA driver and that this user may use the GPU (group video)",
        ) from exc
    board = BOARD_MODEL.read_text(errors="ignore").strip("\x00 \n") if BOARD_MODEL.is_file() else ""
    return f"{name} ({board})" if board and board != name else name


def check_engine_matches(entry: dict, gpu: str | None, trt_version: str, name: str) -> None:
    """Raise with rebuild instructions when an engine was built for another GPU or TensorRT."""
    precision = entry.get("precision", "int8")
    fix = f"rebuild it here: dmgrd-edge build-engine BUNDLE --precision {precision}"
    if entry.get("trt_version") != trt_version:
        raise EngineError(
            f"engine {name} was built with TensorRT {entry.get('trt_version')}, "
            f"this machine has {trt_version}",
            fix,
        )
    if gpu is not None and entry.get("gpu") != gpu:
        raise EngineError(
            f"engine {name} was built for GPU {entry.get('gpu')!r}, this machine has {gpu!r}", fix
        )
