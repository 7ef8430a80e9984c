"""Atomic file writes: a temporary file in the same folder, fsync, then rename. A crash
leaves either the old file or the new one, never half of either.

Every file the toolkit writes whole (statistics, bench results, reports, manifests,
checkpoints, engines) goes through ``atomic_write``, which replaces a regular file or
nothing. A rename puts the new file in place of whatever has the name: a symbolic link
(the link is gone, its target keeps the old data), a device node (``/dev/null`` as a
root-run service would see it) or a named pipe a logger reads. So anything at the path
that is not a regular file is refused, naming the path and what it is, before a byte is
written and again just before the rename.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Callable

from .errors import TargetError

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def check_target(path: str | Path) -> Path:
    """``path`` if it is a regular file or does not exist; else a TargetError (exit code 4)."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except NotADirectoryError:
        raise TargetError(
            f"cannot write {path}: a folder on its way is a file",
            "give a path whose folders are folders; nothing was written",
        ) from None
    if stat.S_ISREG(mode):
        return path
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    fix = "give the path of a regular file or of a new one; nothing was written"
    if stat.S_ISLNK(mode):
        fix = (
            f"give the file the link points to ({os.readlink(path)}) or a new name, or remove "
            "the link; nothing was written"
        )
    raise TargetError(f"{path} is {kind}, not a regular file: refusing to replace it", fix)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    path = check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        check_target(path)  # the write may have taken long: something else may have come there
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))
