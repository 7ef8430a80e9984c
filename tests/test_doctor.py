"""`dmgrd-edge doctor`: on this machine (no TensorRT) and with the strict fakes standing in for
a Jetson's TensorRT, pycuda and tools (real executables on PATH, real files)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import subprocess
import sys

import pytest

from dmgrd_edge.runtime import doctor
from fakes import installed  # tests/fakes


def status(checks, name):
    (found,) = [c for c in checks if c.name == name]
    return found


def tool(folder, name: str, text: str, code: int = 0) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}\nEOF\nexit {code}\n")
    path.chmod(0o755)


@pytest.fixture
def jetson(tmp_path, monkeypatch):
    """A pretend Jetson: L4T release file, board model, a camera node, nvpmodel and
    gst-inspect-1.0 on PATH (shell scripts printing what the real tools print)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool(bin_dir, "nvpmodel", "NV Power Mode: MAXN\n0")
    tool(bin_dir, "gst-inspect-1.0", "Factory Details:\n  Long-name  NvArgusCameraSrc")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic, EABI: aarch64\n")
    monkeypatch.setattr(doctor, "TEGRA_RELEASE", release)
    model = tmp_path / "model"
    model.write_text("NVIDIA Jetson AGX Orin Developer Kit\x00")
    monkeypatch.setattr("dmgrd_edge.device.BOARD_MODEL", model)
    (tmp_path / "video0").write_bytes(b"")
    monkeypatch.setattr(doctor, "VIDEO_DEVICES", str(tmp_path / "video*"))
    return tmp_path


@pytest.mark.fault("software, weights or device missing")
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_here_it_says_tensorrt_is_missing_and_how_to_fix_it():
    out = subprocess.run(
        [sys.executable, "-m", "dmgrd_edge.cli", "doctor"], capture_output=True, text=True
    )
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    (line,) = [i for i, text in enumerate(lines) if text.startswith("missing  tensorrt")]
    assert "TensorRT is not installed" in lines[line]
    assert "fix:" in lines[line + 1] and "python3-libnvinfer" in lines[line + 1]
    assert lines[-1].startswith("not ready: tensorrt")
    records = json.loads(
        subprocess.run(
            [sys.executable, "-m", "dmgrd_edge.cli", "doctor", "--json"],
            capture_output=True,
            text=True,
        ).stdout
    )
    assert {r["name"]: r["status"] for r in records}["tensorrt"] == "missing"


@pytest.mark.parametrize("version", ["8.6.2.3", "10.3.0", "11.1.0"])
def test_with_the_fakes_on_a_pretend_jetson_everything_required_is_found(version, jetson):
    with installed(version):
        checks = doctor.run_checks()
    assert not [c.name for c in checks if c.failed]
    assert status(checks, "tensorrt").detail.startswith(f"TensorRT {version}")
    device = status(checks, "cuda device")
    assert device.status == "ok"
    assert device.detail.startswith("Orin (NVIDIA Jetson AGX Orin Developer Kit), compute 8.7")
    assert status(checks, "jetson").detail == "L4T R36.4.0"
    assert status(checks, "power mode").detail == "MAXN (id 0)"
    assert status(checks, "csi camera element").status == "ok"
    assert status(checks, "usb/v4l2 cameras").detail == str(jetson / "video0")
    assert doctor.render(checks).endswith("ready: every required part found")


@pytest.mark.fault("platform or library version not supported")
def test_jetpack_5_and_tensorrt_8_5_are_refused_with_the_fix(jetson):
    (jetson / "nv_tegra_release").write_text("# R35 (release), REVISION: 4.1, GCID: 1\n")
    with installed("8.5.2.2"):
        checks = doctor.run_checks()
    assert status(checks, "jetson").failed and "flash JetPack 6" in status(checks, "jetson").fix
    trt = status(checks, "tensorrt")
    assert trt.failed and "8.5.2.2 is too old" in trt.detail and "JetPack 5" in trt.fix


@pytest.mark.fault("software, weights or device missing")
def test_missing_tools_and_cameras_are_warnings_with_fixes(jetson, monkeypatch):
    tool(jetson / "bin", "gst-inspect-1.0", "No such element or plugin 'nvarguscamerasrc'", 1)
    (jetson / "bin" / "nvpmodel").unlink()
    (jetson / "video0").unlink()
    with installed("10.3.0"):
        checks = doctor.run_checks()
    for name, fix in (
        ("csi camera element", "nvidia-l4t-gstreamer"),
        ("power mode", "nvpmodel"),
        ("usb/v4l2 cameras", "v4l2-ctl"),
    ):
        assert status(checks, name).status == "warn" and fix in status(checks, name).fix
    assert not [c.name for c in checks if c.failed]  # none of them is required


class RefuseCv2(importlib.abc.MetaPathFinder):
    """cv2 failing as JetPack's OpenCV (built against numpy 1.x) fails under numpy 2."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "cv2":
            raise ImportError("numpy.core.multiarray failed to import")
        return None


@pytest.mark.fault("platform or library version not supported")
def test_an_opencv_broken_by_numpy_2_is_named_with_the_numpy_fix(monkeypatch):
    monkeypatch.delitem(sys.modules, "cv2", raising=False)
    monkeypatch.setattr(sys, "meta_path", [RefuseCv2(), *sys.meta_path])
    check = doctor.check_opencv()
    assert check.failed and "numpy.core.multiarray" in check.detail
    assert "numpy<2" in check.fix
    assert doctor.check_gstreamer().status == "warn"
