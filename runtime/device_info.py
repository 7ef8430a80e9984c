"""What the measurements ran on: CPU, GPU, library versions and, on a Jetson, the L4T
release, power mode and clock state. Torch-free; every probe is optional."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path


def _run(cmd: list[str]) -> tuple[int, str] | None:
    """(exit status, stdout or else stderr) of a probe; None when it is not installed or
    cannot be started."""
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.returncode, (out.stdout or out.stderr).strip()


def _output(cmd: list[str]) -> str | None:
    """A probe's output when it ran and succeeded, else None."""
    result = _run(cmd)
    if result is None or result[0] != 0:
        return None
    return result[1] or None


def jetson_clocks_state(euid: int | None = None) -> str:
    """`jetson_clocks --show`, which reads the clock settings only as root. Without root, or
    when it fails, the record says the state is unknown and why, instead of keeping the
    tool's error text as if it were the clock state."""
    if (os.geteuid() if euid is None else euid) != 0:
        return (
            "unknown (jetson_clocks --show needs root: run `sudo jetson_clocks --show` to see "
            "the clocks)"
        )
    result = _run(["jetson_clocks", "--show"])
    if result is None:
        return "unknown (jetson_clocks is not installed)"
    code, text = result
    if code != 0 or not text:
        first = text.splitlines()[0] if text else "no output"
        return f"unknown (jetson_clocks --show failed with exit status {code}: {first[:200]})"
    return text[:4000]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_l4t(text: str) -> str:
    """First line of /etc/nv_tegra_release ("# R35 (release), REVISION: 4.1, ...") -> "R35.4.1";
    the line itself when it has another form."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    found = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", line)
    return f"R{found.group(1)}.{found.group(2)}" if found else line.lstrip("# ").strip()


def parse_nvpmodel(text: str | None) -> dict | None:
    """`nvpmodel -q` ("NV Power Mode: MAXN" then the mode number) -> {"mode": .., "id": ..}."""
    if not text:
        return None
    name = re.search(r"NV Power Mode:\s*(.+)", text)
    number = re.search(r"^\s*(\d+)\s*$", text, re.MULTILINE)
    return {
        "mode": name.group(1).strip() if name else None,
        "id": int(number.group(1)) if number else None,
        "raw": text[:500],
    }


def device_info() -> dict:
    info: dict = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    try:
        import pycuda.driver as cuda

        cuda.init()
        info["cuda_driver"] = str(cuda.get_driver_version())
    except Exception:  # noqa: BLE001
        info["cuda_driver"] = None
    from dmgrd_edge.device import EngineError, gpu_name

    try:
        info["gpu"] = gpu_name()  # the name engines are built and matched with
    except EngineError:
        info["gpu"] = None  # no pycuda or no CUDA device
    release = Path("/etc/nv_tegra_release")
    if release.is_file():
        info["jetson"] = {
            "l4t": parse_l4t(release.read_text()),
            "nvpmodel": parse_nvpmodel(_output(["nvpmodel", "-q"])),
            "jetson_clocks": jetson_clocks_state(),
        }
        temps = sorted(Path("/sys/devices/virtual/thermal").glob("thermal_zone*/temp"))
        info["jetson"]["temperatures_c"] = {
            p.parent.name: int(p.read_text()) / 1000 for p in temps if p.is_file()
        }
    return info
