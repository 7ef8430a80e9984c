"""`dmgrd-edge doctor`: is this machine ready to build and run TensorRT engines at the line?

Each check says ok, missing (required: the TensorRT path cannot work), warn (a part that some
uses need: CSI cameras need OpenCV with GStreamer, benchmarks want a known power mode) or
skip (not a Jetson), what it found and how to fix what is missing. Required: Python >= 3.10,
numpy, OpenCV importable, TensorRT >= 8.6, pycuda, a CUDA device. Torch-free; every probe is
a real import, file or subprocess, and none of them changes the machine.
"""

from __future__ import annotations

import glob
import importlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from dmgrd_edge.device import EngineError, gpu_name, import_tensorrt

from .device_info import jetson_clocks_state, parse_l4t, parse_nvpmodel

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
VIDEO_DEVICES = "/dev/video*"
INSTALL = "scripts/install-jetson.sh"


@dataclass
class Check:
    name: str
    status: str  # ok, missing, warn, skip
    detail: str
    fix: str | None = None
    required: bool = False

    @property
    def failed(self) -> bool:
        return self.required and self.status == "missing"


def _probe(cmd: list[str], timeout: float = 10) -> tuple[int, str] | None:
    """(exit status, stdout and stderr) of a command; None when it is not installed."""
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, str(exc)
    return out.returncode, (out.stdout + out.stderr).strip()


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < (3, 10):
        return Check(
            "python",
            "missing",
            f"Python {version}",
            "dmgrd-edge needs Python 3.10 or newer (JetPack 6 and 7 have it)",
            True,
        )
    return Check("python", "ok", f"Python {version} ({sys.executable})", required=True)


def check_numpy() -> Check:
    try:
        import numpy
    except ImportError as exc:
        return Check("numpy", "missing", str(exc), f"run {INSTALL}", True)
    return Check("numpy", "ok", f"numpy {numpy.__version__}", required=True)


def _cv2():
    """The cv2 module, or the reason it cannot be imported (a numpy 2 under an OpenCV built
    against numpy 1.x fails here with an ImportError or an AttributeError)."""
    try:
        return importlib.import_module("cv2"), None
    except Exception as exc:  # noqa: BLE001 - a broken binary module raises anything
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def check_opencv() -> Check:
    cv2, error = _cv2()
    if cv2 is None:
        fix = (
            "on a Jetson use JetPack's OpenCV (sudo apt install python3-opencv) in a venv made "
            f"with --system-site-packages and numpy<2 ({INSTALL} does both); elsewhere "
            "pip install opencv-python-headless"
        )
        if "numpy" in error.lower() or "_ARRAY_API" in error:
            fix = (
                "this OpenCV was built against numpy 1.x and numpy 2 is installed: "
                "pip install 'numpy<2' in this environment"
            )
        return Check("opencv", "missing", f"cv2 does not import ({error})", fix, True)
    where = getattr(cv2, "__file__", None)
    detail = f"OpenCV {cv2.__version__}" + (f" ({Path(where).parent})" if where else "")
    return Check("opencv", "ok", detail, required=True)


def check_gstreamer() -> Check:
    cv2, _ = _cv2()
    if cv2 is None:
        return Check("gstreamer", "warn", "cv2 does not import (see opencv)")
    found = re.search(r"GStreamer:\s*(\w+)", cv2.getBuildInformation())
    if found and found.group(1).upper() == "YES":
        return Check("gstreamer", "ok", "OpenCV has GStreamer (csi:// and gst:// sources work)")
    return Check(
        "gstreamer",
        "warn",
        "OpenCV is built without GStreamer: csi:// and gst:// sources cannot open",
        "use JetPack's OpenCV (python3-opencv) and remove pip's opencv-python(-headless): "
        "pip uninstall -y opencv-python opencv-python-headless",
    )


def check_tensorrt() -> Check:
    try:
        trt = import_tensorrt()
    except EngineError as exc:
        return Check("tensorrt", "missing", exc.problem, exc.fix, True)
    where = getattr(trt, "__file__", None)
    detail = f"TensorRT {trt.__version__}" + (f" ({Path(where).parent})" if where else "")
    return Check("tensorrt", "ok", detail, required=True)


def check_pycuda() -> Check:
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        nvcc = shutil.which("nvcc")
        where = (
            f"nvcc is {nvcc}"
            if nvcc
            else "nvcc is not on PATH: export PATH=/usr/local/cuda/bin:$PATH"
        )
        fix = f"pip install pycuda (it compiles against CUDA; {where}); {INSTALL} does this"
        return Check("pycuda", "missing", f"pycuda does not import ({exc})", fix, True)
    version = getattr(sys.modules.get("pycuda"), "VERSION_TEXT", None)
    driver = None
    try:
        cuda.init()
        driver = cuda.get_driver_version()
    except Exception:  # noqa: BLE001 - reported by the CUDA device check
        pass
    detail = f"pycuda {version or ''}".strip() + (f", CUDA driver {driver}" if driver else "")
    return Check("pycuda", "ok", detail, required=True)


