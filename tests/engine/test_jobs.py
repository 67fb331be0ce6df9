# ruff: noqa: F401, F811  (fixtures imported from tests.engine.diskgen)
"""The job runner: state machine, progress, concurrency, leases, two processes.

Runs on both catalog backends (``[sqlite]`` and ``[mariadb]``) through the
``engine_factory`` fixture.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.catalog import jobs as catalog_jobs
from engine.catalog.jobs import TRANSITIONS, JobStore, check_transition
from engine.catalog.models import Job
from engine.clock import FixedClock
from engine.config import JobSettings
from engine.errors import JobError, NotFoundError, ValidationError
from engine.events import Event
from engine.jobs import JobContext, ProgressMeter
from engine.runtime import Engine
from engine.states import JobState
from tests.engine.diskgen import SourceDisk, bk_engine, disk, repo, sha256_of
from tests.plugins.common import EngineFactory

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("jobs_worker.py")


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def wait_state(engine: Engine, job_id: int, *states: str, timeout: float = 10.0) -> Job:
    job: Job = wait_for(
        lambda: (j := engine.job_store.get(job_id)).state in states and j,
        timeout,
        f"job {job_id} to be {' or '.join(states)}",
    )
    return job


def runner_engine(
    engine_factory: EngineFactory,
    clock: FixedClock,
    *,
    owner: str = "engine-a",
    max_concurrent: int = 2,
    lease_seconds: float = 30.0,
    heartbeat_seconds: float = 5.0,
    handlers: dict[str, Callable[[JobContext], Any]] | None = None,
    start: bool = True,
) -> Engine:
    engine = engine_factory(
        clock=clock,
        owner=owner,
        jobs=JobSettings(
            max_concurrent=max_concurrent,
            lease_seconds=lease_seconds,
            heartbeat_seconds=heartbeat_seconds,
        ),
    )
    engine.jobs.poll_interval = 0.02
    for kind, handler in (handlers or {}).items():
        engine.jobs.register(kind, handler)
    if start:
        engine.start()
    return engine


def audit_kinds(engine: Engine, job_id: int) -> list[str]:
    return [e.kind for e in reversed(engine.audit.query(limit=1000)) if e.job_id == job_id]


def until_stopped(ctx: JobContext, started: threading.Event | None = None) -> None:
    """A handler body that works in small steps until told to stop."""
    if started is not None:
        started.set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ctx.check()
        time.sleep(0.01)
    raise AssertionError("the handler was never stopped")


# -- state machine -----------------------------------------------------------------


def test_a_job_runs_to_success_and_the_audit_log_tells_the_story(
    engine_factory: EngineFactory, clock: FixedClock
) -> None:
    def work(ctx: JobContext) -> dict[str, Any]:
        for done in (0, 512, 1024):
            ctx.progress(done, 1024, force=True)
        return {"copied": ctx.params["name"]}

    engine = runner_engine(engine_factory, clock, handlers={"copy": work})
    progress_events: list[Event] = []
    engine.bus.subscribe(progress_events.append, kinds=("job.progress",))

    job = engine.jobs.submit("copy", "copy web01", {"name": "web01"})
    assert job.state == "queued"
    done = wait_state(engine, job.id, "succeeded", "failed")

    assert done.state == "succeeded"
    assert done.result == {"copied": "web01"}
    assert done.error is None
    assert done.attempts == 1
    assert done.lease_owner is None and done.lease_expires_at is None
    assert done.started_at == clock.now() and done.finished_at == clock.now()
    assert (done.bytes_done, done.bytes_total) == (1024, 1024)

    wait_for(lambda: "job.succeeded" in audit_kinds(engine, job.id), what="job.succeeded")
    assert audit_kinds(engine, job.id) == ["job.queued", "job.started", "job.succeeded"]
    # progress reached subscribers but is too chatty for the audit log
    assert progress_events and all(e.job_id == job.id for e in progress_events)


def test_a_kind_whose_service_cannot_be_built_holds_back_only_its_own_jobs(
    engine_factory: EngineFactory, clock: FixedClock
) -> None:
    """Services are built at a kind's first job (register_deferred): one that cannot be
    built (here its constructor fails) leaves its job queued, untouched, and the jobs of
    other kinds queued behind it still run."""
    builds: list[str] = []

    def broken_service() -> Any:
        builds.append("tried")
        raise RuntimeError("the service's tool is missing")

    engine = runner_engine(engine_factory, clock, handlers={"copy": lambda ctx: {"ok": 1}})
    engine.jobs.register_deferred("verify", broken_service)
    stuck = engine.jobs.submit("verify", "verify web01", {})
    later = engine.jobs.submit("copy", "copy web01", {})
    assert wait_state(engine, later.id, "succeeded", "failed").state == "succeeded"
    wait_for(lambda: len(builds) >= 2, what="the broken kind tried on a later look too")
    held = engine.jobs.get(stuck.id)
    assert held.state == "queued" and held.attempts == 0 and held.lease_owner is None


def test_a_job_queued_while_the_runner_looks_starts_when_it_is_claimed(
    engine_factory: EngineFactory, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An hour passes between the runner's look at the queue and its claim (a loaded
    machine, a clock that jumps): the job starts at its claim, never before it was
    queued. It took the look's time before: a job that ran 0 s was recorded as 3,600 s
    in the duration histogram."""
    engine = runner_engine(engine_factory, clock, handlers={"copy": lambda ctx: None}, start=False)
    store = engine.jobs.store
    real_candidates = store.candidates

    def an_hour_passes_while_looking(now: Any, kinds: Any, limit: int) -> list[Job]:
        found = real_candidates(now, kinds, limit)
        if found:
            clock.advance(3600)
        return found

    monkeypatch.setattr(store, "candidates", an_hour_passes_while_looking)
    job = engine.jobs.submit("copy", "copy web01", {})
    queued_at = clock.now()
    engine.start()

    done = wait_state(engine, job.id, "succeeded", "failed")

    assert done.started_at is not None and done.started_at >= queued_at
    assert done.started_at == clock.now() and done.finished_at == clock.now()


