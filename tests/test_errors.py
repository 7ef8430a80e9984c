"""Exit codes: one table in dmgrd_edge/errors.py, the same table in the README, and each
kind of error leaves the CLI with its own code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dmgrd_edge.errors import (
    MEANINGS,
    CheckpointError,
    ConfigError,
    DmgrdError,
    ExitCode,
    GuardError,
    TargetError,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_table() -> dict[int, str]:
    text = README.read_text()
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section, re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def test_readme_table_is_the_errors_table():
    assert set(MEANINGS) == set(ExitCode)
    assert _readme_table() == {int(code): text for code, text in MEANINGS.items()}


def test_codes_are_distinct_per_meaning():
    assert len({int(c) for c in ExitCode}) == len(ExitCode)
    assert ExitCode.SOURCE_LOST != ExitCode.INT8_MAX_DROP
    assert DmgrdError("x").exit_code == ConfigError("x").exit_code == ExitCode.BAD_INPUT
    assert CheckpointError("x").exit_code == ExitCode.BAD_INPUT
    assert TargetError("x").exit_code == ExitCode.IO
    assert GuardError("x").exit_code == ExitCode.INT8_MAX_DROP


def _manifest(met):
    return {
        "guard": {"max_drop_met": met},
        "files": {"model.int8-cpu.onnx": {"guard": {"max_drop_met": True}}},
    }


@pytest.mark.fault("INT8 accuracy bound missed (--max-drop)")
def test_a_missed_max_drop_is_its_own_error(tmp_path):
    pytest.importorskip("torch")
    from dmgrd_edge.export.pipeline import require_max_drop

    require_max_drop(_manifest(True), tmp_path, 1.0)
    require_max_drop({"guard": None, "files": {}}, tmp_path, None)  # no INT8 at all
    with pytest.raises(GuardError, match="misses --max-drop 1.0") as info:
        require_max_drop(_manifest(False), tmp_path, 1.0)
    assert info.value.exit_code == 5 and "manifest.json" in info.value.problem
    cpu_missed = _manifest(True)
    cpu_missed["files"]["model.int8-cpu.onnx"]["guard"]["max_drop_met"] = False
    with pytest.raises(GuardError):
        require_max_drop(cpu_missed, tmp_path, 1.0)


@pytest.mark.parametrize("error, code", [("GuardError", 5), ("ConfigError", 2), ("TargetError", 4)])
def test_the_cli_exits_with_the_errors_code(error, code):
    """main() turns each kind of error into its code, with error: and fix: lines."""
    program = (
        "import sys\n"
        "from dmgrd_edge import cli, errors\n"
        "def boom():\n"
        f"    raise errors.{error}('the problem', 'the fix')\n"
        "cli.app = boom\n"
        "cli.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    out = done.stdout + done.stderr
    assert done.returncode == code, out
    assert "error:" in out and "the problem" in out and "the fix" in out
