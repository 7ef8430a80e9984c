"""Deployment bundles: a directory with ``manifest.json`` and the model files.

Torch-free: the runtime on the Jetson reads bundles with this module. The manifest is
schema-versioned and validated on load; every file it lists carries its size and sha256,
so a modified or truncated file is detected before anything runs. Writes are atomic:
files are staged in a sibling folder that is swapped with the old bundle in one step
(``commit_bundle``).
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on Windows: no lock, no clean-up of killed exports' folders
    fcntl = None

from . import checks
from .atomic import atomic_write_bytes
from .catalog import FILE_KINDS, PRECISIONS
from .config import ModelConfig, PreprocessConfig
from .errors import ConfigError, DmgrdError

SCHEMA = "dmgrd-edge-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "schema_version": int,
    "created": str,
    "model": dict,
    "preprocess": dict,
    "inputs": list,
    "outputs": list,
    "batch": dict,
    "threshold": (int, float),
    "score_stats": dict,
    "files": dict,
    "versions": dict,
    "source": dict,
}


class BundleError(DmgrdError):
    """A bundle that is missing, tampered with, truncated or from an incompatible version."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path, kind: str, precision: str | None, **extra: Any) -> dict[str, Any]:
    if kind not in FILE_KINDS:
        raise ValueError(f"unknown file kind {kind!r}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    return {
        "kind": kind,
        "precision": precision,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        **extra,
    }


def validate_manifest(manifest: Any, where: str = MANIFEST) -> dict[str, Any]:
    fix = "re-export the bundle with `dmgrd-edge export`"
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError(f"{where} is not a dmgrd-edge bundle manifest", fix)
    version = manifest.get("schema_version")
    if (
        isinstance(version, bool)
        or not isinstance(version, int)
        or not 1 <= version <= SCHEMA_VERSION
    ):
        raise BundleError(
            f"{where} has schema version {version!r}; this dmgrd-edge reads up to {SCHEMA_VERSION}",
            "upgrade dmgrd-edge on this machine or export with the matching version",
        )
    for key, kind in _REQUIRED.items():
        if key not in manifest:
            raise BundleError(f"{where} lacks the field {key!r}", fix)
        if (
            not isinstance(manifest[key], kind)
            or isinstance(manifest[key], bool)
            and kind is not bool
        ):
            raise BundleError(
                f"{where}: field {key!r} has the wrong type ({type(manifest[key]).__name__})", fix
            )
    for key, config in (("model", ModelConfig), ("preprocess", PreprocessConfig)):
        try:
            config.from_dict(manifest[key])
        except ConfigError as exc:
            raise BundleError(
                f"{where}: field {key!r}: {exc.problem}",
                f"{fix} (the checkpoint's configuration was changed or is damaged)",
            ) from None
    _finite_threshold(f"{where}: 'threshold'", manifest["threshold"], fix)
    batch = manifest["batch"]
    sizes = [batch.get(k) for k in ("min", "opt", "max")]
    if (
        not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes)
        or not 1 <= sizes[0] <= sizes[1] <= sizes[2]
    ):
        raise BundleError(
            f"{where}: field 'batch' must hold whole numbers 1 <= min <= opt <= max, got {batch!r}",
            fix,
        )
    for name, entry in manifest["files"].items():
        _check_file_entry(f"{where}: file {name!r}", name, entry, fix)
    return manifest


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_file_entry(where: str, name: str, entry: Any, fix: str) -> None:
    """The fields of one ``files`` entry that loading and choosing a model file read."""
    parts = Path(name).parts
    if "\0" in name or not parts or Path(name).is_absolute() or ".." in parts or name == MANIFEST:
        raise BundleError(f"{where} points outside the bundle or is not a file name", fix)
    if not isinstance(entry, dict):
        raise BundleError(f"{where}: the entry must be an object, got {type(entry).__name__}", fix)
    for field in ("kind", "bytes", "sha256"):
        if field not in entry:
            raise BundleError(f"{where}: the entry lacks {field!r}", fix)
    if entry["kind"] not in FILE_KINDS:
        raise BundleError(
            f"{where}: unknown kind {entry['kind']!r} (known: {', '.join(FILE_KINDS)})", fix
        )
    if entry.get("precision") is not None and entry["precision"] not in PRECISIONS:
        raise BundleError(
            f"{where}: unknown precision {entry['precision']!r} (known: {', '.join(PRECISIONS)})",
            fix,
        )
    checks.integer(f"{where}: 'bytes'", entry["bytes"], 0, error=BundleError)
    if not isinstance(entry["sha256"], str) or not _SHA256.fullmatch(entry["sha256"]):
        raise BundleError(f"{where}: 'sha256' is not a sha256 digest", fix)
    for field in ("onnx", "target"):
        if field in entry and not isinstance(entry[field], str):
            raise BundleError(f"{where}: {field!r} must be a name, got {entry[field]!r}", fix)
    if "threshold" in entry:
        _finite_threshold(f"{where}: 'threshold'", entry["threshold"], fix)


