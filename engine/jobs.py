"""The job runner: a bounded thread pool that claims jobs from the catalog.

Several engines (the console, the headless daemon, another appliance) may share
one catalog. Each claims a job with a lease (a compare-and-set in the catalog)
and renews it with a heartbeat; a job whose engine died is claimed again once
its lease lapses, and resumes from its ``resume_point`` where the work allows.

A job's work is a handler registered per kind. It receives a JobContext to
report progress and to check for cancel or pause between chunks.

Stopping. Every long operation stops through its JobContext and nothing else:
``check()`` between steps, ``should_stop()`` as the poll of a child process or a
loop (qemu-img, hashing). Either remembers the stop it met (``ctx.stopped``, a
JobCancelled whose ``reason`` is a StopReason), and the runner records that reason
whatever exception the work unwound with, through one table (STOP_OUTCOMES):
cancel -> cancelled, pause -> paused (resume runs it again from its resume point),
shutdown of this engine -> back to the queue. Partial output is removed (a copy
keeps its partial file when paused or handed back, to resume from it).

A kind that writes VM disks' chains names them (``register(..., writes=)``): the
runner holds those disks' writer leases (``engine.writers``) around the handler,
and leaves a job whose disk another writer holds in the queue, with a note that
names that writer, while it starts other disks' jobs.

Takeover. A job whose lease lapsed (its engine died) is taken over by exactly one
engine (a compare-and-set on the row). That engine first settles the dead run:
the disk leases it left are taken over, which makes sure no process still holds
its partial files and removes them. Then the job runs again, once: every kind
is safe to re-run (a backup writes a new partial file and records a point only
when it is complete; a consolidation starts from the catalog's chain and the
merge's own recovery; copy and verify resume or start over; a restore rewrites
its target; a policy run backs up again and re-plans retention). A job whose
engine dies again is failed, not run a third time (``MAX_TAKEOVERS``), so a job
that kills its engine cannot take every engine down in turn. A kind registered
with ``takeover="fail"`` is failed at the first takeover instead.

When the catalog goes away under a running job (its progress, check or
heartbeat meets CatalogUnavailable), the job is stopped like a cancel
(CatalogLost: child processes killed, partial output removed) and ends failed
"because the catalog was unavailable while it ran". Its row cannot take that
outcome now, so the runner keeps it (engine.unrecorded) and writes it when the
catalog answers again, before claiming any work: the row never stays
``running`` to be re-run beside a new job.
"""

from __future__ import annotations

import builtins
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, Protocol

from engine.catalog.jobs import JobStore
from engine.catalog.models import Job
from engine.catalog.writers import DiskKey, Holder
from engine.clock import SYSTEM_CLOCK, Clock
from engine.config import JobSettings
from engine.errors import (
    CatalogUnavailable,
    JobCancelled,
    JobError,
    JobUnprotected,
    SendenseError,
    StopReason,
)
from engine.events import Event, EventBus
from engine.states import JobKind, JobState
from engine.unrecorded import Outcome, UnrecordedOutcomes, catalog_failure
from engine.writers import DiskBusy, DiskWriters, busy_sentence

log = logging.getLogger(__name__)

Handler = Callable[["JobContext"], dict[str, Any] | None]
#: the VM disks a job writes (its writer leases), from its row
Writes = Callable[[Job], Sequence[DiskKey]]
TAKEOVER_POLICIES = ("rerun", "fail")


@dataclass(frozen=True)
class JobHandler:
    """How a job kind runs: what a service returns from ``job_handlers()`` for each
    kind it owns; the Engine registers them all on its runner (engine.runtime)."""

    run: Handler
    #: the disks a job of this kind writes (the runner holds their writer leases)
    writes: Writes | None = None
    #: "rerun" (once) or "fail" when its engine died running it
    takeover: str = "rerun"


class RunsJobs(Protocol):
    """A service that owns job kinds."""

    def job_handlers(self) -> Mapping[JobKind, JobHandler]: ...


#: a job is taken over (re-run after its engine died) at most this often
MAX_TAKEOVERS = 1
#: how many claimable jobs the dispatcher looks at: queued jobs waiting for a busy
#: disk must not hide the jobs of other disks behind them
CANDIDATE_WINDOW = 64


