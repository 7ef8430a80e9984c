"""Style rules the tree keeps: no line over 100 columns (ruff E501, the line length set in
pyproject.toml) in any file ruff sees, tests and benchmarks included; no function in the
package longer than 60 lines."""

from __future__ import annotations

import ast
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


MAX_FUNCTION_LINES = 60
PACKAGE = ["dmgrd_edge", "train", "calib", "export", "runtime"]


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from a function's first statement after its docstring to its end: the
    signature (a typer command's option declarations) is not counted."""
    body = node.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for folder in PACKAGE:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = _body_lines(node)
                    if lines > limit:
                        where = f"{path.relative_to(root)}:{node.lineno}"
                        found.append(f"{where} {node.name}: {lines} lines")
    return found


def test_no_function_over_60_lines():
    assert long_functions(ROOT) == [], "split these into named steps"


def test_the_length_check_sees_a_long_function(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES + 1))
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "m.py").write_text(
        f'def short():\n    """doc"""\n    return 1\n\n\ndef long():\n    """doc"""\n{body}'
    )
    assert [f.split()[1] for f in long_functions(tmp_path)] == ["long:"]
