"""Exceptions whose message is a sentence an operator can act on.

Every error the engine raises towards a person derives from SendenseError.
Its ``str()`` is the sentence shown on screen or printed by the CLI; a
traceback is never the message.
"""

from __future__ import annotations


class SendenseError(Exception):
    """Base for every error that reaches an operator."""

    #: short hint on what to do, shown under the message when present
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__

    def for_humans(self) -> str:
        """The message plus the hint, ready to print."""
        return f"{self.message}\n  -> {self.hint}" if self.hint else self.message


class ConfigError(SendenseError):
    """The configuration file or an environment override is wrong."""


class CatalogError(SendenseError):
    """The catalog database cannot be reached or used."""


class CatalogUnavailable(CatalogError):
    """The catalog cannot be reached, is read-only, or went away while in use.

    The CLI exits 3 for it (see sendense_tui.exitcodes); a job that meets it
    stops with its files consistent and is settled by the next engine.
    """


class CatalogReadOnly(CatalogUnavailable):
    """The catalog answers but takes no writes (an immutable file, a read-only
    filesystem or server): reads still work, so only a write shows it is back."""


class CatalogVersionError(CatalogError):
    """The catalog was written by a newer Sendense than this one."""


class CatalogBehind(CatalogVersionError):
    """The catalog is at an older schema revision and the command at hand only reads:
    it does not migrate (a command that changes something, or ``catalog migrate``, does)."""


class NotFoundError(SendenseError):
    """A named object (repository, backup, job…) does not exist."""


class ValidationError(SendenseError):
    """Input from an operator does not make sense; nothing was changed."""


class JobError(SendenseError):
    """A job cannot be started, claimed or moved to the requested state."""


class JobCancelled(JobError):
    """Raised inside a job's work when the operator cancelled it."""


class JobUnprotected(JobError):
    """A job's files landed and are good restore points, but the lock they must carry
    could not be set: the job ends as ``failed_unprotected``, never as succeeded."""

    def __init__(
        self, message: str, *, result: dict[str, object] | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        #: what the job did (its normal result), recorded with the failed state
        self.result: dict[str, object] = dict(result or {})
