"""Errors a user can act on. The CLI prints them without a traceback and exits non-zero."""

from __future__ import annotations

EXIT_IO = 4  # a file that cannot be read or written


class DmgrdError(Exception):
    """A problem with the user's input or environment, with a hint on how to fix it."""

    exit_code = 2

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


class TargetError(DmgrdError):
    """A path to write that is not a regular file (a link, a folder, a device, a pipe)."""

    exit_code = EXIT_IO


class CheckpointError(DmgrdError):
    """A checkpoint that is missing, corrupt or from an incompatible version."""


def choose(name: str, value: str, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ConfigError listing them."""
    valid = sorted(choices)
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}", f"choose one of {valid}")
    return value