def check_cuda_device() -> Check:
    try:
        import pycuda.driver as cuda
    except ImportError:
        return Check("cuda device", "missing", "pycuda is missing", "install pycuda first", True)
    try:
        name = gpu_name()
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        memory = device.total_memory() / 2**30
    except EngineError as exc:
        return Check("cuda device", "missing", exc.problem, exc.fix, True)
    except Exception as exc:  # noqa: BLE001 - any CUDA error
        return Check(
            "cuda device",
            "missing",
            f"CUDA device 0 cannot be queried ({exc})",
            "check the NVIDIA driver and that this user is in the group video",
            True,
        )
    detail = f"{name}, compute {major}.{minor}, {memory:.1f} GiB (engines are named after it)"
    return Check("cuda device", "ok", detail, required=True)


def check_cameras() -> list[Check]:
    devices = sorted(glob.glob(VIDEO_DEVICES))
    usable = [d for d in devices if os.access(d, os.R_OK | os.W_OK)]
    if not devices:
        v4l2 = Check(
            "usb/v4l2 cameras",
            "warn",
            f"no {VIDEO_DEVICES}",
            "plug in the camera; `v4l2-ctl --list-devices` (package v4l-utils) lists them",
        )
    elif len(usable) < len(devices):
        v4l2 = Check(
            "usb/v4l2 cameras",
            "warn",
            f"{', '.join(devices)}; not readable by this user: "
            f"{', '.join(sorted(set(devices) - set(usable)))}",
            "sudo usermod -aG video $USER, then log in again",
        )
    else:
        v4l2 = Check("usb/v4l2 cameras", "ok", ", ".join(devices))
    inspect = _probe(["gst-inspect-1.0", "nvarguscamerasrc"])
    if inspect is None:
        csi = Check(
            "csi camera element",
            "skip" if not TEGRA_RELEASE.is_file() else "warn",
            "gst-inspect-1.0 is not installed, nvarguscamerasrc unknown",
            "sudo apt install gstreamer1.0-tools (and nvidia-l4t-gstreamer on a Jetson)",
        )
    elif inspect[0] != 0:
        csi = Check(
            "csi camera element",
            "warn" if TEGRA_RELEASE.is_file() else "skip",
            "GStreamer has no nvarguscamerasrc (csi:// sources cannot open)",
            "on a Jetson: sudo apt install nvidia-l4t-gstreamer; check "
            "`systemctl status nvargus-daemon`",
        )
    else:
        csi = Check("csi camera element", "ok", "nvarguscamerasrc is installed")
    return [v4l2, csi]


def check_jetson() -> list[Check]:
    if not TEGRA_RELEASE.is_file():
        return [Check("jetson", "skip", f"not a Jetson (no {TEGRA_RELEASE})")]
    l4t = parse_l4t(TEGRA_RELEASE.read_text(errors="ignore"))
    release = Check("jetson", "ok", f"L4T {l4t}")
    found = re.match(r"R(\d+)", l4t)
    if found and int(found.group(1)) < 36:
        release = Check(
            "jetson",
            "missing",
            f"L4T {l4t} is JetPack 5 or older (TensorRT 8.5, Python 3.8): not supported",
            "flash JetPack 6 or 7 (L4T R36 or newer)",
            True,
        )
    result = _probe(["nvpmodel", "-q"])
    mode = parse_nvpmodel(result[1]) if result and result[0] == 0 else None
    if mode is None:
        power = Check(
            "power mode",
            "warn",
            "nvpmodel -q gave nothing" if result else "nvpmodel is not installed",
            "record the mode with `sudo nvpmodel -q` before benchmarks",
        )
    else:
        power = Check("power mode", "ok", f"{mode['mode']} (id {mode['id']})")
    clocks = jetson_clocks_state()
    known = not clocks.startswith("unknown")
    return [release, power, Check("clocks", "ok" if known else "warn", clocks.splitlines()[0])]


def run_checks() -> list[Check]:
    checks = [check_python(), check_numpy(), check_opencv(), check_gstreamer()]
    checks += [check_tensorrt(), check_pycuda(), check_cuda_device()]
    return checks + check_cameras() + check_jetson()


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.status:8s} {check.name:{width}s}  {check.detail}")
        if check.fix and check.status in ("missing", "warn"):
            lines.append(f"{'':8s} {'':{width}s}  fix: {check.fix}")
    failed = [c.name for c in checks if c.failed]
    lines.append(
        f"not ready: {', '.join(failed)} missing" if failed else "ready: every required part found"
    )
    return "\n".join(lines)


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
