"""Exceptions whose message is a sentence an operator can act on.

Every error the engine raises towards a person derives from SendenseError.
Its ``str()`` is the sentence shown on screen or printed by the CLI; a
traceback is never the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar


@dataclass(frozen=True)
class Action:
    """What the operator does next, named once for every front end.

    ``verb`` is the phrase the console and the API show ("confirm the lock period");
    ``key`` lets a front end with its own syntax say how (the CLI renders
    ``confirm_lock`` as "add --yes", the API as a request field), so an engine hint
    never embeds one front end's flags. ``subject`` names the thing acted on, for a
    rendering that needs it (a repository, a job id)."""

    key: str
    verb: str
    subject: str = ""


class SendenseError(Exception):
    """Base for every error that reaches an operator."""

    #: short hint on what to do, shown under the message when present
    hint: str | None = None
    #: the next step as a structured action (its verb is the default hint)
    action: Action | None = None

    def __init__(
        self, message: str, *, hint: str | None = None, action: Action | None = None
    ) -> None:
        super().__init__(message)
        if action is not None:
            self.action = action
            if hint is None:
                hint = action.verb
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


class NotPermitted(SendenseError):
    """The caller may not ask this, whatever its input (an API token naming a path of
    the appliance outside what its administrator opened to tokens); nothing was done."""


class JobError(SendenseError):
    """A job cannot be started, claimed or moved to the requested state."""


class StopReason(StrEnum):
    """Why a job's work stopped before it was done; each JobCancelled carries one.

    The runner gives each its one meaning (``engine.jobs.STOP_OUTCOMES``): a cancel
    ends the job cancelled, a pause ends it paused (resume runs it again from its
    resume point), a shutdown of this engine hands it back to the queue, a lost lease
    records nothing (another engine owns it), a lost catalog ends it failed."""

    CANCEL = "cancel"
    PAUSE = "pause"
    SHUTDOWN = "shutdown"
    LOST = "lost"
    CATALOG = "catalog"


class JobCancelled(JobError):
    """Raised inside a job's work when it must stop; ``reason`` says why (the
    operator cancelled it, unless a subclass says otherwise). Partial work is
    removed whatever the reason: the job runs again from its resume point."""

    reason: ClassVar[StopReason] = StopReason.CANCEL


class JobUnprotected(JobError):
    """A job's files landed and are good restore points, but the lock they must carry
    could not be set: the job ends as ``failed_unprotected``, never as succeeded."""

    def __init__(
        self,
        message: str,
        *,
        result: dict[str, object] | None = None,
        hint: str | None = None,
        action: Action | None = None,
    ) -> None:
        super().__init__(message, hint=hint, action=action)
        #: what the job did (its normal result), recorded with the failed state
        self.result: dict[str, object] = dict(result or {})


class LockNotConfirmed(ValidationError):
    """A save that would start a lock period, or lengthen one, was not confirmed: a
    lock cannot be shortened later, so the operator sees what it would hold first.
    Carries the estimate (a ``SpaceEstimate``) the confirmation question shows."""

    def __init__(self, message: str, *, estimate: object, days: int) -> None:
        super().__init__(message, action=Action("confirm_lock", "confirm the lock period to save"))
        self.estimate = estimate
        self.days = days
