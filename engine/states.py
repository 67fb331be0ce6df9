"""States and kinds that rows store, as enums.

Each is a StrEnum: its members are the strings the catalog stores (no migration of
data), so a member compares equal to the stored string and a row read back as a
plain string compares equal to the member. The catalog's columns stay ``str``.

The job state machine's legal moves (``JOB_TRANSITIONS``) are here beside the
states; ``engine.catalog.jobs.JobStore`` checks every state change against them.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: the work landed (good restore points) but the immutability lock it had to set
    #: could not be set
    FAILED_UNPROTECTED = "failed_unprotected"
    CANCELLED = "cancelled"


class JobKind(StrEnum):
    """The job kinds the engine registers (a runner also accepts other names: tests)."""

    BACKUP = "backup"
    CONSOLIDATE = "consolidate"
    COPY = "copy"
    VERIFY = "verify"
    RESTORE_DISK = "restore_disk"
    RESTORE_FILES = "restore.files"
    RESTORE_ARCHIVE = "restore.archive"
    REPOSITORY_IMPORT = "repository.import"
    POLICY_RUN = "policy_run"
    LOCKS_MAINTAIN = "locks.maintain"


class BackupState(StrEnum):
    PENDING = "pending"
    COMPLETE = "complete"
    BAD = "bad"
    DELETED = "deleted"


class BackupKind(StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


class ChainState(StrEnum):
    OK = "ok"
    BROKEN = "broken"
    #: a newer full superseded it
    RETIRED = "retired"


#: the audit log's levels, least to most severe ("at least warning" filters by order)
AUDIT_LEVELS = ("debug", "info", "warning", "error", "critical")

ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.PAUSED)
FINAL_JOB_STATES = (
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.FAILED_UNPROTECTED,
    JobState.CANCELLED,
)

#: legal moves of the job state machine (from -> to)
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # paused: the operator paused it before it started
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.PAUSED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.FAILED_UNPROTECTED,
            JobState.CANCELLED,
            JobState.PAUSED,
            # handed back: this engine stops, or a disk it writes is busy
            JobState.QUEUED,
            # a takeover: another engine claims the job of an engine that died
            JobState.RUNNING,
        }
    ),
    JobState.PAUSED: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    JobState.FAILED: frozenset({JobState.QUEUED}),  # retry by hand
    # a retry would make a new backup, not protect this one; the lock job retries the flag
    JobState.FAILED_UNPROTECTED: frozenset(),
    JobState.SUCCEEDED: frozenset(),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),  # retry by hand
}


def job_transition_error(from_state: str, to_state: str) -> str | None:
    """Why a job may not move from ``from_state`` to ``to_state`` (None: it may)."""
    try:
        source, target = JobState(from_state), JobState(to_state)
    except ValueError:
        return f"{from_state!r} -> {to_state!r} names a state jobs do not have"
    if target in JOB_TRANSITIONS[source]:
        return None
    allowed = sorted(JOB_TRANSITIONS[source])
    return f"a {source} job cannot become {target}" + (
        f" (it can become {' or '.join(allowed)})" if allowed else " (it is final)"
    )


__all__ = [
    "ACTIVE_JOB_STATES",
    "AUDIT_LEVELS",
    "FINAL_JOB_STATES",
    "JOB_TRANSITIONS",
    "BackupKind",
    "BackupState",
    "ChainState",
    "JobKind",
    "JobState",
    "job_transition_error",
]
