"""The ``sendense`` command's exit codes: one table, shown in ``sendense --help``
and in the README, followed by every command.

``cli.main`` is the one place that turns an outcome into a code: a handler
returns 0, or raises. A ``SendenseError`` is a refusal (2) unless it is one of
the kinds below; ``CatalogUnavailable`` is 3; Ctrl+C and SIGTERM are 4.
"""

from __future__ import annotations

from enum import IntEnum

from engine.errors import CatalogUnavailable, SendenseError


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


class CommandFailed(SendenseError):
    """The work ran and failed: a job ended failed or cancelled, or a check (``repo
    test``, ``chain check``, ``verify report``, ``lock check``, ``doctor``) found a
    problem, or an extraction left something out. Exit 1, not 2: the input was fine."""


class CommandInterrupted(SendenseError):
    """Ctrl+C or SIGTERM while the command waited; the message says what became of
    the work it was waiting for. Exit 4."""


def exit_code_for(error: SendenseError) -> ExitCode:
    if isinstance(error, CatalogUnavailable):
        return ExitCode.CATALOG_UNAVAILABLE
    if isinstance(error, CommandFailed):
        return ExitCode.JOB_FAILED
    if isinstance(error, CommandInterrupted):
        return ExitCode.INTERRUPTED
    return ExitCode.REFUSED


def epilog() -> str:
    """The table as the last lines of ``sendense --help``."""
    rows = "\n".join(f"  {int(code)}  {text}" for code, text in TABLE)
    return f"exit codes:\n{rows}"
