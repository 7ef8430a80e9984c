"""Errors a user can act on, and the exit codes of every command. The CLI prints errors
without a traceback and exits with the code of the error's kind."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Every exit code of `dmgrd-edge`; ``MEANINGS`` says what each one means (the README's
    table is checked against it)."""

    OK = 0
    UNEXPECTED = 1
    BAD_INPUT = 2
    SOURCE_LOST = 3
    IO = 4
    INT8_MAX_DROP = 5
    INTERRUPTED = 130


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "done",
    ExitCode.UNEXPECTED: "an unexpected error (a bug: Python prints the traceback)",
    ExitCode.BAD_INPUT: "bad input or options (also command-line usage errors); nothing was run "
    "or written",
    ExitCode.SOURCE_LOST: "`run`: the source was lost and not recovered after --max-retries, or "
    "ended without a readable frame",
    ExitCode.IO: "a file that cannot be read or written (a full disk, permissions, a vanished "
    "mount, a path that is not a regular file)",
    ExitCode.INT8_MAX_DROP: "`export --max-drop`: an INT8 file misses the accuracy bound; the "
    "bundle is written, with the guard's figures in its manifest",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}

EXIT_IO = ExitCode.IO  # a file that cannot be read or written


class DmgrdError(Exception):
    """A problem with the user's input or environment, with a hint on how to fix it."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")

    def __reduce__(self):  # pickled whole (problem and fix) across processes and Ray tasks
        return type(self), (self.problem, self.fix)


class DataError(DmgrdError):
    """Missing, empty or unreadable dataset files."""


class ConfigError(DmgrdError):
    """An option outside the valid choices."""


class WeightsError(DmgrdError):
    """Pretrained weights that cannot be found or loaded."""


class GuardError(DmgrdError):
    """An INT8 file that misses the accuracy bound asked for (``export --max-drop``)."""

    exit_code = ExitCode.INT8_MAX_DROP


class TargetError(DmgrdError):
    """A path to write that is not a regular file (a link, a folder, a device, a pipe)."""

    exit_code = ExitCode.IO


class CheckpointError(DmgrdError):
    """A checkpoint that is missing, corrupt or from an incompatible version."""


def choose(name: str, value: str, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ConfigError listing them."""
    valid = sorted(choices)
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}", f"choose one of {valid}")
    return value