def _finite_threshold(name: str, value: Any, fix: str) -> None:
    try:
        checks.threshold(name, value, error=BundleError)
    except BundleError as exc:
        raise BundleError(
            exc.problem, f"{fix}, or set it with `dmgrd-edge calibrate-threshold`"
        ) from None


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.manifest["model"])

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.manifest["preprocess"])

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    def threshold_for(self, name: str) -> float:
        """The decision threshold calibrated for this model file (engines use the one of the
        ONNX file they were built from); the bundle's fp32 threshold otherwise."""
        entry = self.manifest["files"].get(name, {})
        if entry.get("kind") == "engine" and entry.get("onnx") in self.manifest["files"]:
            entry = self.manifest["files"][entry["onnx"]]
        return float(entry.get("threshold", self.manifest["threshold"]))

    def path(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(
                f"{self.root} has no file {name!r}",
                f"files in this bundle: {sorted(self.manifest['files'])}",
            )
        return inside(self.root, name)

    def files(self, kind: str | None = None, precision: str | None = None) -> list[str]:
        return [
            n
            for n, e in self.manifest["files"].items()
            if (kind is None or e["kind"] == kind)
            and (precision is None or e.get("precision") == precision)
        ]

    def verify(self, names: list[str] | None = None) -> None:
        for name in names if names is not None else list(self.manifest["files"]):
            entry, path = self.manifest["files"][name], inside(self.root, name)
            if not path.is_file():
                raise BundleError(
                    f"bundle file missing: {path}", "re-export the bundle or copy it again whole"
                )
            if path.stat().st_size != entry["bytes"]:
                raise BundleError(
                    f"bundle file {path} has {path.stat().st_size} bytes, the manifest says "
                    f"{entry['bytes']}: truncated or replaced",
                    "copy the bundle again or re-export it",
                )
            if sha256_file(path) != entry["sha256"]:
                raise BundleError(
                    f"bundle file {path} does not match its sha256 in the manifest: modified",
                    "copy the bundle again or re-export it",
                )


def inside(root: Path, name: str) -> Path:
    """``root / name`` if it is a file of the bundle itself, with no symbolic link on the way
    from ``root`` (a link lets a file from outside the bundle pass for one of its files,
    whatever its hash) and not resolving outside ``root``; a BundleError otherwise."""
    path = root / name
    fix = "copy the bundle with the files themselves (cp -rL, rsync -L) or re-export it"
    for part in (path, *path.parents):
        if part == root:
            break
        if part.is_symlink():
            raise BundleError(
                f"bundle file {path}: {part} is a symbolic link (to {os.readlink(part)}); "
                "refused even if the hash matches, since a link can put a file from outside "
                "the bundle in its place",
                fix,
            )
    if path.exists() and not path.resolve().is_relative_to(root.resolve()):
        raise BundleError(f"bundle file {path} resolves outside the bundle folder {root}", fix)
    return path


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise BundleError(
            f"no {MANIFEST} in {root}", "give the folder written by `dmgrd-edge export`"
        )
    manifest_path = inside(root, MANIFEST)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, RecursionError) as exc:  # not UTF-8 or JSON, a 5000-digit number, too deep
        raise BundleError(
            f"{manifest_path} is not valid JSON ({str(exc)[:200]})",
            "copy the bundle again or re-export it",
        ) from exc
    bundle = Bundle(root, validate_manifest(manifest, str(manifest_path)))
    if verify:
        bundle.verify()
    return bundle


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


# Assembling a bundle: a sibling folder ``.NAME.staging-XXXX`` beside ``--out``, with a lock
# file ``.NAME.staging-XXXX.lock`` that the exporting process holds (flock) until it is done.
# A folder whose lock file nobody holds was left by a killed run and is removed by the next
# export; a folder without such a lock file is not provably ours and is left alone.
_HELD: dict[Path, int] = {}  # staging folder -> open, locked descriptor of its lock file
_LOCK = ".lock"


