"""The layout promise: each stage imports, and the torch-free parts stay torch-free."""

import importlib
import json
import subprocess
import sys

import pytest
from stages import installed_sources, stage_of

STAGES = [
    "dmgrd_edge",
    "dmgrd_edge.train",
    "dmgrd_edge.calib",
    "dmgrd_edge.export",
    "dmgrd_edge.runtime",
    "dmgrd_edge.model",
    "dmgrd_edge.data",
    "dmgrd_edge.workflow",
]

# beyond the core, calib and runtime: the engine builder and what it imports, so that
# `dmgrd-edge build-engine` runs on the Jetson
EXPORT_TORCH_FREE = [
    "dmgrd_edge.export",
    "dmgrd_edge.export.tensorrt_engine",
    "dmgrd_edge.export.precision",
    "dmgrd_edge.export.graph_check",
    "dmgrd_edge.export.typed_int8",
]
# the workflows import the stages that need torch inside their functions only, so that
# `dmgrd-edge sweep --help` and `demo --help` work where torch is not installed
WORKFLOW_TORCH_FREE = [
    "dmgrd_edge.workflow",
    "dmgrd_edge.workflow.sweep",
    "dmgrd_edge.workflow.demo",
]

# imports each module named in NAMES with every import of torch refused, and prints a JSON
# object: module -> the end of its traceback, for each module that failed
IMPORT_WITHOUT_TORCH = """
import importlib, importlib.abc, json, sys, traceback


class RefuseTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test (import of {name!r})")
        return None


assert "torch" not in sys.modules, "torch was imported before the test could block it"
sys.meta_path.insert(0, RefuseTorch())
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the block did not stop `import torch`")
failed = {}
for name in NAMES:
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc(limit=-4)
print(json.dumps(failed))
"""


def torch_free_modules() -> list[str]:
    """Every module of the core (all of dmgrd_edge but dmgrd_edge.model), calib and runtime,
    found from the installed packages, and the engine builder's."""
    names = [n for n in installed_sources() if stage_of(n) in ("core", "calib", "runtime")]
    return sorted(names) + EXPORT_TORCH_FREE + WORKFLOW_TORCH_FREE


def imports_without_torch(names: list[str]) -> dict[str, str]:
    """Imports ``names`` in a fresh interpreter where torch cannot be imported; the modules
    that failed, with the end of their tracebacks."""
    code = f"NAMES = {names!r}\n" + IMPORT_WITHOUT_TORCH
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", STAGES)
def test_stage_imports(name):
    importlib.import_module(name)


def test_core_is_torch_free():
    """Every module of the core, calib and runtime imports with torch unimportable."""
    names = torch_free_modules()
    assert {
        "dmgrd_edge.cli",
        "dmgrd_edge.options",
        "dmgrd_edge.registry",
        "dmgrd_edge.data.synthesis",
        "dmgrd_edge.device",
        "dmgrd_edge.inference",
        "dmgrd_edge.calib.guard",
        "dmgrd_edge.calib.quantize",
        "dmgrd_edge.runtime.pipeline",
        "dmgrd_edge.runtime.tensorrt_backend",
    } <= set(names)
    failed = imports_without_torch(names)
    assert not failed, "imports torch (or fails) without it:\n" + "\n".join(
        f"{name}:\n{trace}" for name, trace in failed.items()
    )


def test_the_torch_block_refuses_torch():
    """The block really stops torch: a module that needs it fails there, one that does not
    imports."""
    failed = imports_without_torch(["dmgrd_edge.model.dmgrd", "dmgrd_edge.config"])
    assert list(failed) == ["dmgrd_edge.model.dmgrd"]
    assert "torch is blocked in this test" in failed["dmgrd_edge.model.dmgrd"]


def test_cli_help_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\nsys.argv = ['dmgrd-edge', '--help']\n"
        "from dmgrd_edge.cli import main\nmain()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "eval" in result.stdout
