"""Check the project's use of the ``tensorrt`` Python API, and the test fakes, against the
real bindings of each TensorRT version.

Three parts:

``extract VERSION ...`` (needs network access to PyPI, a C compiler and ``pyelftools``)
    Downloads the bindings wheel of each version (``tensorrt-bindings`` for 8.6,
    ``tensorrt-cu12-bindings`` for 10.x and 11.x; the wheel for this Python on x86-64 Linux)
    and records what its module offers: every module attribute, every class with its members
    (methods with their parameter names and return type, properties with their type and
    whether they can be set), every enum with its members and their values. The libraries the
    bindings link against (``libnvinfer``, ``libnvonnxparser``, ``libnvinfer_plugin``) are not
    on PyPI as real wheels, so the tool compiles a stand-in for each that defines the handful of
    C entry points the bindings' ELF file lists as undefined (read with pyelftools) and does
    nothing else. Importing the bindings package then runs its real pybind11 registration
    code and its ``__init__.py``, so the record is the Python surface exactly as a Jetson
    sees it; nothing that needs a GPU is called. Writes one JSON file per version into
    ``tests/data/trt_api/``. (Scanning the ``.so`` for strings was tried first and gives no
    reliable answer: the linker stores ``precision`` as the tail of ``reset_precision``, and
    a name cannot be tied to its class.)

``used``
    Lists every ``tensorrt`` attribute the project's packages use, found by a static walk of
    their syntax trees: values known to be the tensorrt module (``import tensorrt``, the
    result of ``import_tensorrt()``, a parameter called ``trt``, ``self.trt``), then the type
    of every value derived from it, taken from the recorded bindings: a class called gives an
    instance, a method its declared return type, a property its type, a list comprehension
    and a ``for`` loop over typed elements their element type; ``self.x`` attributes are
    followed within a class, and arguments flow into the parameters of functions of the same
    module. Each use is an attribute read, an attribute write (needs a settable property), a
    keyword argument (needs a parameter of that name) or a ``hasattr``/``getattr`` probe
    (marked guarded). A method called on a value whose type the walk cannot follow is not
    seen; the fake-TensorRT tests, whose fakes this tool checks too, cover those calls.

``check``
    The table per version: the project's uses found / missing, the fakes' public names found
    / missing, and enum values that differ between a fake and the real bindings.
    ``tests/test_trt_api_surface.py`` runs the same comparison on the committed JSON files.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "trt_api"
PACKAGES = ("dmgrd_edge", "export", "runtime", "calib", "train")
# versions recorded: JetPack 6.0 ships 8.6.2 (same API as 8.6.1, the 8.6 wheel on PyPI),
# JetPack 6.1/6.2 ship 10.3, JetPack 7 ships 10.x/11.x
VERSIONS = ("8.6.1", "10.3.0", "10.16.1.11", "11.1.0.106", "11.4.0.106")
# the fakes' versions (tests/fakes/__init__.py VERSIONS) -> the recorded version they follow
FAKE_REFERENCE = {"8.6.2.3": "8.6.1", "10.3.0": "10.3.0", "11.1.0": "11.1.0.106"}
MODULE = "<module>"
MODULE_DUNDERS = {"__file__", "__name__", "__path__", "__doc__"}  # every module has them


# -- extract --------------------------------------------------------------------------------


def wheel_package(version: str) -> str:
    return "tensorrt-bindings" if version.startswith("8.") else "tensorrt-cu12-bindings"


def download(version: str, into: Path) -> Path:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python, "-d", str(into)]
    for platform in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64"):
        command += ["--platform", platform]
    subprocess.run(command + [f"{wheel_package(version)}=={version}"], check=True)
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel for {version} in {into}, found {wheels}")
    return wheels[0]


def undefined_c_symbols(so: Path) -> tuple[list[str], list[str]]:
    """(C functions the bindings import from NVIDIA's libraries, the libnv* sonames needed)."""
    from elftools.elf.dynamic import DynamicSection  # noqa: PLC0415
    from elftools.elf.elffile import ELFFile  # noqa: PLC0415

    with so.open("rb") as handle:
        elf = ELFFile(handle)
        needed = [
            tag.needed
            for section in elf.iter_sections()
            if isinstance(section, DynamicSection)
            for tag in section.iter_tags()
            if tag.entry.d_tag == "DT_NEEDED" and tag.needed.startswith("libnv")
        ]
        table = elf.get_section_by_name(".dynsym")
        versioned = elf.get_section_by_name(".gnu.version")
        names = []
        for index, symbol in enumerate(table.iter_symbols()):
            if symbol["st_shndx"] != "SHN_UNDEF" or not symbol.name:
                continue
            if symbol["st_info"]["bind"] != "STB_GLOBAL":
                continue
            if versioned is not None and versioned.get_symbol(index)["ndx"] not in (
                "VER_NDX_GLOBAL",
                "VER_NDX_LOCAL",
            ):
                continue  # glibc, libstdc++, libgcc: versioned
            if symbol.name.startswith(("Py", "_Py", "_ZN8pybind11")):
                continue  # the Python C API, resolved by the interpreter
            names.append(symbol.name)
    return sorted(names), needed


def build_stand_ins(so: Path, into: Path) -> None:
    symbols, needed = undefined_c_symbols(so)
    source = into / "stand_in.c"
    source.write_text("".join(f"long {name}(void) {{ return 0; }}\n" for name in symbols))
    for soname in needed:
        subprocess.run(
            [
                "cc",
                "-shared",
                "-fPIC",
                f"-Wl,-soname,{soname}",
                "-o",
                str(into / soname),
                str(source),
            ],
            check=True,
        )


SIGNATURE = re.compile(r"^(?:\d+\.\s+)?(\w*)\((.*)\)\s*->\s*(.+)$", re.MULTILINE)


def short_type(text: str) -> str:
    text = re.sub(r"\btensorrt(?:_bindings)?\.tensorrt\.", "", text.strip())
    return text.replace("nvinfer1::", "")


def split_params(text: str) -> list[str]:
    depth, current, parts = 0, "", []
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    names = [part.split(":")[0].split("=")[0].strip() for part in parts if part.strip()]
    return [n for n in names if n not in ("self", "*args", "**kwargs")]


def signatures(doc: str | None, name: str) -> list[tuple[list[str], str]]:
    found = []
    for match in SIGNATURE.finditer(doc or ""):
        if match.group(1) in (name, ""):
            found.append((split_params(match.group(2)), short_type(match.group(3))))
    return found


def describe_member(cls, name: str) -> dict:
    raw = None
    for base in getattr(cls, "__mro__", ()):
        if name in vars(base):
            raw = vars(base)[name]
            break
    if isinstance(raw, property):
        found = signatures(raw.fget.__doc__ if raw.fget else None, "")
        return {
            "kind": "property",
            "type": found[0][1] if found else None,
            "settable": raw.fset is not None,
        }
    value = getattr(cls, name)
    if callable(value) and not isinstance(value, type):
        found = signatures(getattr(value, "__doc__", None), name)
        params = sorted({p for params, _ in found for p in params})
        returns = sorted({r for _, r in found})
        return {"kind": "method", "params": params, "returns": returns}
    return {"kind": "value", "type": short_type(type(value).__name__)}


def dump_surface(package: str) -> dict:
    """Runs in a child process with the stand-in libraries on LD_LIBRARY_PATH."""
    import importlib  # noqa: PLC0415

    trt = importlib.import_module(package)
    names = {}
    for name, value in public_values(trt, dir(trt)):
        if (members := enum_members(value)) is not None:
            names[name] = {"kind": "enum", "members": members}
        elif isinstance(value, type):
            members = {
                m: describe_member(value, m)
                for m in sorted(dir(value))
                if not m.startswith("_") or m == "__init__"
            }
            names[name] = {"kind": "class", "members": members}
        elif callable(value):
            names[name] = {"kind": "function"}
        elif isinstance(value, types_module().ModuleType):
            names[name] = {"kind": "module"}
        else:
            names[name] = {"kind": "value", "type": short_type(type(value).__name__)}
    return {"version": trt.__version__, "names": names}


def public_values(module, names, skip=()):
    """(name, value) of a module's public names and its ``__version__``, in name order."""
    for name in sorted(names):
        if (name.startswith("_") and name != "__version__") or name in skip:
            continue
        yield name, getattr(module, name)


def enum_members(value) -> dict[str, int] | None:
    """An enum class's members and their values; None for anything else."""
    if isinstance(value, type) and hasattr(value, "__members__"):
        return {m: int(v) for m, v in value.__members__.items()}
    return None


def types_module():
    import types  # noqa: PLC0415

    return types


def extract(version: str, out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = download(version, tmp / "wheel")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tmp / "site")
        (so,) = (tmp / "site").glob("*/tensorrt*.so")
        libs = tmp / "libs"
        libs.mkdir()
        build_stand_ins(so, libs)
        env = {**os.environ, "LD_LIBRARY_PATH": str(libs), "PYTHONPATH": str(tmp / "site")}
        child = subprocess.run(
            [sys.executable, __file__, "_dump", so.parent.name],
            env=env,
            cwd=tmp,
            check=True,
            capture_output=True,
            text=True,
        )
        surface = json.loads(child.stdout)
        surface.update(wheel=wheel.name, package=wheel_package(version))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"tensorrt-{version}.json"
    path.write_text(compact_json(surface))
    return path


def compact_json(surface: dict) -> str:
    """One line per module name, so a version's file stays small and diffs read per name."""
    head = {k: v for k, v in sorted(surface.items()) if k != "names"}
    lines = [json.dumps(head, sort_keys=True)[:-1] + ', "names": {']
    entries = sorted(surface["names"].items())
    for index, (name, entry) in enumerate(entries):
        comma = "," if index < len(entries) - 1 else ""
        lines.append(f"{json.dumps(name)}: {json.dumps(entry, sort_keys=True)}{comma}")
    return "\n".join(lines) + "\n}}\n"


def load_surfaces(directory: Path = DATA) -> dict[str, dict]:
    surfaces = {}
    for path in sorted(directory.glob("tensorrt-*.json")):
        surface = json.loads(path.read_text())
        surfaces[path.stem.removeprefix("tensorrt-")] = surface
    return surfaces


# -- used -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    owner: str  # MODULE or a class/enum name
    name: str  # attribute, or the keyword of a call
    how: str  # "read", "write", "keyword", "guarded"
    where: str  # file:line

    @property
    def label(self) -> str:
        base = self.name if self.owner == MODULE else f"{self.owner}.{self.name}"
        if self.how == "keyword":
            base = f"{self.owner}({self.name}=)"
        return base


class Types:
    """The type of a member, from the union of the recorded surfaces (newest first)."""

    def __init__(self, surfaces: dict[str, dict]):
        self.surfaces = [surfaces[v] for v in sorted(surfaces, key=version_key, reverse=True)]

    def entry(self, owner: str, name: str) -> dict | None:
        for surface in self.surfaces:
            names = surface["names"]
            if owner == MODULE:
                if name in names:
                    return names[name]
            elif owner in names and names[owner]["kind"] == "class":
                member = names[owner]["members"].get(name)
                if member is not None:
                    return member
            elif owner in names and names[owner]["kind"] == "enum":
                if name in names[owner]["members"]:
                    return {"kind": "enum-member", "type": owner}
        return None


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def single(types: list[str]) -> str | None:
    types = [t for t in types if t and t != "None"]
    return types[0] if len(set(types)) == 1 else None


class Walker:
    """Follows tensorrt-derived values through one module (see the docstring above)."""

    def __init__(self, types: Types, path: Path, tree: ast.Module):
        self.types, self.path, self.tree = types, path, tree
        self.uses: set[Use] = set()
        self.functions = {
            node.name: node
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        self.param_types: dict[tuple[str, str], str] = {}
        self.self_types: dict[str, dict[str, str]] = {}  # class -> attribute -> type

    def run(self) -> set[Use]:
        for _ in range(6):  # until the parameter and attribute types stop changing
            before = (dict(self.param_types), json.dumps(self.self_types, sort_keys=True))
            self.uses = set()
            self.module_env: dict[str, str] = {}
            self.scope(self.tree.body, self.module_env, None)
            if before == (self.param_types, json.dumps(self.self_types, sort_keys=True)):
                break
        return self.uses

    def where(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{node.lineno}"

    def scope(self, body: list[ast.stmt], env: dict[str, str], cls: str | None) -> None:
        for statement in body:
            self.statement(statement, env, cls)

    def statement(self, node: ast.stmt, env: dict[str, str], cls: str | None) -> None:
        if isinstance(node, ast.ClassDef):
            self.self_types.setdefault(node.name, {})
            self.scope(node.body, dict(self.module_env), node.name)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local = {**self.module_env, **env}  # module names, then the enclosing scope's
            for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
                known = self.param_types.get((node.name, arg.arg))
                if arg.arg == "trt":
                    known = MODULE
                if arg.arg == "self" and cls:
                    known = f"self:{cls}"
                if known:
                    local[arg.arg] = known
                else:
                    local.pop(arg.arg, None)  # a parameter hides the outer name
            self.scope(node.body, local, cls)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if isinstance(node, ast.Import) and alias.name == "tensorrt":
                    env[alias.asname or "tensorrt"] = MODULE
            return
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            value = node.value
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if value is not None:
                for target in targets:
                    self.assign(target, value, env, cls)
            return
        if isinstance(node, (ast.For, ast.AsyncFor)):
            element = self.element_type(self.expr(node.iter, env, cls))
            self.bind(node.target, element, env, cls)
            self.scope(node.body + node.orelse, env, cls)
            return
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                self.statement(child, env, cls)
            elif isinstance(child, ast.expr):
                self.expr(child, env, cls)
            elif isinstance(child, ast.excepthandler):
                self.scope(child.body, env, cls)
            elif hasattr(child, "body") and isinstance(child.body, list):
                self.scope(child.body, env, cls)  # match cases, with items

    def assign(self, target: ast.expr, value: ast.expr, env, cls) -> None:
        if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)):
            if len(target.elts) == len(value.elts):
                for t, v in zip(target.elts, value.elts):
                    self.assign(t, v, env, cls)
                return
        self.bind(target, self.expr(value, env, cls), env, cls)

    def bind(self, target: ast.expr, kind: str | None, env, cls) -> None:
        if isinstance(target, ast.Name):
            if kind:
                env[target.id] = kind
            else:
                env.pop(target.id, None)
        elif isinstance(target, ast.Attribute):
            base = self.expr(target.value, env, cls)
            if base and base.startswith("self:"):
                if kind:
                    self.self_types.setdefault(base[5:], {})[target.attr] = kind
            elif base:
                self.record(base, target.attr, "write", target)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self.bind(element, None, env, cls)
        else:
            self.expr(target, env, cls)

    def record(self, base: str, name: str, how: str, node: ast.AST) -> str | None:
        """Record a use of attribute ``name`` on a value of type ``base``; its type."""
        if base.startswith("list:"):
            return None
        owner = MODULE if base == MODULE else base.removeprefix("class:")
        self.uses.add(Use(owner, name, how, self.where(node)))
        entry = self.types.entry(owner, name)
        if entry is None:
            return None
        kind = entry["kind"]
        if owner == MODULE:
            if kind in ("class", "enum"):
                return f"class:{name}"
            return f"function:{name}" if kind == "function" else entry.get("type")
        if kind == "method":
            return f"method:{owner}.{name}"
        return entry.get("type")

    def element_type(self, kind: str | None) -> str | None:
        return kind[5:] if kind and kind.startswith("list:") else None

    def expr(self, node: ast.expr, env: dict[str, str], cls: str | None) -> str | None:
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.expr(node.value, env, cls)
            if base and base.startswith("self:"):
                return self.self_types.get(base[5:], {}).get(node.attr)
            return self.record(base, node.attr, "read", node) if base else None
        if isinstance(node, ast.Call):
            return self.call(node, env, cls)
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            local = dict(env)
            for generator in node.generators:
                element = self.element_type(self.expr(generator.iter, local, cls))
                self.bind(generator.target, element, local, cls)
                for condition in generator.ifs:
                    self.expr(condition, local, cls)
            element = self.expr(node.elt, local, cls)
            return f"list:{element}" if element else None
        if isinstance(node, ast.DictComp):
            local = dict(env)
            for generator in node.generators:
                self.bind(generator.target, None, local, cls)
                self.expr(generator.iter, local, cls)
            self.expr(node.key, local, cls)
            self.expr(node.value, local, cls)
            return None
        if isinstance(node, ast.Lambda):
            return None
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.expr(child, env, cls)
            elif isinstance(child, ast.comprehension):
                self.expr(child.iter, env, cls)
        return None

    def call(self, node: ast.Call, env, cls) -> str | None:
        func = node.func
        arguments = [self.expr(arg, env, cls) for arg in node.args]
        keywords = {kw.arg: self.expr(kw.value, env, cls) for kw in node.keywords}
        if isinstance(func, ast.Name) and func.id in ("hasattr", "getattr") and len(node.args) > 1:
            base, name = arguments[0], node.args[1]
            known = base and not base.startswith(("self:", "list:"))
            if known and isinstance(name, ast.Constant) and isinstance(name.value, str):
                owner = MODULE if base == MODULE else base.removeprefix("class:")
                self.uses.add(Use(owner, name.value, "guarded", self.where(node)))
            return None
        if isinstance(func, ast.Name) and func.id == "import_tensorrt":
            return MODULE
        if isinstance(func, ast.Name) and func.id in self.functions:
            params = self.functions[func.id].args
            names = [a.arg for a in params.posonlyargs + params.args]
            for name, kind in list(zip(names, arguments)) + list(keywords.items()):
                if kind and name:
                    self.param_types[(func.id, name)] = kind
            return None
        callee = self.expr(func, env, cls)
        if not callee:
            return None
        if callee.startswith("class:"):
            owner, method = callee[6:], "__init__"
            result = owner
        elif callee.startswith("method:"):
            owner, method = callee[7:].rsplit(".", 1)
            entry = self.types.entry(owner, method) or {}
            result = single(entry.get("returns", []))
            if result and result.startswith("List["):
                result = "list:" + result[5:-1]
        else:
            return None
        for keyword in node.keywords:
            if keyword.arg:
                use = Use(f"{owner}.{method}", keyword.arg, "keyword", self.where(keyword))
                self.uses.add(use)
        return result


def used_names(surfaces: dict[str, dict], root: Path = ROOT) -> list[Use]:
    types = Types(surfaces)
    uses: set[Use] = set()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            uses |= Walker(types, path, tree).run()
    return sorted(uses, key=lambda u: (u.label, u.how, u.where))


# -- check ----------------------------------------------------------------------------------


def has(surface: dict, use: Use) -> bool:
    names = surface["names"]
    if use.how == "keyword":
        owner, method = use.owner.rsplit(".", 1)
        member = names.get(owner, {}).get("members", {}).get(method)
        return isinstance(member, dict) and use.name in member.get("params", [])
    if use.owner == MODULE:
        return use.name in names or use.name in MODULE_DUNDERS
    entry = names.get(use.owner)
    if entry is None or use.name not in entry["members"]:
        return False
    if use.how == "write":
        member = entry["members"][use.name]
        return member.get("kind") == "property" and member.get("settable", False)
    return True


def missing_uses(surface: dict, uses: list[Use], guarded: bool = False) -> list[str]:
    """Labels of the uses the version lacks (a write to a read-only property counts): the
    plain uses, or with ``guarded`` the ``hasattr``/``getattr`` probes that find nothing."""
    return sorted(
        {u.label for u in uses if (u.how == "guarded") == guarded and not has(surface, u)}
    )


def fake_lacks(fake: dict[str, dict], surface: dict, uses: list[Use]) -> list[str]:
    """Plain uses the real version has and the fake does not (keywords are not compared)."""
    lacking = set()
    for use in uses:
        if use.how in ("guarded", "keyword") or not has(surface, use):
            continue
        if use.owner == MODULE:
            present = use.name in fake
        else:
            entry = fake.get(use.owner, {})
            present = use.name in entry.get("members", ())
        if not present:
            lacking.add(use.label)
    return sorted(lacking)


BUILTIN_BASES = (object, tuple, bytes, int, list, dict)


def fake_names(version: str) -> dict[str, dict]:
    """The fake module's public names: classes with their own public members, enums with
    their members and values, functions and values."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from fakes import FakeGPU, fake_tensorrt  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    trt = fake_tensorrt.make(version, FakeGPU())
    inherited = {m for base in BUILTIN_BASES for m in dir(base)}
    names = {}
    # "fake": the fake's own record of errors, not part of TensorRT
    for name, value in public_values(trt, vars(trt), skip=("fake",)):
        if (members := enum_members(value)) is not None:
            names[name] = {"kind": "enum", "members": members}
        elif isinstance(value, type):
            members = {m for m in dir(value) if not m.startswith("_") and m not in inherited}
            members = sorted(members | instance_attributes(value))
            params = {
                m: method_params(getattr(value, m))
                for m in members + ["__init__"]
                if inspect.isfunction(getattr(value, m, None))
            }
            names[name] = {"kind": "class", "members": members, "params": params}
        else:
            names[name] = {"kind": "function" if callable(value) else "value"}
    return names


def method_params(function) -> list[str]:
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = inspect.signature(function).parameters.values()
    return [p.name for p in parameters if p.name != "self" and p.kind not in skip]


def instance_attributes(cls: type) -> set[str]:
    """Public attributes a class's methods set on ``self`` (``self.name = ...``)."""
    import textwrap  # noqa: PLC0415

    found = set()
    for name, function in vars(cls).items():
        if not inspect.isfunction(function):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if (
                        isinstance(element, ast.Attribute)
                        and isinstance(element.value, ast.Name)
                        and element.value.id == "self"
                        and not element.attr.startswith("_")
                    ):
                        found.add(element.attr)
    return found


def fake_problems(fake: dict[str, dict], surface: dict) -> tuple[int, list[str]]:
    """(names checked, problems): fake names TensorRT lacks, enum values that differ."""
    real = surface["names"]
    checked, problems = 0, []
    for name, entry in fake.items():
        checked += 1
        if name not in real:
            problems.append(f"{name}: not in TensorRT {surface['version']}")
            continue
        if entry["kind"] != real[name]["kind"] and real[name]["kind"] != "value":
            problems.append(
                f"{name}: a {entry['kind']} in the fake, a {real[name]['kind']} in TensorRT"
            )
            continue
        if entry["kind"] == "enum":
            for member, value in entry["members"].items():
                checked += 1
                known = real[name]["members"]
                if member not in known:
                    problems.append(f"{name}.{member}: not in TensorRT {surface['version']}")
                elif known[member] != value:
                    problems.append(
                        f"{name}.{member}: {value} in the fake, {known[member]} in TensorRT"
                    )
        elif entry["kind"] == "class":
            known = real[name]["members"]
            for member in entry["members"]:
                checked += 1
                if member not in known:
                    problems.append(f"{name}.{member}: not in TensorRT {surface['version']}")
            for method, params in entry.get("params", {}).items():
                if method == "__init__" and "__init__" not in known:
                    continue
                real_params = known.get(method, {}).get("params")
                if real_params is None or (method == "__init__" and not real_params):
                    continue  # a property in TensorRT, or a class Python code cannot make
                for param in params:
                    checked += 1
                    if param not in real_params:
                        problems.append(
                            f"{name}.{method}({param}=): TensorRT's parameters are "
                            f"{', '.join(real_params) or 'positional only'}"
                        )
    return checked, problems


def plain_labels(uses: list[Use]) -> set[str]:
    return {u.label for u in uses if u.how != "guarded"}


def table(surfaces: dict[str, dict], uses: list[Use]) -> str:
    labels = plain_labels(uses)
    fakes = {ref: fake for fake, ref in FAKE_REFERENCE.items()}
    rows = [
        "| TensorRT | project's uses found | missing | probed with hasattr, absent | fake "
        "| fake's names found | fake names or values not in TensorRT | project's uses "
        "the fake lacks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for version in sorted(surfaces, key=version_key):
        surface = surfaces[version]
        missing = missing_uses(surface, uses)
        cells = [version, f"{len(labels) - len(missing)} / {len(labels)}"]
        cells += [
            ", ".join(missing) or "none",
            ", ".join(missing_uses(surface, uses, True)) or "none",
        ]
        fake = fakes.get(version)
        if fake:
            names = fake_names(fake)
            checked, problems = fake_problems(names, surface)
            cells += [fake, f"{checked - len(problems)} / {checked}", "; ".join(problems) or "none"]
            cells.append(", ".join(fake_lacks(names, surface, uses)) or "none")
        else:
            cells += ["-", "-", "-", "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ex = commands.add_parser("extract", help="download bindings wheels and record their surface")
    ex.add_argument("versions", nargs="*", default=list(VERSIONS))
    ex.add_argument("--out", type=Path, default=DATA)
    commands.add_parser("used", help="list the project's tensorrt uses")
    commands.add_parser("check", help="the table per version (project and fakes)")
    dump = commands.add_parser("_dump")
    dump.add_argument("package")
    args = parser.parse_args(argv)
    if args.command == "_dump":
        print(json.dumps(dump_surface(args.package)))
        return 0
    if args.command == "extract":
        for version in args.versions:
            print(extract(version, args.out))
        return 0
    surfaces = load_surfaces()
    if not surfaces:
        raise SystemExit(f"no recorded surfaces in {DATA}: run `extract` first")
    uses = used_names(surfaces)
    if args.command == "used":
        for use in uses:
            print(f"{use.label:60s} {use.how:8s} {use.where}")
        return 0
    print(table(surfaces, uses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
