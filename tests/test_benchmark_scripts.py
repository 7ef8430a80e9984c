"""Every benchmark script still loads against the package and reads its command line: each
one is imported as a script and its ``main`` asked for ``--help``, which must exit 0 and
describe the options. A moved or renamed name the script imports (at module level or in
``main`` before the arguments are read) fails here, not on the next measuring run. What a
benchmark measures is run by hand (docs/BENCHMARKS.md names each command)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def test_the_benchmark_folder_has_its_scripts():
    assert len(SCRIPTS) >= 20


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_a_benchmark_script_loads_and_reads_its_options(script, monkeypatch):
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look the module up
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code in (0, None)
    assert "usage:" in out.getvalue().lower() and "--" in out.getvalue()