def test_a_failing_job_records_the_error_sentence(
    engine_factory: EngineFactory, clock: FixedClock
) -> None:
    def bad_source(ctx: JobContext) -> None:
        raise ValidationError(
            "source /dev/vg/web01 does not exist", hint="check the policy's disk list"
        )

    def crash(ctx: JobContext) -> None:
        raise ZeroDivisionError("division by zero")

    engine = runner_engine(engine_factory, clock, handlers={"bad": bad_source, "crash": crash})
    bad = engine.jobs.submit("bad", "backup web01")
    crashed = engine.jobs.submit("crash", "verify web01")

    failed = wait_state(engine, bad.id, "failed", "succeeded")
    assert failed.state == "failed"
    assert failed.error == "source /dev/vg/web01 does not exist\n  -> check the policy's disk list"
    assert failed.finished_at is not None and failed.lease_owner is None
    internal = wait_state(engine, crashed.id, "failed", "succeeded")
    assert internal.error is not None and "internal error" in internal.error
    assert "ZeroDivisionError" in internal.error

    wait_for(lambda: "job.failed" in audit_kinds(engine, bad.id), what="job.failed")
    entry = next(e for e in engine.audit.query(source="jobs") if e.kind == "job.failed")
    assert entry.level == "error"


def test_cancel_a_queued_job_and_it_never_runs(
    engine_factory: EngineFactory, clock: FixedClock
) -> None:
    ran: list[int] = []
    engine = runner_engine(
        engine_factory, clock, handlers={"copy": lambda ctx: ran.append(ctx.job_id)}, start=False
    )
    job = engine.jobs.submit("copy", "copy web01")
    cancelled = engine.jobs.cancel(job.id, actor="alice")
    assert cancelled.state == "cancelled"
    assert engine.job_store.get(job.id).finished_at == clock.now()
    engine.start()
    other = engine.jobs.submit("copy", "copy db01")
    wait_state(engine, other.id, "succeeded")
    assert ran == [other.id]
    assert engine.job_store.get(job.id).state == "cancelled"
    with pytest.raises(JobError, match="already cancelled"):
        engine.jobs.cancel(job.id)


