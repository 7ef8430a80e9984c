"""Style rules the tree keeps: no line over 100 columns (ruff E501, the line length set in
pyproject.toml), checked on every file ruff sees, tests and benchmarks included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_is_installed():
    done = _ruff("--version")
    assert done.returncode == 0, f"ruff is missing: pip install -e '.[dev]'\n{done.stderr}"


def test_no_line_over_100_columns():
    done = _ruff("check", "--select", "E501", "--output-format", "concise", ".")
    assert done.returncode == 0, f"lines over 100 columns:\n{done.stdout}{done.stderr}"


def test_the_check_sees_a_long_line(tmp_path):
    """The same command on a file with one 101-column line fails (so the test above can)."""
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    (tmp_path / "long.py").write_text("x = '" + "a" * 95 + "'\n")  # 101 columns
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "E501", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "E501" in done.stdout
