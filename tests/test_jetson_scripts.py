"""The Jetson shell scripts and the systemd unit: syntax, shellcheck where installed, the
install script's refusals and package lists, and the one-shot validation script run end to
end here with the strict TensorRT/pycuda fakes standing in (injected into every Python
process it starts through a sitecustomize module). None of it has run on a real Jetson."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install-jetson.sh"
CHECK = ROOT / "benchmarks" / "jetson_check.sh"
SCRIPTS = [INSTALL, CHECK]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
    out = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def install(tmp_path, env: dict, *args):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env}
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.fault("platform or library version not supported")
def test_install_refuses_a_machine_that_is_not_a_jetson(tmp_path):
    out = install(tmp_path, {"DMGRD_ARCH": "x86_64"})
    assert out.returncode == 2
    assert "error: this is x86_64, not a Jetson (aarch64)" in out.stderr
    out = install(tmp_path, {"DMGRD_ARCH": "aarch64", "TEGRA_RELEASE": str(tmp_path / "none")})
    assert out.returncode == 2 and "not a Jetson with JetPack" in out.stderr
    assert not (tmp_path / "dmgrd-venv").exists()


@pytest.mark.fault("platform or library version not supported")
def test_install_refuses_jetpack_5(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    out = install(tmp_path, {"DMGRD_ARCH": "aarch64", "TEGRA_RELEASE": str(release)})
    assert out.returncode == 2
    assert "L4T R35 is JetPack 5 or older" in out.stderr and "flash JetPack 6" in out.stderr
    assert not (tmp_path / "dmgrd-venv").exists()


@pytest.mark.fault("software, weights or device missing")
@pytest.mark.skipif(
    subprocess.run(["/usr/bin/python3", "-c", "import tensorrt"], capture_output=True).returncode
    == 0,
    reason="the system Python has TensorRT here",
)
def test_install_names_the_missing_jetpack_packages_before_changing_anything(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic\n")
    out = install(tmp_path, {"DMGRD_ARCH": "aarch64", "TEGRA_RELEASE": str(release)})
    assert out.returncode == 2, out.stderr
    assert "L4T R36 (JetPack 6)" in out.stdout
    assert "missing: TensorRT for Python (python3-libnvinfer)" in out.stderr
    assert "sudo apt-get install nvidia-jetpack" in out.stderr
    assert not (tmp_path / "dmgrd-venv").exists()


def bash_array(name: str, text: str) -> list[str]:
    body = re.search(rf"^{name}=\((.*?)\)", text, re.MULTILINE | re.DOTALL).group(1)
    return [item.strip('"') for item in body.split()]


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0].lower()


def test_install_lists_account_for_every_dependency():
    """Each pyproject dependency is either installed by the script or named as skipped."""
    text = INSTALL.read_text()
    installed = {requirement_name(s) for s in bash_array("RUNTIME_PACKAGES", text)}
    skipped = {requirement_name(s) for s in bash_array("SKIPPED_PACKAGES", text)}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dependencies = {requirement_name(s) for s in project["dependencies"]}
    assert installed | skipped == dependencies and not installed & skipped
    assert {"torch", "opencv-python-headless", "numpy"} <= skipped  # JetPack's, or not needed
    assert "pycuda" in requirement_name(
        re.search(r'pip install --quiet "(pycuda[^"]*)"', text).group(1)
    )


def test_systemd_unit_restarts_the_runtime():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "scripts" / "dmgrd-edge.service")
    service = unit["Service"]
    assert service["Restart"] == "on-failure" and int(service["RestartSec"]) > 0
    command = service["ExecStart"].split()
    assert command[1:3] == ["run", "/home/line/bundle"] and "--headless" in command
    assert not any(arg.endswith(".avi") for arg in command)  # a recording refuses a restart
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.fault("bundle file tampered, truncated or not a bundle")
def test_check_refuses_a_folder_that_is_no_bundle(tmp_path):
    out = subprocess.run(
        ["bash", str(CHECK), str(tmp_path), str(tmp_path / "out")], capture_output=True, text=True
    )
    assert out.returncode == 2 and "is no bundle (no manifest.json)" in out.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, trained_ckpt):
    from dmgrd_edge.export.pipeline import export_bundle

    from dmgrd_edge.options import BatchProfile, ExportOptions

    out = tmp_path_factory.mktemp("jetson") / "bundle"
    options = ExportOptions(
        checkpoint=trained_ckpt,
        out=out,
        int8=True,
        fp16=True,
        calib_count=4,
        guard_count=4,
        int8_cpu=False,
        batch=BatchProfile(1, 4, 8),
    )
    export_bundle(options, log=lambda _: None)
    return out


# the fakes for the whole life of each Python process the script starts (as the real
# modules would be: nothing to restore at exit)
SITECUSTOMIZE = """
import os, sys
sys.path.insert(0, {tests!r})
from fakes import FakeGPU, fake_pycuda, fake_tensorrt
_gpu = FakeGPU()
_cuda = fake_pycuda.FakePycuda(_gpu)
sys.modules.update({{"tensorrt": fake_tensorrt.make(os.environ["FAKE_TENSORRT"], _gpu)}})
sys.modules.update(_cuda.modules())
sys.meta_path.insert(0, _cuda.finder)
"""


@pytest.mark.slow
def test_check_runs_end_to_end_through_the_fakes(bundle, line_root, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(tests=str(ROOT / "tests")))
    before = (bundle / "manifest.json").read_bytes()
    out = tmp_path / "results"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(site),
        "FAKE_TENSORRT": "10.3.0",
        "DATA": str(line_root),
        "BATCHES": "1,4",
        "RUNS": "2",
        "FRAMES": "24",
        "PYTEST_TENSORRT": "0",
    }
    run = subprocess.run(
        ["bash", str(CHECK), str(bundle), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    summary = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()[1:]]
    failed = {row[0]: out / "logs" / f"{row[0]}.log" for row in summary if row[1] != "0"}
    failed = {k: v for k, v in failed.items() if k not in ("jetson-clocks", "pytest-tensorrt")}
    logs = {k: v.read_text()[-2000:] for k, v in failed.items() if v.is_file()}
    assert run.returncode == 0 and not failed, (run.stdout[-2000:], run.stderr[-2000:], logs)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    steps = {row[0]: row[1] for row in summary}
    for step in ("doctor", "device", "build-engine-fp16", "build-engine-int8", "run", "report"):
        assert steps[step] == "0"
    assert steps["pytest-tensorrt"] == steps["jetson-clocks"] == "skipped"
    doctor = {c["name"]: c["status"] for c in json.loads((out / "doctor.json").read_text())}
    assert doctor["tensorrt"] == doctor["cuda device"] == "ok"
    for precision in ("fp16", "int8"):
        result = json.loads((out / "bench" / f"bench_tensorrt_{precision}.json").read_text())
        assert result["backend"]["backend"] == "tensorrt"
        assert [r["batch"] for r in result["latency"]] == [1, 4] and "accuracy" in result
    events = (out / "run" / "events.jsonl").read_text().splitlines()
    truth = json.loads((out / "run" / "truth.json").read_text())["defect"]
    assert len(events) == len(truth) == 24
    assert (out / "report" / "report.md").is_file() and (tmp_path / "results.tar.gz").is_file()
    assert (bundle / "manifest.json").read_bytes() == before  # the bundle given is untouched
