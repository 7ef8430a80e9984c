"""The backbone and dataset choices come from the registries (dmgrd_edge/registry.py): the
command line's help lists them, its checks take what is registered, and a name registered
later is a valid choice without another edit."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from dmgrd_edge import registry
from dmgrd_edge.cli import app
from dmgrd_edge.errors import ConfigError, DataError

BACKBONE_OPTIONS = {("train", "backbone"), ("sweep", "backbones")}
DATASET_OPTIONS = {
    ("train", "dataset"),
    ("eval", "dataset"),
    ("prune", "dataset"),
    ("export", "calib_dataset"),
    ("bench", "dataset"),
    ("sweep", "dataset"),
}


def _options():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            yield name, param


def test_the_help_lists_the_registries():
    found_backbones, found_datasets = set(), set()
    for command, param in _options():
        where = (command, param.name)
        text = param.help or ""
        if ", ".join(registry.TEACHERS) in text:
            found_backbones.add(where)
        if ", ".join(registry.LAYOUTS) in text:
            found_datasets.add(where)
    assert found_backbones == BACKBONE_OPTIONS
    assert found_datasets == DATASET_OPTIONS


@pytest.fixture
def tiny_teacher(monkeypatch):
    spec = registry.TeacherSpec(
        name="tiny_teacher",
        channels=(8, 16, 32),
        strides=(4, 8, 16),
        family="mbconv",
        weights=registry.TorchvisionWeights("tiny.pth", "TinyWeights", "IMAGENET1K_V1"),
    )
    monkeypatch.setitem(registry.TEACHERS, spec.name, spec)
    return spec


def _train(*args: str):
    return CliRunner().invoke(app, ["train", "--data", "no-such-root", *args])


def test_a_registered_teacher_is_a_valid_choice(tiny_teacher, tmp_path):
    from dmgrd_edge.options import SweepConfig

    refused = _train("--backbone", "not_registered")
    assert isinstance(refused.exception, ConfigError)
    assert "unknown backbone" in refused.exception.problem
    assert "tiny_teacher" in refused.exception.fix  # the fix lists what is registered
    taken = _train("--backbone", "tiny_teacher")  # past the check, stopped by the data
    assert isinstance(taken.exception, DataError), taken.output
    assert "dataset root not found" in taken.exception.problem
    SweepConfig(data=str(tmp_path), category="c", backbones=("tiny_teacher",)).validate()
    listing = CliRunner().invoke(app, ["backbones"])
    assert "tiny_teacher" in listing.output and "channels=(8, 16, 32)" in listing.output


def test_a_registered_layout_is_a_valid_choice(monkeypatch):
    refused = _train("--dataset", "new_layout")
    assert isinstance(refused.exception, ConfigError) and "unknown dataset" in str(
        refused.exception.problem
    )
    monkeypatch.setitem(registry.LAYOUTS, "new_layout", "ROOT/<category>/...")
    taken = _train("--dataset", "new_layout")
    assert isinstance(taken.exception, DataError), taken.output
    assert "expected the new_layout layout" in taken.exception.fix


def test_every_teacher_has_a_network_and_the_listing_needs_no_torch():
    from dmgrd_edge.model.backbones import BACKBONES, BUILDERS

    assert list(BACKBONES) == list(registry.TEACHERS) and set(BUILDERS) == set(registry.TEACHERS)
    code = (
        "import sys; sys.modules['torch'] = None\nsys.argv = ['dmgrd-edge', 'backbones']\n"
        "from dmgrd_edge.cli import main\nmain()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(registry.TEACHERS)
