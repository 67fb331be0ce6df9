"""The ``sendense`` command's exit codes: one table, shown in ``sendense --help``
and in the README, followed by every command."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    #: the command did what was asked
    OK = 0
    #: a job ran and failed (or was cancelled); the message says why
    JOB_FAILED = 1
    #: bad usage or refused input; nothing was changed
    REFUSED = 2
    #: the catalog cannot be reached, is read-only or went away
    CATALOG_UNAVAILABLE = 3
    #: interrupted (Ctrl+C, SIGTERM) before the command finished
    INTERRUPTED = 4


TABLE: tuple[tuple[ExitCode, str], ...] = (
    (ExitCode.OK, "success"),
    (ExitCode.JOB_FAILED, "a job ran and failed"),
    (ExitCode.REFUSED, "bad usage or refused input (nothing changed)"),
    (ExitCode.CATALOG_UNAVAILABLE, "catalog unavailable"),
    (ExitCode.INTERRUPTED, "interrupted"),
)


def epilog() -> str:
    """The table as the last lines of ``sendense --help``."""
    rows = "\n".join(f"  {int(code)}  {text}" for code, text in TABLE)
    return f"exit codes:\n{rows}"
