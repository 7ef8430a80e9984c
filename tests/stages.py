"""The stage map the layering and torch-free tests share: which installed module belongs to
which stage, and every import a source file makes (docs/ARCHITECTURE.md, "Dependencies").

Modules are found from the installed packages (``importlib``), so the map follows the
package-dir layout of pyproject.toml: ``dmgrd_edge.train`` is the folder ``train/``, and so on.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from dataclasses import dataclass
from pathlib import Path

# every package of the distribution (pyproject.toml, [tool.setuptools] packages)
PACKAGES = (
    "dmgrd_edge",
    "dmgrd_edge.data",
    "dmgrd_edge.model",
    "dmgrd_edge.train",
    "dmgrd_edge.calib",
    "dmgrd_edge.export",
    "dmgrd_edge.runtime",
    "dmgrd_edge.workflow",
)

# a module's stage: the longest of these prefixes it starts with
STAGE_PREFIXES = {
    "dmgrd_edge": "core",
    "dmgrd_edge.model": "model",
    "dmgrd_edge.train": "train",
    "dmgrd_edge.calib": "calib",
    "dmgrd_edge.export": "export",
    "dmgrd_edge.runtime": "runtime",
    "dmgrd_edge.workflow": "workflow",
}


def stage_of(module: str) -> str | None:
    """The stage a module of the distribution belongs to; None for any other module."""
    matches = [p for p in STAGE_PREFIXES if module == p or module.startswith(p + ".")]
    return STAGE_PREFIXES[max(matches, key=len)] if matches else None


@dataclass(frozen=True)
class Source:
    name: str  # dotted module name
    path: Path
    is_package: bool  # an __init__.py: relative imports resolve against the module itself


def installed_sources(packages=PACKAGES) -> dict[str, Source]:
    """Every module of ``packages`` as installed, by name. Raises when a package holds a
    subpackage that is not in ``packages`` (it would not be installed, nor checked)."""
    sources: dict[str, Source] = {}
    for package in packages:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin, f"{package} is not importable"
        sources[package] = Source(package, Path(spec.origin), True)
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            name = f"{package}.{info.name}"
            if info.ispkg:
                assert name in packages, f"{name} is a package missing from the stage map"
                continue
            path = Path(info.module_finder.path) / f"{info.name}.py"
            assert path.is_file(), f"{name}: expected source at {path}"
            sources[name] = Source(name, path, False)
    return sources


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (for ``from X import y``: X.y when that is a module)
    line: int
    lazy: bool  # inside a function (runs when the function is called)


def _resolve(source: Source, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = source.name.split(".")
    base = parts if source.is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(source: Source, known: set[str], text: str | None = None) -> list[Import]:
    """Every import in the file, at module level or inside functions, including
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    tree = ast.parse(source.path.read_text() if text is None else text, str(source.path))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(source.name, a.name, node.lineno, lazy) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(source, node.module, node.level)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(source.name, sub if sub in known else base, node.lineno, lazy))
        elif isinstance(node, ast.Call) and node.args:
            func, first = node.func, node.args[0]
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if (
                name in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and not first.value.startswith(".")
            ):
                found.append(Import(source.name, first.value, node.lineno, lazy))
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found