def engine_owner() -> str:
    """A lease owner name unique to this engine: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobPaused(JobCancelled):
    """Raised inside a job's work when the operator paused it."""

    reason = StopReason.PAUSE


class LeaseLost(JobCancelled):
    """Another engine took the job over (our heartbeat lapsed)."""

    reason = StopReason.LOST


class EngineStopping(JobCancelled):
    """This engine is shutting down; the job goes back to the queue."""

    reason = StopReason.SHUTDOWN


class CatalogLost(JobCancelled):
    """The catalog became unavailable while the job ran: it stops as for a cancel
    (its work cleaned up) and ends failed once the catalog can record it."""

    reason = StopReason.CATALOG


#: a job's outcome that writes nothing: another engine owns its row now
LOST = "lost"
#: the one meaning of each stop: the state the job's row takes (LOST: none) and the
#: level of its event
STOP_OUTCOMES: dict[StopReason, tuple[str, str]] = {
    StopReason.CANCEL: (JobState.CANCELLED, "warning"),
    StopReason.PAUSE: (JobState.PAUSED, "info"),
    StopReason.SHUTDOWN: (JobState.QUEUED, "info"),
    StopReason.LOST: (LOST, "warning"),
    StopReason.CATALOG: (JobState.FAILED, "error"),
}


@dataclass
class ProgressMeter:
    """Rate (bytes/s, smoothed) and ETA from successive byte counts."""

    clock: Clock
    smoothing: float = 0.3
    _last_time: float | None = None
    _last_done: int = 0
    rate: float = 0.0

    def update(self, done: int, total: int) -> tuple[float, float | None]:
        now = self.clock.monotonic()
        if self._last_time is None:
            self._last_time, self._last_done = now, done
            return self.rate, None
        elapsed = now - self._last_time
        if elapsed >= 0.2:
            instant = max(0, done - self._last_done) / elapsed
            self.rate = (
                instant
                if self.rate == 0
                else (self.smoothing * instant + (1 - self.smoothing) * self.rate)
            )
            self._last_time, self._last_done = now, done
        eta = (total - done) / self.rate if self.rate > 0 and total >= done else None
        return self.rate, eta