def test_cancel_a_running_job(engine_factory: EngineFactory, clock: FixedClock) -> None:
    started = threading.Event()
    engine = runner_engine(
        engine_factory, clock, handlers={"copy": lambda ctx: until_stopped(ctx, started)}
    )
    job = engine.jobs.submit("copy", "copy web01")
    assert started.wait(10)
    assert engine.jobs.cancel(job.id).state == "running"  # asked, not yet stopped
    done = wait_state(engine, job.id, "cancelled", "failed", "succeeded")
    assert done.state == "cancelled"
    assert done.error is not None and "cancelled by the operator" in done.error
    wait_for(lambda: "job.cancelled" in audit_kinds(engine, job.id), what="job.cancelled")
    assert "job.cancel_requested" in audit_kinds(engine, job.id)


def test_pause_then_resume_from_the_resume_point(
    engine_factory: EngineFactory, clock: FixedClock
) -> None:
    seen: list[dict[str, Any] | None] = []
    started = threading.Event()

    def resumable(ctx: JobContext) -> dict[str, Any]:
        seen.append(ctx.resume_point)
        if ctx.resume_point is None:
            ctx.progress(40, 100, resume_point={"offset": 40}, force=True)
            until_stopped(ctx, started)
        return {"resumed_from": ctx.resume_point["offset"] if ctx.resume_point else None}

    engine = runner_engine(engine_factory, clock, handlers={"copy": resumable})
    job = engine.jobs.submit("copy", "copy web01", bytes_total=100)
    assert started.wait(10)
    engine.jobs.pause(job.id)
    paused = wait_state(engine, job.id, "paused", "failed", "succeeded")
    assert paused.state == "paused"
    assert paused.resume_point == {"offset": 40}
    assert paused.bytes_done == 40
    assert paused.pause_requested is False and paused.lease_owner is None

    with pytest.raises(JobError, match="paused"):
        engine.jobs.retry(job.id)  # retry is for failed/cancelled, resume is for paused
    engine.jobs.resume(job.id)
    done = wait_state(engine, job.id, "succeeded", "failed")
    assert done.state == "succeeded"
    assert done.result == {"resumed_from": 40}
    assert done.attempts == 2
    assert seen == [None, {"offset": 40}]


def test_pause_a_queued_job_then_resume(engine_factory: EngineFactory, clock: FixedClock) -> None:
    engine = runner_engine(engine_factory, clock, handlers={"copy": lambda ctx: None}, start=False)
    job = engine.jobs.submit("copy", "copy web01")
    assert engine.jobs.pause(job.id).state == "paused"
    engine.start()
    time.sleep(0.1)
    assert engine.job_store.get(job.id).state == "paused"  # not claimed while paused
    engine.jobs.resume(job.id)
    assert wait_state(engine, job.id, "succeeded").state == "succeeded"
    with pytest.raises(JobError, match="only queued or running jobs pause"):
        engine.jobs.pause(job.id)
    with pytest.raises(JobError, match="succeeded"):
        engine.jobs.resume(job.id)


def test_retry_a_failed_job(engine_factory: EngineFactory, clock: FixedClock) -> None:
    calls = Counter[str]()

    def flaky(ctx: JobContext) -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValidationError("the repository is not mounted")
        return {"try": calls["n"]}

    engine = runner_engine(engine_factory, clock, handlers={"copy": flaky})
    job = engine.jobs.submit("copy", "copy web01")
    assert wait_state(engine, job.id, "failed", "succeeded").state == "failed"
    # the runner records the state, then publishes job.failed: an operator's retry
    # can land in between, so the order asserted below waits for the event first
    wait_for(lambda: "job.failed" in audit_kinds(engine, job.id), what="job.failed")
    retried = engine.jobs.retry(job.id, actor="bob")
    assert retried.state == "queued" and retried.error is None
    done = wait_state(engine, job.id, "succeeded", "failed")
    assert done.state == "succeeded"
    assert done.result == {"try": 2}
    assert done.error is None and done.attempts == 2
    wait_for(lambda: "job.succeeded" in audit_kinds(engine, job.id), what="job.succeeded")
    assert audit_kinds(engine, job.id) == [
        "job.queued",
        "job.started",
        "job.failed",
        "job.retried",
        "job.started",
        "job.succeeded",
    ]


