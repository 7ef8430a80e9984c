"""README.md's CLI reference is the live CLI's (regenerate with
`python -m dmgrd_edge.cli_reference --write README.md`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer.main

from dmgrd_edge.cli import app
from dmgrd_edge.cli_reference import END, START, differences, reference, replace_section

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_reference_is_the_live_cli():
    diff = differences(README.read_text())
    assert not diff, (
        "README.md's CLI reference differs from the CLI; regenerate it with "
        "`python -m dmgrd_edge.cli_reference --write README.md`:\n" + "\n".join(diff[:60])
    )


def test_the_reference_covers_every_command_and_option():
    text = reference()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"#### `dmgrd-edge {name}`" in text
        for param in command.params:
            if param.param_type_name == "option":
                assert f"`{' / '.join(param.opts + param.secondary_opts)}`" in text, param.opts
    assert text.startswith(START) and text.endswith(END)
    assert "| `--ratios` | `0` | comma list of pruning ratios (0: not pruned) |" in text


def test_a_stale_reference_is_found_and_rewritten(tmp_path):
    stale = README.read_text().replace("| `--ratios` | `0` |", "| `--ratios` | `0.5` |")
    assert stale != README.read_text()
    diff = differences(stale)
    assert any(line.startswith("-| `--ratios` | `0.5` |") for line in diff)
    assert differences("no section here") and "no CLI reference" in differences("x")[0]
    path = tmp_path / "README.md"
    path.write_text(stale)
    check = [sys.executable, "-m", "dmgrd_edge.cli_reference", "--check", str(path)]
    assert subprocess.run(check, capture_output=True).returncode == 1
    write = [sys.executable, "-m", "dmgrd_edge.cli_reference", "--write", str(path)]
    assert subprocess.run(write, capture_output=True).returncode == 0
    assert path.read_text() == README.read_text()
    assert subprocess.run(check, capture_output=True).returncode == 0
    assert replace_section(stale, reference()) == README.read_text()
