"""The stages depend one way (docs/ARCHITECTURE.md, "Dependencies"):

    core <- model <- train        core <- calib        core <- runtime
    export <- model, train (checkpoint loading only), calib, runtime (the backends only)
    workflow <- every stage (sweep and demo run them one after another); nothing imports
                workflow but the CLI

The core (dmgrd_edge's top-level modules and dmgrd_edge.data) imports no stage, except the
CLI, which wires the commands and may import any stage inside its command functions only.
Every import of every source file is checked: at module level, inside functions, under
TYPE_CHECKING, and importlib.import_module calls with a literal name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from stages import PACKAGES, Import, Source, imports_of, installed_sources, stage_of

# stage -> the stages its modules may import (itself included)
ALLOWED = {
    "core": {"core"},
    "model": {"core", "model"},
    "train": {"core", "model", "train"},
    "calib": {"core", "calib"},
    "runtime": {"core", "runtime"},
    "export": {"core", "model", "train", "calib", "runtime", "export"},
    "workflow": {"core", "model", "train", "calib", "runtime", "export", "workflow"},
}
# (stage, stage it imports) -> the only modules of the second it may import
ONLY = {
    ("export", "train"): {"dmgrd_edge.train.checkpoint"},
    ("export", "runtime"): {
        "dmgrd_edge.runtime.backend",
        "dmgrd_edge.runtime.onnx_backend",
        "dmgrd_edge.runtime.tensorrt_backend",
    },
}
# modules that may import any stage, but only inside functions
WIRING = {"dmgrd_edge.cli"}


def violation(imp: Import) -> str | None:
    """Why this import is against the order; None when it is allowed."""
    source, target = stage_of(imp.source), stage_of(imp.target)
    if target is None or target == source:
        return None
    where = f"{imp.source}:{imp.line} imports {imp.target}"
    if imp.source in WIRING:
        return None if imp.lazy else f"{where}: at module level, not inside a command function"
    if target not in ALLOWED[source]:
        return f"{where}: {source} may not import {target}"
    only = ONLY.get((source, target))
    if only is not None and imp.target not in only:
        return f"{where}: {source} may import only {sorted(only)} of {target}"
    return None


def violations(sources: dict[str, Source], texts: dict[str, str] | None = None) -> list[str]:
    known = set(sources)
    found = []
    for source in sources.values():
        for imp in imports_of(source, known, (texts or {}).get(source.name)):
            reason = violation(imp)
            if reason and reason not in found:  # once per line and module, not per name
                found.append(reason)
    return found


def all_imports(sources: dict[str, Source]) -> set[tuple[str, str, bool]]:
    known = set(sources)
    return {(i.source, i.target, i.lazy) for s in sources.values() for i in imports_of(s, known)}


def test_stages_import_one_way():
    problems = violations(installed_sources())
    assert not problems, "imports against the stage order:\n" + "\n".join(problems)


def test_every_stage_has_its_modules():
    """The map sees each stage's files (an empty map would pass the test above vacuously)."""
    sources = installed_sources()
    stages = {stage_of(name) for name in sources}
    assert stages == set(ALLOWED)
    for name, folder in [
        ("dmgrd_edge.train.loop", "train"),
        ("dmgrd_edge.calib.guard", "calib"),
        ("dmgrd_edge.export.pipeline", "export"),
        ("dmgrd_edge.runtime.select", "runtime"),
        ("dmgrd_edge.model.dmgrd", "model"),
        ("dmgrd_edge.data.synthesis", "data"),
        ("dmgrd_edge.workflow.sweep", "workflow"),
    ]:
        assert sources[name].path.parent.name == folder


def test_the_scan_sees_lazy_and_relative_imports():
    """Imports the order allows, found where they are: inside functions, relative, from-a-
    package-import-a-module."""
    found = all_imports(installed_sources())
    assert ("dmgrd_edge.export.pipeline", "dmgrd_edge.calib.guard", True) in found
    assert ("dmgrd_edge.export.pipeline", "dmgrd_edge.export.graph_check", False) in found
    assert ("dmgrd_edge.cli", "dmgrd_edge.train.runners", True) in found
    assert ("dmgrd_edge.train.checkpoint", "dmgrd_edge.model", True) in found
    assert ("dmgrd_edge.runtime.select", "dmgrd_edge.device", True) in found