def test_a_job_never_starts_before_the_event_that_queued_it_is_recorded(
    engine_factory: EngineFactory, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row exists a moment before its "queued" (or "retried") event is written: a
    runner looking at the queue in that moment must not start the job yet, or the
    events read "started" before "queued". The audit log is made slow to write
    exactly those events, so the moment is long."""
    engine = runner_engine(
        engine_factory, clock, handlers={"copy": lambda ctx: {"ok": 1}, "verify": flaky_once()}
    )
    append = engine.audit.append

    def slow_append(**entry: Any) -> Any:
        if entry["kind"] in ("job.queued", "job.retried"):
            time.sleep(0.3)  # the dispatcher polls every 20 ms meanwhile
        return append(**entry)

    monkeypatch.setattr(engine.audit, "append", slow_append)
    job = engine.jobs.submit("copy", "copy web01")
    wait_state(engine, job.id, "succeeded")
    wait_for(lambda: "job.succeeded" in audit_kinds(engine, job.id), what="job.succeeded")
    assert audit_kinds(engine, job.id) == ["job.queued", "job.started", "job.succeeded"]

    failed = engine.jobs.submit("verify", "verify web01")
    wait_state(engine, failed.id, "failed")
    wait_for(lambda: "job.failed" in audit_kinds(engine, failed.id), what="job.failed")
    engine.jobs.retry(failed.id)
    wait_state(engine, failed.id, "succeeded")
    wait_for(lambda: "job.succeeded" in audit_kinds(engine, failed.id), what="job.succeeded")
    assert audit_kinds(engine, failed.id)[3:] == ["job.retried", "job.started", "job.succeeded"]


def flaky_once() -> Callable[[JobContext], dict[str, int]]:
    """A handler that fails its first run and succeeds after."""
    calls = Counter[str]()

    def flaky(ctx: JobContext) -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValidationError("the repository is not mounted")
        return {"try": calls["n"]}

    return flaky


# -- progress ----------------------------------------------------------------------


def test_progress_meter_rate_and_eta_on_a_fixed_clock() -> None:
    clock = FixedClock()
    meter = ProgressMeter(clock)
    assert meter.update(0, 1000) == (0.0, None)  # first sample: no rate yet
    clock.advance(2)
    rate, eta = meter.update(200, 1000)
    assert rate == pytest.approx(100.0)
    assert eta == pytest.approx(8.0)
    clock.advance(0.05)  # too soon to measure: the rate holds
    assert meter.update(210, 1000)[0] == pytest.approx(100.0)
    clock.advance(1.95)  # 300 B in the 2 s since the last measured sample: 150 B/s
    rate, eta = meter.update(500, 1000)
    assert rate == pytest.approx(0.3 * 150 + 0.7 * 100)  # smoothed, no jump to 150
    assert eta == pytest.approx(500 / rate)
    clock.advance(1)
    assert meter.update(1000, 1000)[1] == 0  # done: nothing left to wait for


def test_progress_is_recorded_while_the_job_runs(
    engine_factory: EngineFactory, clock: FixedClock
) -> None:
    reported = threading.Event()
    release = threading.Event()

    def copy(ctx: JobContext) -> None:
        clock.advance(4)  # 4 s after the job started, 2 MiB are done
        ctx.progress(2 * 1024**2, 10 * 1024**2, message="copying web01", force=True)
        reported.set()
        assert release.wait(10)
        ctx.progress(10 * 1024**2, force=True)

    engine = runner_engine(engine_factory, clock, handlers={"copy": copy})
    job = engine.jobs.submit("copy", "copy web01", bytes_total=10 * 1024**2)
    assert reported.wait(10)
    try:
        running = engine.job_store.get(job.id)
    finally:
        release.set()
    assert running.state == "running"
    assert (running.bytes_done, running.bytes_total) == (2 * 1024**2, 10 * 1024**2)
    assert running.rate == pytest.approx(512 * 1024)  # 2 MiB in 4 s
    assert running.eta_seconds == pytest.approx(16.0)  # 8 MiB left at 512 KiB/s
    assert running.message == "copying web01"
    done = wait_state(engine, job.id, "succeeded", "failed")
    assert done.state == "succeeded"
    assert done.bytes_done == done.bytes_total == 10 * 1024**2
    assert done.rate == 0.0 and done.eta_seconds is None


# -- concurrency and leases --------------------------------------------------------


def test_never_more_than_max_concurrent_jobs(
    engine_factory: EngineFactory, clock: FixedClock
) -> None:
    lock = threading.Lock()
    now_running = 0
    peak = 0
    # the first jobs wait until two run side by side (or 10 s pass), so on a loaded
    # machine the runner's second slot is used for sure, not by luck of timing
    two_ran = threading.Event()

    def busy(ctx: JobContext) -> None:
        nonlocal now_running, peak
        with lock:
            now_running += 1
            peak = max(peak, now_running)
            if now_running == 2:
                two_ran.set()
        two_ran.wait(10)
        time.sleep(0.02)
        with lock:
            now_running -= 1

    engine = runner_engine(engine_factory, clock, max_concurrent=2, handlers={"busy": busy})
    jobs = [engine.jobs.submit("busy", f"job {n}") for n in range(7)]
    for job in jobs:
        assert wait_state(engine, job.id, "succeeded", "failed").state == "succeeded"
    assert peak == 2


def test_a_lapsed_lease_is_taken_over_and_the_old_owner_cannot_finish(
    engine_factory: EngineFactory, clock: FixedClock
) -> None:
    """Engine A hangs without heartbeats; B claims the job once A's lease lapses."""
    a_started = threading.Event()
    a_release = threading.Event()

    def hang(ctx: JobContext) -> dict[str, str]:
        a_started.set()
        assert a_release.wait(10)
        return {"by": "a"}

    a = runner_engine(
        engine_factory,
        clock,
        owner="engine-a",
        lease_seconds=5,
        heartbeat_seconds=3600,  # A never renews its lease
        handlers={"copy": hang},
    )
    job = a.jobs.submit("copy", "copy web01")
    assert a_started.wait(10)
    assert a.job_store.get(job.id).lease_owner == "engine-a"

    b = runner_engine(
        engine_factory, clock, owner="engine-b", handlers={"copy": lambda ctx: {"by": "b"}}
    )
    time.sleep(0.1)
    assert b.job_store.get(job.id).lease_owner == "engine-a"  # lease still valid
    clock.advance(timedelta(seconds=6))  # A's lease lapses
    b.jobs.wake()
    done = wait_state(b, job.id, "succeeded")
    assert done.result == {"by": "b"}
    assert done.attempts == 2

    lost: list[Event] = []
    a.bus.subscribe(lost.append, kinds=("job.lost",))
    a_release.set()
    wait_for(lambda: lost, what="engine A to notice it lost the job")
    assert "lease lapsed" in lost[0].message
    final = b.job_store.get(job.id)
    assert final.state == "succeeded" and final.result == {"by": "b"}


def test_store_claim_is_compare_and_set(engine: Engine, clock: FixedClock) -> None:
    store: JobStore = engine.job_store
    job = store.create("copy", "copy web01", now=clock.now())
    lease = timedelta(seconds=30)
    assert store.claim(job.id, "a", clock.now(), lease) is not None
    assert store.claim(job.id, "b", clock.now(), lease) is None  # A holds a valid lease
    assert store.heartbeat(job.id, "a", clock.now(), lease)
    assert not store.heartbeat(job.id, "b", clock.now(), lease)
    clock.advance(31)
    assert store.claim(job.id, "b", clock.now(), lease) is not None
    assert not store.heartbeat(job.id, "a", clock.now(), lease)
    assert not store.finish(job.id, "a", "succeeded", clock.now())
    assert store.finish(job.id, "b", "succeeded", clock.now())
    assert store.get(job.id).state == "succeeded"
    with pytest.raises(JobError):
        store.finish(job.id, "b", "exploded", clock.now())


def test_stop_returns_running_jobs_to_the_queue(
    engine_factory: EngineFactory, clock: FixedClock
) -> None:
    started = threading.Event()
    a = runner_engine(
        engine_factory,
        clock,
        owner="engine-a",
        handlers={"copy": lambda ctx: until_stopped(ctx, started)},
    )
    job = a.jobs.submit("copy", "copy web01")
    assert started.wait(10)
    a.jobs.stop(timeout=10)
    back = a.job_store.get(job.id)
    assert back.state == "queued"
    assert back.lease_owner is None and back.error is None
    assert a.jobs.running_ids() == []

    b = runner_engine(
        engine_factory, clock, owner="engine-b", handlers={"copy": lambda ctx: {"by": "b"}}
    )
    done = wait_state(b, job.id, "succeeded", "failed")
    assert done.result == {"by": "b"} and done.attempts == 2


# -- the state machine is enforced -------------------------------------------------


def test_an_illegal_transition_raises_a_sentence_and_changes_nothing(
    engine: Engine, clock: FixedClock
) -> None:
    store: JobStore = engine.job_store
    job = store.create("copy", "copy web01", now=clock.now())
    assert store.claim(job.id, "a", clock.now(), timedelta(seconds=30)) is not None
    assert store.finish(job.id, "a", "succeeded", clock.now())
    # a caller that would let a succeeded job run again is refused by the table itself
    with pytest.raises(JobError, match=r"a succeeded job cannot become queued \(it is final\)"):
        store.requeue(job.id, allowed_from=("succeeded",))
    unprotected = store.create("backup", "backup web01", now=clock.now())
    store.claim(unprotected.id, "a", clock.now(), timedelta(seconds=30))
    assert store.finish(unprotected.id, "a", "failed_unprotected", clock.now())
    with pytest.raises(JobError, match="a failed_unprotected job cannot become queued"):
        store.requeue(unprotected.id, allowed_from=("failed_unprotected",))
    for row, state in ((job, "succeeded"), (unprotected, "failed_unprotected")):
        after = store.get(row.id)
        assert after.state == state and after.finished_at is not None
    with pytest.raises(JobError, match="a paused job cannot become running"):
        check_transition(job.id, ("paused",), "running")
    with pytest.raises(JobError, match="names a state jobs do not have"):
        check_transition(job.id, ("running",), "exploded")
    # every state has a row in the table, and every move names known states
    assert set(TRANSITIONS) == set(JobState)
    assert all(set(targets) <= set(JobState) for targets in TRANSITIONS.values())


def test_every_state_change_the_runner_makes_is_in_the_table(
    engine_factory: EngineFactory, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real jobs through succeed, fail, retry, cancel, pause, resume, hand-back on
    stop and takeover; every move the store is asked for is checked and legal."""
    checked: list[tuple[str, str]] = []
    real_check = catalog_jobs.check_transition

    def recording(job_id: int, from_states: Any, to_state: str) -> None:
        real_check(job_id, from_states, to_state)  # raises on an illegal move
        checked.extend((str(f), str(to_state)) for f in from_states)

    monkeypatch.setattr(catalog_jobs, "check_transition", recording)
    started = threading.Event()
    fail_once = [True]

    def flaky(ctx: JobContext) -> dict[str, Any]:
        if fail_once[0]:
            fail_once[0] = False
            raise ValidationError("the source is not there yet")
        return {}

    def slow(ctx: JobContext) -> None:
        until_stopped(ctx, started)

    engine = runner_engine(
        engine_factory, clock, handlers={"ok": lambda ctx: {}, "flaky": flaky, "slow": slow}
    )
    jobs = engine.jobs
    assert wait_state(engine, jobs.submit("ok", "ok").id, "succeeded").state == "succeeded"
    flaky_job = jobs.submit("flaky", "flaky")
    wait_state(engine, flaky_job.id, "failed")
    jobs.retry(flaky_job.id)
    wait_state(engine, flaky_job.id, "succeeded")

    slow_job = jobs.submit("slow", "slow")
    for stop, then in ((jobs.cancel, "cancelled"), (jobs.pause, "paused")):
        assert started.wait(10)
        started.clear()
        stop(slow_job.id)
        wait_state(engine, slow_job.id, then)
        (jobs.retry if then == "cancelled" else jobs.resume)(slow_job.id)
    assert started.wait(10)
    jobs.stop(timeout=10)  # the running job goes back to the queue
    assert engine.job_store.get(slow_job.id).state == "queued"
    assert jobs.cancel(slow_job.id).state == "cancelled"  # not run again below

    # not run here (no handler): paused and cancelled while queued
    idle = jobs.submit("idle", "idle")
    assert jobs.pause(idle.id).state == "paused"
    assert jobs.cancel(idle.id).state == "cancelled"
    assert jobs.cancel(jobs.submit("idle", "idle again").id).state == "cancelled"

    # a takeover: the engine that claimed it died; its lease lapses
    dead = engine.job_store.create("ok", "orphan", now=clock.now())
    assert engine.job_store.claim(dead.id, "dead-engine", clock.now(), timedelta(seconds=5))
    clock.advance(timedelta(seconds=6))
    jobs.start()
    done = wait_state(engine, dead.id, "succeeded", "failed")
    assert done.state == "succeeded" and done.takeovers == 1

    moves = set(checked)
    assert all(JobState(t) in TRANSITIONS[JobState(f)] for f, t in moves)
    assert moves >= {
        ("queued", "running"),
        ("running", "succeeded"),
        ("running", "failed"),
        ("failed", "queued"),
        ("running", "cancelled"),
        ("cancelled", "queued"),
        ("running", "paused"),
        ("paused", "queued"),
        ("running", "queued"),
        ("queued", "paused"),
        ("paused", "cancelled"),
        ("queued", "cancelled"),
        ("running", "running"),
    }


# -- two OS processes on one catalog -----------------------------------------------


def test_two_processes_run_every_job_exactly_once(
    engine_factory: EngineFactory, clock: FixedClock, tmp_path: Path
) -> None:
    engine = engine_factory(clock=clock)  # creates and migrates the catalog
    jobs = [engine.jobs.submit("touch", f"touch {n}") for n in range(40)]
    out = tmp_path / "ran.txt"
    go = tmp_path / "go"
    owners = ("proc-a", "proc-b")
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), engine.settings.db_url, owner, str(out), str(go)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for owner in owners
    ]
    try:
        wait_for(
            lambda: (
                all(Path(f"{go}.ready-{o}").exists() for o in owners)
                or any(p.poll() is not None for p in procs)
            ),
            timeout=30,
            what="both workers to be ready",
        )
        go.touch()
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    for p, (_stdout, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr

    lines = out.read_text().splitlines()
    ran = Counter(int(line.split()[0]) for line in lines)
    by_owner = Counter(line.split()[1] for line in lines)
    assert sorted(ran) == sorted(job.id for job in jobs)
    assert set(ran.values()) == {1}, f"jobs run more than once: {ran.most_common(3)}"
    assert set(by_owner) == set(owners), f"one process ran everything: {by_owner}"
    for job in engine.jobs.store.list(kind="touch"):
        assert job.state == "succeeded"
        assert job.attempts == 1
        assert job.result is not None and job.result["owner"] in owners


def test_store_cancel_and_pause_never_overwrite_a_running_job(
    engine: Engine, clock: FixedClock
) -> None:
    store: JobStore = engine.job_store
    job = store.create("copy", "copy web01", now=clock.now())
    store.claim(job.id, "other-appliance", clock.now(), timedelta(seconds=30))
    asked = store.request_cancel(job.id, clock.now())
    assert asked.state == "running" and asked.cancel_requested
    assert store.request_pause(job.id).pause_requested
    assert store.get(job.id).state == "running"  # the owner decides when it stops
    assert store.get(job.id).lease_owner == "other-appliance"
    with pytest.raises(NotFoundError, match="job 999999 does not exist"):
        store.request_cancel(999999, clock.now())
    with pytest.raises(NotFoundError):
        store.request_pause(999999)


# -- stops in real long operations ------------------------------------------------------
#
# A pause, a cancel and a shutdown of the engine each have one meaning, whatever the
# operation was doing when it stopped (a qemu-img child killed through should_stop, a
# verification of its inputs cut short): pause -> paused and resumable, cancel ->
# cancelled, shutdown -> back to the queue. Partial output is removed in every case.
# Real qemu-img on small real images; the stop is asked for from the job's own first
# progress event (in the job's thread), so the point where it is seen is deterministic.

#: stop -> the state the job takes
STOPPED_AS = {"pause": "paused", "cancel": "cancelled", "shutdown": "queued"}


def _stop_at_first_progress(engine: Engine, job_id: int, stop: str) -> list[Event]:
    """Ask for ``stop`` when the job first reports progress; returns the events seen."""
    asked: list[Event] = []

    def on_progress(event: Event) -> None:
        if event.job_id != job_id or asked:
            return
        asked.append(event)
        if stop == "pause":
            engine.jobs.pause(job_id, actor="test")
        elif stop == "cancel":
            engine.jobs.cancel(job_id, actor="test")
        else:  # what closing the engine (the daemon's SIGTERM) does first
            engine.jobs.request_stop()

    engine.bus.subscribe(on_progress, kinds=("job.progress",))
    return asked


def _go_on(engine: Engine, job_id: int, stop: str) -> None:
    """Let a stopped job finish: resume a paused one, restart a stopped engine."""
    if stop == "pause":
        engine.jobs.resume(job_id, actor="test")
    elif stop == "shutdown":
        engine.jobs.stop()  # the engine closes…
        engine.jobs.start()  # …and the next one takes the queued job


def _partials(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*partial*")]


@pytest.mark.parametrize("stop", sorted(STOPPED_AS))
def test_a_stopped_consolidation_is_recorded_for_its_reason_and_finishes_after(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, stop: str
) -> None:
    from tests.engine.test_backup import wait_job
    from tests.engine.test_chains import build_chain

    ids, moments = build_chain(bk_engine, repo, disk, clock, incrementals=2)
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    files = sorted(p.name for p in Path(repo.path).rglob("*") if p.is_file())
    bk_engine.jobs.poll_interval = 0.02
    job = bk_engine.chains.submit_consolidate(chain_id, actor="test")
    asked = _stop_at_first_progress(bk_engine, job.id, stop)
    bk_engine.start()

    stopped = wait_state(bk_engine, job.id, STOPPED_AS[stop], "succeeded", "failed")
    assert asked, "the consolidation never reported progress"
    assert stopped.state == STOPPED_AS[stop], stopped.error
    assert stopped.lease_owner is None
    if stop == "cancel":
        assert stopped.error is not None and "cancelled by the operator" in stopped.error
    else:
        assert stopped.error is None
    # nothing merged, nothing left half-written
    assert [b.id for b in bk_engine.chain_store.backups(chain_id)] == ids
    assert sorted(p.name for p in Path(repo.path).rglob("*") if p.is_file()) == files
    assert bk_engine.chain_store.open_intents(chain_id) == []
    if stop == "cancel":
        return
    assert stopped.resume_point == {"target_id": ids[1]}

    _go_on(bk_engine, job.id, stop)
    done = wait_job(bk_engine, job.id)
    assert done.state == "succeeded", done.error
    assert done.result["new_full"] == ids[1]
    assert [b.id for b in bk_engine.chain_store.backups(chain_id)] == ids[1:]
    assert bk_engine.chain_store.get_backup(ids[1]).kind == "full"
    assert _partials(Path(repo.path)) == []
    for point in ids[1:]:
        target = Path(repo.path).parent / f"check-{point}.raw"
        bk_engine.restores.restore(point, str(target))
        assert sha256_of(target) == moments[point]


@pytest.mark.parametrize("stop", sorted(STOPPED_AS))
def test_a_stopped_disk_restore_is_recorded_for_its_reason_and_finishes_after(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, tmp_path: Path, stop: str
) -> None:
    from tests.engine.test_backup import wait_job
    from tests.engine.test_chains import build_chain

    ids, moments = build_chain(bk_engine, repo, disk, clock, incrementals=1)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "disk.raw"
    bk_engine.jobs.poll_interval = 0.02
    job = bk_engine.restores.submit(ids[1], str(target), actor="test")
    asked = _stop_at_first_progress(bk_engine, job.id, stop)
    bk_engine.start()

    stopped = wait_state(bk_engine, job.id, STOPPED_AS[stop], "succeeded", "failed")
    assert asked, "the restore never reported progress"
    assert stopped.state == STOPPED_AS[stop], stopped.error
    if stop == "cancel":
        assert stopped.error is not None and "cancelled by the operator" in stopped.error
    else:
        assert stopped.error is None
    # the target never took its name, and no partial is left beside it
    assert list(out.iterdir()) == []
    if stop == "cancel":
        return

    _go_on(bk_engine, job.id, stop)
    done = wait_job(bk_engine, job.id)
    assert done.state == "succeeded", done.error
    assert sorted(p.name for p in out.iterdir()) == ["disk.raw"]
    assert sha256_of(target) == moments[ids[1]]