class JobContext:
    """What a handler sees of its job."""

    def __init__(self, runner: JobRunner, job: Job) -> None:
        self.runner = runner
        self.job = job
        self.params: dict[str, Any] = dict(job.params or {})
        self.resume_point: dict[str, Any] | None = job.resume_point
        self._meter = ProgressMeter(runner.clock)
        # the clock starts when the job does, so the first report already has a rate
        self._meter.update(job.bytes_done, job.bytes_total)
        self._last_write = -1e9
        self._last_event = -1e9
        #: a stop the engine asked for (shutdown, lost lease, lost catalog)
        self._stop_reason: type[JobCancelled] | None = None
        #: the stop this job's work met (raised by check or seen by should_stop); the
        #: runner records it whatever exception the work unwound with
        self.stopped: JobCancelled | None = None
        self._last_poll = -1e9
        #: the outage that stopped this job, if its catalog went away while it ran
        self.catalog_error: CatalogUnavailable | None = None
        self.bytes_done = job.bytes_done
        self.bytes_total = job.bytes_total
        #: the VM disks whose writer leases the runner holds around the handler
        self.writes: tuple[DiskKey, ...] = ()
        #: the lease owner this job was taken over from (its engine died), if any
        self.taken_over_from: str | None = None

    @property
    def job_id(self) -> int:
        return self.job.id

    def stop(self, reason: type[JobCancelled]) -> None:
        self._stop_reason = reason

    def catalog_lost(self, error: CatalogUnavailable) -> CatalogLost:
        """Stop this job because its catalog is unavailable; returns what to raise."""
        if self.catalog_error is None:
            self.catalog_error = error
        self._stop_reason = CatalogLost
        lost = CatalogLost(f"job {self.job.id} stopped: {error.message}", hint=error.hint)
        if self.stopped is None:
            self.stopped = lost
        return lost

    def check(self) -> None:
        """Raise if the job must stop now (cancel, pause, lost lease, engine stop,
        catalog gone): a JobCancelled whose ``reason`` says which. Once stopped, a
        job stays stopped for the same reason."""
        if self.stopped is not None:
            raise self.stopped
        stop = self._requested_stop()
        if stop is not None:
            self.stopped = stop
            raise stop

    def should_stop(self) -> bool:
        """The polling form of ``check`` for work that runs a child process or a loop
        that cannot raise (qemu-img's ``should_stop``, hashing): True once the job
        must stop; the reason is kept in ``stopped`` (``raise_stop`` raises it). Asks
        the catalog at most every ``runner.stop_poll_interval`` seconds; a stop the
        engine asked for is seen at once."""
        if self.stopped is not None:
            return True
        now = time.monotonic()
        if self._stop_reason is None and now - self._last_poll < self.runner.stop_poll_interval:
            return False
        self._last_poll = now
        try:
            self.check()
        except JobCancelled:
            return True
        return False

    def raise_stop(self) -> NoReturn:
        """Raise the stop ``should_stop`` saw (a cancel when it saw none)."""
        raise self.stop_error()

    def stop_error(self) -> JobCancelled:
        """The stop this job met, to raise where work was interrupted by
        ``should_stop`` (a cancel if none was recorded)."""
        return self.stopped or JobCancelled(f"job {self.job.id} was stopped")

    def _requested_stop(self) -> JobCancelled | None:
        if self._stop_reason is CatalogLost and self.catalog_error is not None:
            return self.catalog_lost(self.catalog_error)
        if self._stop_reason is not None:
            return self._stop_reason(f"job {self.job.id} stopped")
        try:
            cancel, pause = self.runner.store.flags(self.job.id)
        except CatalogUnavailable as exc:
            return self.catalog_lost(exc)
        if cancel:
            return JobCancelled(f"job {self.job.id} was cancelled by the operator")
        if pause:
            return JobPaused(f"job {self.job.id} was paused by the operator")
        return None

    def progress(
        self,
        done: int,
        total: int | None = None,
        *,
        message: str | None = None,
        resume_point: dict[str, Any] | None = None,
        force: bool = False,
    ) -> None:
        """Report bytes done. Cheap to call often: catalog writes are throttled
        to a few a second, events to ten a second."""
        if total is not None:
            self.bytes_total = total
        self.bytes_done = done
        rate, eta = self._meter.update(done, self.bytes_total)
        now = self.runner.clock.monotonic()
        if resume_point is not None:
            self.resume_point = resume_point
        if force or now - self._last_write >= self.runner.progress_write_interval:
            self._last_write = now
            try:
                self.runner.store.progress(
                    self.job.id,
                    self.runner.owner,
                    bytes_done=done,
                    bytes_total=self.bytes_total,
                    rate=rate,
                    eta_seconds=eta,
                    message=message,
                    resume_point=self.resume_point,
                )
            except CatalogUnavailable as exc:
                raise self.catalog_lost(exc) from None
            if self.stopped is None:  # raised once; unwinding work may report on
                self.check()
        if force or now - self._last_event >= 0.1:
            self._last_event = now
            self.runner.bus.publish(
                Event(
                    kind="job.progress",
                    message=message or self.job.title,
                    source="jobs",
                    job_id=self.job.id,
                    record=False,
                    data={
                        "bytes_done": done,
                        "bytes_total": self.bytes_total,
                        "rate": rate,
                        "eta_seconds": eta,
                    },
                )
            )


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        bus: EventBus,
        *,
        settings: JobSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        owner: str | None = None,
        poll_interval: float = 0.5,
        writers: DiskWriters | None = None,
        unrecorded: UnrecordedOutcomes | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock
        self.settings = settings or JobSettings()
        self.owner = owner or engine_owner()
        self.poll_interval = poll_interval
        #: outcomes the catalog could not take when their jobs ended
        self.unrecorded = unrecorded or UnrecordedOutcomes()
        self.progress_write_interval = 0.5
        #: how often ``JobContext.should_stop`` asks the catalog for a cancel or pause
        self.stop_poll_interval = 0.25
        #: per-disk writer leases; None: no kind writes disks (a bare runner in tests)
        self.writers = writers
        self._handlers: dict[str, Handler] = {}
        self._writes: dict[str, Writes] = {}
        self._takeover: dict[str, str] = {}
        #: kinds whose handler is asked for at their first job (register_deferred)
        self._deferred: dict[str, Callable[[], JobHandler]] = {}
        #: the waiting note last written per queued job (so it is written once)
        self._waiting: dict[int, str] = {}
        self._running: dict[int, JobContext] = {}
        self._lock = threading.Lock()
        #: held while a job is queued (or queued again) and announced, and while one is
        #: claimed: a job queued here is never started before the event that queued it
        #: was recorded (the events would read "started" before "queued")
        self._announcing = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.lease_seconds)

    def register(
        self,
        kind: str,
        handler: Handler,
        *,
        writes: Writes | None = None,
        takeover: str = "rerun",
    ) -> None:
        """``writes``: the disks a job of this kind writes (held around it).
        ``takeover``: "rerun" (once) or "fail" when its engine died running it."""
        if takeover not in TAKEOVER_POLICIES:
            raise JobError(f"takeover policy {takeover!r} is unknown")
        self._handlers[kind] = handler
        self._takeover[kind] = takeover
        if writes is not None:
            self._writes[kind] = writes

    def register_deferred(self, kind: str, handler: Callable[[], JobHandler]) -> None:
        """A kind whose handler is asked for when a job of it is first claimed: the
        service that owns it is built then, not when its engine is (a command that
        waits for one restore builds no backup, copy or policy service)."""
        self._deferred[kind] = handler

    def _resolve(self, kind: str) -> bool:
        """Whether ``kind`` has a handler here, asking a deferred one for it first."""
        if kind not in self._handlers and kind in self._deferred:
            handler = self._deferred[kind]()
            self.register(kind, handler.run, writes=handler.writes, takeover=handler.takeover)
        return kind in self._handlers

    def kinds(self) -> list[str]:
        return sorted({*self._handlers, *self._deferred})

    # -- reading (front ends ask here, not the store) ---------------------------

    def get(self, job_id: int) -> Job:
        return self.store.get(job_id)

    def list(
        self, *, states: Sequence[str] | None = None, kind: str | None = None, limit: int = 200
    ) -> list[Job]:
        """Newest first."""
        return self.store.list(states=states, kind=kind, limit=limit)

    # -- submitting and steering --------------------------------------------

    def submit(
        self,
        kind: str,
        title: str,
        params: dict[str, Any] | None = None,
        *,
        repository_id: int | None = None,
        bytes_total: int = 0,
        priority: int = 100,
        actor: str | None = None,
    ) -> Job:
        with self._announcing:
            job = self.store.create(
                kind,
                title,
                now=self.clock.now(),
                params=params,
                repository_id=repository_id,
                bytes_total=bytes_total,
                priority=priority,
                actor=actor,
            )
            self.bus.publish(
                Event(
                    kind="job.queued",
                    message=f"queued: {title}",
                    source="jobs",
                    job_id=job.id,
                    repository_id=repository_id,
                    actor=actor,
                )
            )
        self._wake.set()
        return job

    def cancel(self, job_id: int, actor: str | None = None) -> Job:
        job = self.store.request_cancel(job_id, self.clock.now())
        self.bus.publish(
            Event(
                kind="job.cancel_requested" if job.state == JobState.RUNNING else "job.cancelled",
                message=f"cancel: {job.title}",
                source="jobs",
                job_id=job_id,
                actor=actor,
                level="warning",
            )
        )
        return job

    def pause(self, job_id: int, actor: str | None = None) -> Job:
        job = self.store.request_pause(job_id)
        self.bus.publish(
            Event(
                kind="job.pause_requested",
                message=f"pause: {job.title}",
                source="jobs",
                job_id=job_id,
                actor=actor,
            )
        )
        return job

    def resume(self, job_id: int, actor: str | None = None) -> Job:
        with self._announcing:
            job = self.store.requeue(job_id, allowed_from=(JobState.PAUSED,))
            self._announce_requeue(job, "resumed", actor)
        self._wake.set()
        return job

    def retry(self, job_id: int, actor: str | None = None) -> Job:
        with self._announcing:
            job = self.store.requeue(job_id, allowed_from=(JobState.FAILED, JobState.CANCELLED))
            self._announce_requeue(job, "retried", actor)
        self._wake.set()
        return job

    def _announce_requeue(self, job: Job, verb: str, actor: str | None) -> None:
        self.bus.publish(
            Event(
                kind=f"job.{verb}",
                message=f"{verb}: {job.title}",
                source="jobs",
                job_id=job.id,
                actor=actor,
            )
        )

    # -- running ---------------------------------------------------------------

    def start(self) -> None:
        if self._pool is not None:
            return
        self._stopping.clear()
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.max_concurrent, thread_name_prefix="sendense-job"
        )
        for target, name in ((self._dispatch_loop, "dispatch"), (self._heartbeat_loop, "beat")):
            thread = threading.Thread(target=target, name=f"sendense-jobs-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def request_stop(self) -> None:
        """Stop claiming and ask running jobs to stop (they go back to the queue);
        returns at once. ``stop`` also waits for them."""
        self._stopping.set()
        self._wake.set()
        self._stop_running()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; running jobs are asked to stop and go back to the queue."""
        self.request_stop()
        # the dispatcher may have claimed one more job while we were stopping
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        self._stop_running()
        if self._pool is not None:
            # queued work items still run: they see the stop and hand their job back
            self._pool.shutdown(wait=True)
            self._pool = None

    def _stop_running(self) -> None:
        with self._lock:
            for ctx in self._running.values():
                ctx.stop(EngineStopping)

    def running_ids(self) -> builtins.list[int]:
        with self._lock:
            return sorted(self._running)

    def wake(self) -> None:
        self._wake.set()

    def _free_slots(self) -> int:
        with self._lock:
            return self.settings.max_concurrent - len(self._running)

    def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.dispatch_once()
            except CatalogUnavailable:
                pass  # the catalog logged the outage once; keep trying quietly
            except SendenseError as exc:
                log.warning("job dispatch: %s", exc)
            except Exception:
                log.exception("job dispatch failed")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def dispatch_once(self) -> int:
        """Claim and start as many jobs as there are free slots; returns how many.

        A job that writes a disk another job writes (here or in another engine) stays
        queued; the ones behind it for other disks start meanwhile."""
        slots = self._free_slots()
        if slots <= 0 or not (self._handlers or self._deferred) or self._pool is None:
            return 0
        # outcomes kept during an outage go in first: their rows are `running` with a
        # lapsed lease, and must be settled, not claimed and run a second time (one
        # that could not be settled yet keeps its job out of reach)
        self.settle_unrecorded()
        kept = self.unrecorded.job_ids()
        started = 0
        now = self.clock.now()
        with self._lock:
            writing_here = {key: ctx for ctx in self._running.values() for key in ctx.writes}
        window = max(slots * 4, CANDIDATE_WINDOW)
        candidates = self.store.candidates(now, self.kinds(), limit=window)
        seen = {job.id for job in candidates}
        with self._lock:
            for job_id in [i for i in self._waiting if i not in seen]:
                del self._waiting[job_id]  # started elsewhere, cancelled or finished
        for candidate in candidates:
            if started >= slots or self._stopping.is_set():
                break
            if candidate.id in kept:
                continue
            with self._lock:
                if candidate.id in self._running:
                    continue  # ours already: its lease lapsed while it ran here
            try:
                writes = self._writes_of(candidate)
            except CatalogUnavailable:
                raise
            except Exception:
                # its kind's service could not be built (register_deferred): it stays
                # queued, and the jobs behind it of other kinds still start
                log.exception(
                    "job %s: no %s handler could be made here", candidate.id, candidate.kind
                )
                continue
            blocker = self._blocker(writes, writing_here, now)
            if blocker is not None:
                if blocker.job_id != candidate.id:  # its own disk lease, not lapsed yet
                    self._note_waiting(candidate, blocker, now)
                continue
            lapsed = candidate.state == JobState.RUNNING
            claim = self.store.take_over if lapsed else self.store.claim_queued
            # the time of the claim itself, not of the look at the queue: a job queued
            # since that look (or across a clock jump) never starts before it was queued
            with self._announcing:
                job = claim(candidate.id, self.owner, self.clock.now(), self.lease)
            if job is None:
                continue  # another engine won the race
            with self._lock:
                self._waiting.pop(job.id, None)
            ctx = JobContext(self, job)
            ctx.writes = writes
            if lapsed:
                ctx.taken_over_from = candidate.lease_owner or "?"
            with self._lock:
                self._running[job.id] = ctx
            writing_here.update((key, ctx) for key in writes)
            self._pool.submit(self._run, ctx)
            started += 1
        return started

    def _writes_of(self, job: Job) -> tuple[DiskKey, ...]:
        self._resolve(job.kind)
        writes = self._writes.get(job.kind)
        if writes is None or self.writers is None:
            return ()
        try:
            return tuple(sorted(set(writes(job))))
        except SendenseError as exc:  # e.g. its chain is gone: the handler will say so
            log.debug("job %s: disks it writes unknown: %s", job.id, exc)
            return ()

    def _blocker(
        self, writes: Sequence[DiskKey], writing_here: dict[DiskKey, JobContext], now: datetime
    ) -> Holder | None:
        for key in writes:
            ctx = writing_here.get(key)
            if ctx is not None:
                return Holder(
                    key=key,
                    token="",
                    operation=ctx.job.kind,
                    job_id=ctx.job.id,
                    owner=self.owner,
                    actor=ctx.job.actor,
                    acquired_at=ctx.job.started_at or now,
                    expires_at=now,
                    output=None,
                )
        if writes and self.writers is not None:
            return self.writers.blocker(writes)
        return None

    def _note_waiting(self, job: Job, blocker: Holder, now: datetime) -> None:
        sentence = busy_sentence(blocker, now)
        with self._lock:
            if self._waiting.get(job.id) == sentence:
                return
            self._waiting[job.id] = sentence
        self.store.note(job.id, sentence)
        self.bus.publish(
            Event(
                kind="job.waiting",
                message=f"job {job.id} waits: {sentence}",
                source="jobs",
                job_id=job.id,
                repository_id=job.repository_id,
                data={"sentence": sentence, "blocking_job_id": blocker.job_id},
            )
        )

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.settings.heartbeat_seconds):
            with self._lock:
                contexts = list(self._running.values())
            for ctx in contexts:
                try:
                    if not self.store.heartbeat(
                        ctx.job_id, self.owner, self.clock.now(), self.lease
                    ):
                        ctx.stop(LeaseLost)
                except CatalogUnavailable as exc:
                    # the lease cannot be renewed: stop before another engine may
                    # take the job over when the catalog is back
                    ctx.catalog_lost(exc)
                except SendenseError as exc:
                    log.warning("heartbeat for job %s: %s", ctx.job_id, exc)
                except Exception:  # one odd database error must not end every heartbeat
                    log.exception("heartbeat for job %s", ctx.job_id)

    def _run(self, ctx: JobContext) -> None:
        try:
            self._run_job(ctx)
        except CatalogUnavailable:
            pass  # logged once by the catalog; the outcome was kept for later
        except SendenseError as exc:
            log.warning("job %s: %s", ctx.job_id, exc)
        except Exception:
            log.exception("job %s: runner failed", ctx.job_id)
        finally:
            with self._lock:
                if self._running.get(ctx.job_id) is ctx:
                    del self._running[ctx.job_id]
            self._wake.set()

    def _run_job(self, ctx: JobContext) -> None:
        job = ctx.job
        self._resolve(job.kind)
        handler = self._handlers[job.kind]
        if ctx._stop_reason is EngineStopping:
            # claimed just before the engine began to stop: hand it straight back
            with self._lock:
                if self._running.get(job.id) is ctx:
                    del self._running[job.id]
            try:
                self.store.finish(job.id, self.owner, JobState.QUEUED, self.clock.now())
            except CatalogUnavailable as exc:
                self._keep_unrecorded(ctx, JobState.QUEUED, None, exc)
            return
        if ctx.taken_over_from is not None:
            refused = self._settle_takeover(ctx)
            if refused is not None:
                self._end(ctx, JobState.FAILED, refused, None, "error")
                return
        self.bus.publish(
            Event(
                kind="job.started",
                message=f"started: {job.title}",
                source="jobs",
                job_id=job.id,
                repository_id=job.repository_id,
                data={"owner": self.owner, "attempt": job.attempts},
            )
        )
        # a JobState, or LOST (no row state: another engine owns it)
        state: str = JobState.SUCCEEDED
        error: str | None = None
        result: dict[str, Any] | None = None
        level = "info"
        try:
            with self._writing(ctx):
                result = handler(ctx) or {}
        except DiskBusy as exc:
            # another writer took the disk between the dispatcher's look and ours
            state, error, level = JobState.QUEUED, None, "info"
            self._note_waiting(job, exc.holder, self.clock.now())
        except CatalogUnavailable as exc:  # met by the handler's own catalog calls
            ctx.catalog_lost(exc)
            state, error, level = JobState.FAILED, exc.for_humans(), "error"
        except JobCancelled as exc:
            # the reason the work stopped for, even where it unwound with a bare cancel
            # (a child process killed because ``should_stop`` said so)
            state, error, level = self._stop_outcome(ctx.stopped or exc)
        except JobUnprotected as exc:
            # the files are good restore points, but not locked: never "succeeded"
            state, error, level = JobState.FAILED_UNPROTECTED, exc.for_humans(), "error"
            result = exc.result
        except SendenseError as exc:
            state, error, level = JobState.FAILED, exc.for_humans(), "error"
        except Exception as exc:
            log.exception("job %s (%s) crashed", job.id, job.kind)
            state, error, level = JobState.FAILED, f"internal error: {exc!r}", "error"
        finally:
            with self._lock:
                if self._running.get(job.id) is ctx:
                    del self._running[job.id]
        self._end(ctx, state, error, result, level)

    @staticmethod
    def _stop_outcome(stop: JobCancelled) -> tuple[str, str | None, str]:
        """(state, error, level) for a job whose work stopped: STOP_OUTCOMES."""
        state, level = STOP_OUTCOMES[stop.reason]
        if stop.reason is StopReason.LOST:
            return state, "another engine took the job over", level
        if stop.reason in (StopReason.PAUSE, StopReason.SHUTDOWN):
            return state, None, level
        return state, str(stop), level

    def _end(
        self,
        ctx: JobContext,
        state: str,
        error: str | None,
        result: dict[str, Any] | None,
        level: str,
    ) -> None:
        """Record a job's outcome (if we still hold it) and announce it."""
        job = ctx.job
        outage = self.store.catalog.outage
        if ctx.catalog_error is None and state == JobState.QUEUED and outage is not None:
            # handed back while the catalog is away (a CLI leaving on the outage):
            # it ends failed like the jobs that met the outage, not re-run later
            ctx.catalog_error = CatalogUnavailable(outage)
        if ctx.catalog_error is not None and state != JobState.SUCCEEDED:
            # whatever the handler made of it (a cancel, a failed disk…), the job
            # stopped because its catalog went away: say that, once
            state, error, level = JobState.FAILED, catalog_failure(ctx.catalog_error), "error"
        if state != LOST:
            try:
                if state == JobState.SUCCEEDED:
                    # the final byte count, so a finished job shows 100 %
                    self.store.progress(
                        job.id,
                        self.owner,
                        bytes_done=ctx.bytes_done,
                        bytes_total=ctx.bytes_total,
                        rate=0.0,
                        eta_seconds=None,
                    )
                if state == JobState.PAUSED:
                    self.store.clear_pause(job.id)
                recorded = self.store.finish(
                    job.id, self.owner, state, self.clock.now(), error=error, result=result
                )
            except CatalogUnavailable as exc:
                self._keep_unrecorded(ctx, state, error, exc, result)
                return
            if not recorded:
                state, error = LOST, "the lease lapsed before the job finished"
        words: dict[str, str] = {
            JobState.SUCCEEDED: "finished",
            JobState.QUEUED: "returned to the queue",
            JobState.FAILED_UNPROTECTED: "finished but NOT protected",
        }
        self.bus.publish(
            Event(
                kind=f"job.{state}",
                message=f"{words.get(state, state)}: {job.title}"
                + (f" ({error})" if error else ""),
                level=level,
                source="jobs",
                job_id=job.id,
                repository_id=job.repository_id,
                data={"result": result or {}},
            )
        )
        self._wake.set()

    @contextmanager
    def _writing(self, ctx: JobContext) -> Iterator[None]:
        """The job's disks held (and its holds named after it) around its handler."""
        if self.writers is None:
            yield
            return
        job = ctx.job
        with self.writers.job_scope(job.id, job.actor):
            if not ctx.writes:
                yield
                return
            with self.writers.hold_all(
                ctx.writes, operation=job.kind, on_lost=lambda: ctx.stop(LeaseLost)
            ):
                yield

    def _settle_takeover(self, ctx: JobContext) -> str | None:
        """A job taken over from a dead engine: clean up after it, then say whether it
        may run again (None) or why it is failed instead."""
        job = ctx.job
        dead = ctx.taken_over_from
        if self.writers is not None:
            try:
                self.writers.settle_job(job.id)
            except SendenseError as exc:
                return f"its engine {dead} stopped while running it, and {exc.message}"
        if job.takeovers > MAX_TAKEOVERS:
            return (
                f"its engine stopped while running it {job.takeovers} times (last {dead}); "
                "it is not run again: retry it by hand if it is still needed"
            )
        if self._takeover.get(job.kind) == "fail":
            return (
                f"its engine {dead} stopped while running it; a {job.kind} job is not "
                "re-run automatically: retry it by hand if it is still needed"
            )
        self.bus.publish(
            Event(
                kind="job.taken_over",
                message=f"job {job.id} ({job.title}) was taken over from engine {dead}, "
                "which stopped while running it; it runs again",
                level="warning",
                source="jobs",
                job_id=job.id,
                repository_id=job.repository_id,
                data={"previous_owner": dead, "takeovers": job.takeovers},
            )
        )
        return None

    # -- outcomes the catalog could not take ----------------------------------------

    def _keep_unrecorded(
        self,
        ctx: JobContext,
        state: str,
        error: str | None,
        exc: CatalogUnavailable,
        result: dict[str, Any] | None = None,
    ) -> None:
        """The job ended but its row cannot be written: keep the outcome until the
        catalog answers. Only a finished or cancelled job keeps its state; anything
        else (stopped, paused, handed back) ends failed, so it is never re-run beside
        a new job of the same work."""
        job = ctx.job
        if state not in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
            state, error = JobState.FAILED, catalog_failure(ctx.catalog_error or exc)
        self.unrecorded.keep(
            Outcome(
                job_id=job.id,
                owner=self.owner,
                state=state,
                error=error,
                at=self.clock.now(),
                title=job.title,
                repository_id=job.repository_id,
            )
        )
        # not "job.succeeded": the catalog does not say so yet
        kind = "job.unrecorded" if state == JobState.SUCCEEDED else f"job.{state}"
        self.bus.publish(
            Event(
                kind=kind,
                message=f"{state}: {job.title}"
                + (f" ({error})" if error else "")
                + "; the catalog will record it when it answers again",
                level="warning" if state == JobState.SUCCEEDED else "error",
                source="jobs",
                job_id=job.id,
                repository_id=job.repository_id,
                data={"result": result or {}, "unrecorded": True},
            )
        )
        self._wake.set()

    def settle_unrecorded(self) -> int:
        """Write outcomes kept during an outage into their rows (quietly nothing while
        the catalog is still away); returns how many were settled."""
        if not self.unrecorded.has_pending():
            return 0
        try:
            return self.unrecorded.settle(self.store, self.bus)
        except CatalogUnavailable:
            return 0


__all__ = [
    "STOP_OUTCOMES",
    "CatalogLost",
    "EngineStopping",
    "Handler",
    "JobContext",
    "JobError",
    "JobHandler",
    "JobPaused",
    "JobRunner",
    "LeaseLost",
    "ProgressMeter",
    "RunsJobs",
    "StopReason",
]