def staging_dir(out: str | Path) -> Path:
    """A fresh sibling folder of ``out`` to assemble a bundle in, locked by this process
    until ``release_staging``. Staging folders of killed runs are removed first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(out)
    while True:
        fd, lock = tempfile.mkstemp(prefix=f".{out.name}.staging-", suffix=_LOCK, dir=out.parent)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                same = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except (BlockingIOError, FileNotFoundError):  # another export is clearing it
                same = False
            if not same:
                os.close(fd)
                continue
        os.write(fd, f"{os.getpid()}\n".encode())
        path = Path(lock[: -len(_LOCK)])
        try:
            path.mkdir(0o755)
        except FileExistsError:
            os.close(fd)
            Path(lock).unlink(missing_ok=True)
            continue
        path.chmod(0o755)  # a bundle is meant to be copied and shared, whatever the umask
        _HELD[path] = fd
        return path


def release_staging(path: Path) -> None:
    """Remove a staging folder of this process (after a commit it holds the old bundle)."""
    shutil.rmtree(path, ignore_errors=True)
    fd = _HELD.pop(Path(path), None)
    if fd is not None:
        Path(f"{path}{_LOCK}").unlink(missing_ok=True)
        os.close(fd)


def clean_stale_staging(out: str | Path) -> list[Path]:
    """Remove the staging folders beside ``out`` that killed exports left: those whose lock
    file exists and is held by no process. Returns the folders removed."""
    out = Path(out)
    removed: list[Path] = []
    if fcntl is None:
        return removed
    pattern = f".{glob.escape(out.name)}.staging-*{_LOCK}"
    for lock in sorted(out.parent.glob(pattern)):
        folder = lock.with_name(lock.name[: -len(_LOCK)])
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its export is running
            try:
                if os.stat(lock, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                    continue  # removed and made again since we opened it
            except FileNotFoundError:
                continue
            try:
                mode = os.lstat(folder).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and not stat.S_ISDIR(mode):
                continue  # something else has the name: not ours to remove
            if mode is not None:
                shutil.rmtree(folder)
            os.unlink(lock)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed


# The steps of a commit, in order. A test kills the process at each of them (SIGKILL, set by
# the environment variable below) and checks that --out holds a whole bundle every time.
COMMIT_STEPS = (
    "before the manifest is written",
    "manifest written",
    "new bundle verified",
    "new bundle in place",
    "half of the old bundle removed",  # only when there was an old bundle
    "old bundle removed",
)
KILL_AT_STEP_ENV = "DMGRD_EDGE_TEST_KILL_AT_COMMIT_STEP"


def _reached(step: int) -> None:
    if os.environ.get(KILL_AT_STEP_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


class ExchangeUnsupported(OSError):
    """The OS or file system cannot swap two paths in one step."""


def exchange(a: Path, b: Path) -> None:
    """Swap ``a`` and ``b`` in one atomic step: Linux ``renameat2(RENAME_EXCHANGE)``
    (Linux 3.15+, glibc 2.28+; ext4, XFS, Btrfs, tmpfs, overlayfs among others)."""
    if not sys.platform.startswith("linux"):
        raise ExchangeUnsupported(errno.ENOSYS, f"{sys.platform} has no renameat2")
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:
        raise ExchangeUnsupported(errno.ENOSYS, "the C library has no renameat2") from None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        kind = ExchangeUnsupported if code in (errno.EINVAL, errno.ENOSYS) else OSError
        kind = ExchangeUnsupported if code == errno.EOPNOTSUPP else kind
        raise kind(code, os.strerror(code), str(a), None, str(b))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_out(out: str | Path) -> Path:
    """``out`` if a bundle may be written there: nothing, an empty folder or an earlier bundle
    (replaced whole). A file, a link or a folder of other things is refused untouched."""
    out = Path(out)
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        return out
    keep = "choose another --out, or move it away; nothing was changed"
    if stat.S_ISLNK(mode):
        raise BundleError(
            f"{out} is a symbolic link, not a bundle folder",
            f"give the folder it points to ({os.readlink(out)}) or another --out; "
            "nothing was changed",
        )
    if not stat.S_ISDIR(mode):
        raise BundleError(f"{out} exists and is not a folder (a bundle is a folder of files)", keep)
    if not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise BundleError(f"{out} exists and is not a bundle", keep)
    return out


def commit_bundle(staging: Path, out: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest into ``staging`` and put it at ``out``. An old bundle there is
    swapped with the new one in one step (``exchange``), so ``out`` holds a whole bundle,
    the old or the new, at every instant; afterwards ``staging`` holds the old one, which is
    removed. Where the file system cannot swap, an old bundle is not replaced (an error)."""
    out = check_out(out)
    validate_manifest(manifest)
    _reached(0)
    write_json_atomic(staging / MANIFEST, manifest)
    _reached(1)
    Bundle(staging, manifest).verify()
    _reached(2)
    if os.path.lexists(out):
        try:
            exchange(staging, out)
        except ExchangeUnsupported as exc:
            raise BundleError(
                f"cannot replace the bundle at {out} in one step: this system or file system "
                f"cannot swap two folders (renameat2 RENAME_EXCHANGE: {exc.strerror}), and two "
                "renames would leave no bundle there if stopped between them",
                "export to a new --out and move the old bundle away yourself, or remove the old "
                "one first; the old bundle is unchanged",
            ) from None
        except OSError as exc:  # e.g. --out is a mount point (EBUSY, EXDEV)
            raise BundleError(
                f"cannot swap the bundle at {out} with the new one: {exc.strerror}",
                "export to a new --out in a folder you can write; the old bundle is unchanged",
            ) from None
        _reached(3)
        _fsync_dir(out.parent)
        old = sorted(staging.iterdir())
        for entry in old[: len(old) // 2]:  # the old bundle, now in staging
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        _reached(4)
        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.rename(staging, out)
        _reached(3)
        _fsync_dir(out.parent)
    _reached(5)
    return out


def add_files(bundle: Bundle, entries: dict[str, dict[str, Any]]) -> Bundle:
    """Register files already written inside the bundle (e.g. engines built on the target)."""
    manifest = json.loads(json.dumps(bundle.manifest))
    manifest["files"].update(entries)
    validate_manifest(manifest)
    write_json_atomic(bundle.root / MANIFEST, manifest)
    return Bundle(bundle.root, manifest)