def test_the_check_fails_on_imports_against_the_order(tmp_path):
    """The checker itself, on made-up modules: every kind of import against the order is
    reported, with the reason, and the allowed ones are not."""
    files = {
        "dmgrd_edge.runtime.sinks": "def f():\n"
        "    from dmgrd_edge.export.tensorrt_engine import x\n",
        "dmgrd_edge.calib.data": "from ..train import loop\n",
        "dmgrd_edge.metrics": "import dmgrd_edge.runtime.sinks\n",
        "dmgrd_edge.model.head": "from dmgrd_edge.train import losses\n",
        "dmgrd_edge.runtime.bench": "import importlib\n"
        "importlib.import_module('dmgrd_edge.calib')\n",
        "dmgrd_edge.export.deploy": "from dmgrd_edge.train.loop import TrainJob\n"
        "from dmgrd_edge.runtime.select import create_backend\n",
        "dmgrd_edge.cli": "from .train.trainer import train_category\n"
        "def run():\n    from .runtime.select import create_backend\n",
        "dmgrd_edge.train.prune": "from .loop import TrainJob\n"
        "from dmgrd_edge.model import DMGRD\n",
        "dmgrd_edge.export.pipeline": "from dmgrd_edge.calib.guard import run_onnx\n"
        "from dmgrd_edge.train.checkpoint import load_model\n"
        "from dmgrd_edge.runtime.onnx_backend import OnnxBackend\n",
        "dmgrd_edge.train.loop": "",
        "dmgrd_edge.train.losses": "",
        "dmgrd_edge.calib.guard": "",
    }
    sources = {name: Source(name, tmp_path / f"{name}.py", False) for name in files}
    found = violations(sources, files)
    assert [f.split(": ")[0] for f in found] == [
        "dmgrd_edge.runtime.sinks:2 imports dmgrd_edge.export.tensorrt_engine",
        "dmgrd_edge.calib.data:1 imports dmgrd_edge.train.loop",
        "dmgrd_edge.metrics:1 imports dmgrd_edge.runtime.sinks",
        "dmgrd_edge.model.head:1 imports dmgrd_edge.train.losses",
        "dmgrd_edge.runtime.bench:2 imports dmgrd_edge.calib",
        "dmgrd_edge.export.deploy:1 imports dmgrd_edge.train.loop",
        "dmgrd_edge.export.deploy:2 imports dmgrd_edge.runtime.select",
        "dmgrd_edge.cli:1 imports dmgrd_edge.train.trainer",
    ]
    assert found[0].endswith(": runtime may not import export")
    assert found[5].endswith(": export may import only ['dmgrd_edge.train.checkpoint'] of train")
    assert found[7].endswith(": at module level, not inside a command function")


def test_only_the_cli_imports_the_workflows(tmp_path):
    """The workflows sit on top: a stage importing one is reported, the CLI's lazy import
    and a workflow's imports of the stages are not."""
    files = {
        "dmgrd_edge.export.pipeline": "from dmgrd_edge.workflow.sweep import Sweep\n",
        "dmgrd_edge.train.trainer": "def f():\n    import dmgrd_edge.workflow.sweep\n",
        "dmgrd_edge.report": "from .workflow import sweep\n",
        "dmgrd_edge.cli": "def sweep():\n    from .workflow.sweep import run_sweep\n",
        "dmgrd_edge.workflow.sweep": "from dmgrd_edge.train.prune import PruneJob\n"
        "from dmgrd_edge.export.pipeline import export_bundle\n"
        "from dmgrd_edge.runtime.select import parse_workers\n",
        "dmgrd_edge.workflow": "",
        "dmgrd_edge.train.prune": "",
        "dmgrd_edge.runtime.select": "",
    }
    sources = {name: Source(name, tmp_path / f"{name}.py", False) for name in files}
    found = violations(sources, files)
    assert found == [
        "dmgrd_edge.export.pipeline:1 imports dmgrd_edge.workflow.sweep: "
        "export may not import workflow",
        "dmgrd_edge.train.trainer:2 imports dmgrd_edge.workflow.sweep: "
        "train may not import workflow",
        "dmgrd_edge.report:1 imports dmgrd_edge.workflow.sweep: core may not import workflow",
    ]


def test_the_map_covers_every_package_of_the_distribution():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert sorted(config["tool"]["setuptools"]["packages"]) == sorted(PACKAGES)
