"""Job rows: creation, lease claims, heartbeats, progress and final states.

A claim is one compare-and-set UPDATE, so on SQLite and on MariaDB two engines
racing for the same job cannot both win: the row count tells who did.

Every state change goes through ``_move``, which checks the move against the state
machine (``TRANSITIONS``) before the UPDATE is issued; the UPDATE's condition on the
current state then makes sure the row really was in one of the states checked. An
illegal move raises JobError and changes nothing.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, or_, select, update

from engine.catalog.db import Catalog, count_rows, rows_changed
from engine.catalog.models import Job
from engine.errors import JobError, NotFoundError
from engine.states import (
    ACTIVE_JOB_STATES,
    FINAL_JOB_STATES,
    JOB_TRANSITIONS,
    JobState,
    job_transition_error,
)

ACTIVE_STATES = ACTIVE_JOB_STATES
#: how a queued job's message starts while it waits for a disk another job writes
WAITING = "waiting: "
FINAL_STATES = FINAL_JOB_STATES
#: legal moves of the job state machine (checked on every state change)
TRANSITIONS = JOB_TRANSITIONS


def check_transition(job_id: int, from_states: Sequence[str], to_state: str) -> None:
    """Raise JobError unless a job in any of ``from_states`` may become ``to_state``."""
    for from_state in from_states:
        problem = job_transition_error(from_state, to_state)
        if problem is not None:
            raise JobError(f"job {job_id} cannot be moved: {problem}")


class JobStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def create(
        self,
        kind: str,
        title: str,
        *,
        now: datetime,
        params: dict[str, Any] | None = None,
        repository_id: int | None = None,
        bytes_total: int = 0,
        priority: int = 100,
        actor: str | None = None,
    ) -> Job:
        job = Job(
            kind=kind,
            title=title[:255],
            actor=actor[:128] if actor else None,
            state=JobState.QUEUED,
            params=params or {},
            repository_id=repository_id,
            bytes_total=bytes_total,
            priority=priority,
            created_at=now,
        )
        with self.catalog.session() as session:
            session.add(job)
            session.flush()
        return job

    def get(self, job_id: int) -> Job:
        with self.catalog.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            return job

    def list(
        self,
        *,
        states: Sequence[str] | None = None,
        limit: int = 200,
        kind: str | None = None,
        before_id: int | None = None,
    ) -> list[Job]:
        """Newest first; ``before_id``: only jobs older than that one (the next page)."""
        query = self._filtered(select(Job), states, kind, before_id)
        query = query.order_by(Job.id.desc()).limit(limit)
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def count(
        self,
        *,
        states: Sequence[str] | None = None,
        kind: str | None = None,
        before_id: int | None = None,
        at_most: int | None = None,
    ) -> int:
        """How many jobs ``list`` with these filters would give without a limit
        (counting stops at ``at_most``)."""
        query = self._filtered(select(Job.id), states, kind, before_id)
        with self.catalog.session() as session:
            return int(session.scalar(count_rows(query, at_most=at_most)) or 0)

    @staticmethod
    def _filtered(
        query: Any, states: Sequence[str] | None, kind: str | None, before_id: int | None
    ) -> Any:
        if states:
            query = query.where(Job.state.in_(states))
        if kind:
            query = query.where(Job.kind == kind)
        if before_id is not None:
            query = query.where(Job.id < before_id)
        return query

    def claimable(self, now: datetime, kinds: Sequence[str], limit: int) -> builtins.list[int]:
        """Ids of jobs this engine could run: queued, or running with a lapsed lease."""
        return [job.id for job in self.candidates(now, kinds, limit)]

    def candidates(self, now: datetime, kinds: Sequence[str], limit: int) -> builtins.list[Job]:
        """Jobs this engine could run, in the order to try them: queued, or running
        with a lapsed lease (their engine died), by priority then age."""
        query = (
            select(Job)
            .where(Job.kind.in_(kinds))
            .where(
                or_(
                    Job.state == JobState.QUEUED,
                    and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now),
                )
            )
            .order_by(Job.priority, Job.id)
            .limit(limit)
        )
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def claim(self, job_id: int, owner: str, now: datetime, lease: timedelta) -> Job | None:
        """Take the lease on a job (queued, or lapsed: a takeover); None when another
        engine got it first."""
        return self.claim_queued(job_id, owner, now, lease) or self.take_over(
            job_id, owner, now, lease
        )

    def claim_queued(self, job_id: int, owner: str, now: datetime, lease: timedelta) -> Job | None:
        """Start a queued job; None when another engine got it first."""
        check_transition(job_id, (JobState.QUEUED,), JobState.RUNNING)
        return self._claim(job_id, owner, now, lease, Job.state == JobState.QUEUED, takeover=False)

    def take_over(self, job_id: int, owner: str, now: datetime, lease: timedelta) -> Job | None:
        """Take a running job whose lease lapsed (its engine died); counts the takeover.
        None when the lease is still valid or another engine took it first."""
        check_transition(job_id, (JobState.RUNNING,), JobState.RUNNING)
        lapsed = and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
        return self._claim(job_id, owner, now, lease, lapsed, takeover=True)

    def _claim(
        self,
        job_id: int,
        owner: str,
        now: datetime,
        lease: timedelta,
        condition: Any,
        *,
        takeover: bool,
    ) -> Job | None:
        values: dict[str, Any] = {
            "state": JobState.RUNNING,
            "lease_owner": owner,
            "lease_expires_at": now + lease,
            "heartbeat_at": now,
            "started_at": now,
            "attempts": Job.attempts + 1,
            # the note on why it waited (``note``) is over once it runs
            "message": case((Job.message.like(f"{WAITING}%"), None), else_=Job.message),
        }
        if takeover:
            values["takeovers"] = Job.takeovers + 1
        with self.catalog.session() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id)
                .where(condition)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if rows_changed(result) != 1:
                return None
        return self.get(job_id)

    def note(self, job_id: int, message: str) -> None:
        """Say why a queued job has not started: "waiting: <message>" (job listings)."""
        with self.catalog.session() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED)
                .values(message=f"{WAITING}{message}"[:255])
                .execution_options(synchronize_session=False)
            )

    def heartbeat(self, job_id: int, owner: str, now: datetime, lease: timedelta) -> bool:
        """Extend our lease; False means we lost it (another engine took over)."""
        with self.catalog.session() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
                .values(heartbeat_at=now, lease_expires_at=now + lease)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result) == 1

    def flags(self, job_id: int) -> tuple[bool, bool]:
        """(cancel_requested, pause_requested) as the operator set them."""
        with self.catalog.session() as session:
            row = session.execute(
                select(Job.cancel_requested, Job.pause_requested).where(Job.id == job_id)
            ).one_or_none()
        return (bool(row[0]), bool(row[1])) if row else (True, False)

    def progress(
        self,
        job_id: int,
        owner: str,
        *,
        bytes_done: int,
        bytes_total: int,
        rate: float,
        eta_seconds: float | None,
        message: str | None = None,
        resume_point: dict[str, Any] | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "bytes_done": bytes_done,
            "bytes_total": bytes_total,
            "rate": rate,
            "eta_seconds": eta_seconds,
        }
        if message is not None:
            values["message"] = message[:255]
        if resume_point is not None:
            values["resume_point"] = resume_point
        with self.catalog.session() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    def finish(
        self,
        job_id: int,
        owner: str,
        state: str,
        now: datetime,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> bool:
        """Record the outcome if we still hold the lease; False if we lost it."""
        if state not in (*FINAL_STATES, JobState.PAUSED, JobState.QUEUED):
            raise JobError(f"cannot finish a job as {state!r}")
        check_transition(job_id, (JobState.RUNNING,), state)
        values: dict[str, Any] = {
            "state": state,
            "error": error,
            "result": result,
            "lease_owner": None,
            "lease_expires_at": None,
            "eta_seconds": None,
            "rate": 0.0,
        }
        if state in FINAL_STATES:
            values["finished_at"] = now
        with self.catalog.session() as session:
            res = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(res) == 1

    def request_cancel(self, job_id: int, now: datetime) -> Job:
        """Cancel now if not running; ask the running engine to stop otherwise.

        Both moves are compare-and-set updates, so a job another engine claims at
        the same moment is asked to stop rather than marked cancelled under it.
        """
        stoppable = (JobState.QUEUED, JobState.PAUSED)
        check_transition(job_id, stoppable, JobState.CANCELLED)
        with self.catalog.session() as session:
            stopped = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_(stoppable))
                .values(state=JobState.CANCELLED, finished_at=now)
                .execution_options(synchronize_session=False)
            )
            if rows_changed(stopped) != 1:
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == JobState.RUNNING)
                    .values(cancel_requested=True)
                    .execution_options(synchronize_session=False)
                )
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            if rows_changed(stopped) != 1 and job.state != JobState.RUNNING:
                raise JobError(f"job {job_id} already {job.state}; nothing to cancel")
            return job

    def request_pause(self, job_id: int) -> Job:
        check_transition(job_id, (JobState.QUEUED,), JobState.PAUSED)
        with self.catalog.session() as session:
            paused = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED)
                .values(state=JobState.PAUSED)
                .execution_options(synchronize_session=False)
            )
            if rows_changed(paused) != 1:
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == JobState.RUNNING)
                    .values(pause_requested=True)
                    .execution_options(synchronize_session=False)
                )
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            if rows_changed(paused) != 1 and job.state != JobState.RUNNING:
                raise JobError(f"job {job_id} is {job.state}; only queued or running jobs pause")
            return job

    def requeue(self, job_id: int, *, allowed_from: Sequence[str]) -> Job:
        """Resume a paused job or retry a failed/cancelled one."""
        with self.catalog.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            if job.state not in allowed_from:
                raise JobError(
                    f"job {job_id} is {job.state}; this needs a job that is "
                    + " or ".join(allowed_from)
                )
            check_transition(job_id, (job.state,), JobState.QUEUED)
            job.state = JobState.QUEUED
            job.cancel_requested = False
            job.pause_requested = False
            job.error = None
            job.finished_at = None
            if JobState.FAILED in allowed_from:
                job.takeovers = 0  # a retry by hand gets a fresh takeover
            return job

    def active_for_repository(self, repository_id: int) -> builtins.list[Job]:
        query = select(Job).where(
            Job.repository_id == repository_id,
            Job.state.in_((JobState.QUEUED, JobState.RUNNING)),
        )
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def clear_pause(self, job_id: int) -> None:
        with self.catalog.session() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(pause_requested=False)
                .execution_options(synchronize_session=False)
            )
