"""The layout promise: each stage imports, and the torch-free parts stay torch-free."""

import importlib
import subprocess
import sys

import pytest

STAGES = ["dmgrd_edge", "dmgrd_edge.train", "dmgrd_edge.calib", "dmgrd_edge.export", "dmgrd_edge.runtime",
          "dmgrd_edge.model", "dmgrd_edge.data"]

TORCH_FREE = ["dmgrd_edge", "dmgrd_edge.cli", "dmgrd_edge.config", "dmgrd_edge.data", "dmgrd_edge.data.datasets",
              "dmgrd_edge.data.synthetic", "dmgrd_edge.metrics", "dmgrd_edge.report", "dmgrd_edge.tradeoff",
              "dmgrd_edge.tradeoff_plot",
              "dmgrd_edge.viz",
              "dmgrd_edge.calib", "dmgrd_edge.runtime", "dmgrd_edge.data.synthesis"]


@pytest.mark.parametrize("name", STAGES)
def test_stage_imports(name):
    importlib.import_module(name)


def test_core_is_torch_free():
    code = ("import sys; sys.modules['torch'] = None\n"
            f"import importlib\nfor name in {TORCH_FREE!r}: importlib.import_module(name)\n"
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cli_help_without_torch():
    code = "import sys; sys.modules['torch'] = None\nsys.argv = ['dmgrd-edge', '--help']\nfrom dmgrd_edge.cli import main\nmain()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "eval" in result.stdout
