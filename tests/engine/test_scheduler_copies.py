"""The scheduler beyond policies, with a FixedClock on both catalog backends: scheduled
copy rules fire at their cron times (once across engines, caught up once), the
scheduled verification re-reads only the overdue files, and alerts fire once, survive
a restart without firing again, and clear once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.catalog.models import Job
from engine.clock import FixedClock
from engine.events import Event
from engine.runtime import Engine
from tests.engine.copy_worker import add_repo, make_chain
from tests.plugins.common import EngineFactory

SQLITE_ONLY = pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
FINAL = ("succeeded", "failed", "cancelled")


def wait_job(engine: Engine, job_id: int, timeout: float = 60.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = engine.job_store.get(job_id)
        if job.state in FINAL:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {engine.job_store.get(job_id).state}")


def copy_jobs(engine: Engine) -> list[Job]:
    return sorted(engine.job_store.list(kind="copy"), key=lambda j: j.id)


def cancel_queued(engine: Engine) -> None:
    for job in engine.job_store.list(states=("queued",)):
        engine.job_store.request_cancel(job.id, engine.clock.now())


def scheduled_rule(engine: Engine, tmp_path: Path, schedule: str = "0 2 * * *") -> None:
    add_repo(engine, "main", tmp_path / "main")
    add_repo(engine, "offsite", tmp_path / "offsite")
    engine.copies.add_rule(
        name="nightly", source="main", destination="offsite", mode="scheduled", schedule=schedule
    )


def record(engine: Engine, kinds: tuple[str, ...] = ("alert.",)) -> list[Event]:
    seen: list[Event] = []
    engine.bus.subscribe(seen.append, kinds)
    return seen


# -- scheduled copy rules ---------------------------------------------------------------


def test_a_scheduled_copy_rule_runs_at_its_cron_times(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    scheduled_rule(engine, tmp_path, "0 2,14 * * *")
    rule = engine.copies.get_rule("nightly")
    assert engine.scheduler.tick().copies == []  # 09:00: first sight, nothing due
    assert engine.copies.next_run(rule) == datetime(2026, 11, 24, 14, tzinfo=UTC)
    clock.set(datetime(2026, 11, 24, 13, 59, tzinfo=UTC))
    assert engine.scheduler.tick().copies == []
    clock.set(datetime(2026, 11, 24, 14, 0, 10, tzinfo=UTC))
    [(name, job_id)] = engine.scheduler.tick().copies
    assert name == "nightly" and engine.job_store.get(job_id).params == {"rule_id": rule.id}
    assert engine.scheduler.tick().copies == []  # the same time does not fire twice
    assert engine.copies.next_run(rule) == datetime(2026, 11, 25, 2, tzinfo=UTC)
    assert engine.copies.status()[0].next_run_at == datetime(2026, 11, 25, 2, tzinfo=UTC)

    # the 02:00 run comes while the 14:00 copy is still queued: skipped, said so
    seen = record(engine, ("scheduler.",))
    clock.set(datetime(2026, 11, 25, 2, 0, 5, tzinfo=UTC))
    report = engine.scheduler.tick()
    assert report.copies == [] and report.skipped == [
        ("copy rule nightly", "the previous copy is still going")
    ]
    assert f"copy job {job_id} of this rule is still going" in seen[-1].message
    cancel_queued(engine)
    clock.set(datetime(2026, 11, 25, 14, 0, 5, tzinfo=UTC))
    assert len(engine.scheduler.tick().copies) == 1
    assert len(copy_jobs(engine)) == 2


def test_a_missed_stretch_of_copies_is_caught_up_once(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    scheduled_rule(engine, tmp_path)
    engine.scheduler.tick()  # 24th 09:00: next run the 25th 02:00
    seen = record(engine, ("scheduler.",))
    clock.set(datetime(2026, 11, 28, 9, 0, tzinfo=UTC))  # off for four 02:00 runs
    report = engine.scheduler.tick()
    # (the scheduled verification caught up too: it found nothing overdue)
    assert len(report.copies) == 1 and report.caught_up == ["copy rule nightly", "verification"]
    [said] = [e.message for e in seen if e.message.startswith("copy rule nightly")]
    assert "4 runs were missed" in said and "running once now" in said
    cancel_queued(engine)
    assert engine.scheduler.tick().copies == []
    assert len(copy_jobs(engine)) == 1
    rule = engine.copies.get_rule("nightly")
    assert engine.copies.next_run(rule) == datetime(2026, 11, 29, 2, tzinfo=UTC)


def test_two_engines_start_a_scheduled_copy_once(
    engine_factory: EngineFactory, tmp_path: Path
) -> None:
    clock = FixedClock()
    a = engine_factory(clock=clock, owner="console")
    b = engine_factory(clock=clock, owner="daemon")
    scheduled_rule(a, tmp_path)
    a.scheduler.tick()
    b.scheduler.tick()
    clock.set(datetime(2026, 11, 25, 2, 0, tzinfo=UTC))
    started = b.scheduler.tick().copies + a.scheduler.tick().copies
    assert len(started) == 1
    assert len(copy_jobs(a)) == len(copy_jobs(b)) == 1


def test_a_disabled_or_edited_rule_starts_afresh_without_catching_up(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    scheduled_rule(engine, tmp_path)
    engine.scheduler.tick()
    rule = engine.copies.get_rule("nightly")
    engine.copy_store.update_rule(rule.id, enabled=False)
    clock.advance(timedelta(days=3))
    assert engine.scheduler.tick().copies == []
    engine.copy_store.update_rule(rule.id, enabled=True)
    assert engine.scheduler.tick().copies == []  # re-enabled: from now on, no catch-up
    engine.copy_store.update_rule(rule.id, schedule="30 4 * * *")
    clock.advance(timedelta(days=1))
    assert engine.scheduler.tick().copies == []  # edited: the new schedule starts from now
    rule = engine.copies.get_rule("nightly")
    assert engine.copies.next_run(rule) == datetime(2026, 11, 29, 4, 30, tzinfo=UTC)
    clock.set(datetime(2026, 11, 29, 4, 30, tzinfo=UTC))
    assert len(engine.scheduler.tick().copies) == 1
    assert copy_jobs(engine)[0].params == {"rule_id": rule.id}


@SQLITE_ONLY
def test_a_scheduled_copy_really_copies(engine: Engine, tmp_path: Path, clock: FixedClock) -> None:
    scheduled_rule(engine, tmp_path)
    chain = make_chain(engine, engine.repository_store.get("main"), size_mb=1, incrementals=1)
    engine.scheduler.tick()
    clock.set(datetime(2026, 11, 25, 2, 0, tzinfo=UTC))
    [(_, job_id)] = engine.scheduler.tick().copies
    engine.start()
    assert wait_job(engine, job_id).state == "succeeded"
    for rel in chain.paths:
        assert (tmp_path / "offsite" / rel).read_bytes() == (tmp_path / "main" / rel).read_bytes()


# -- scheduled verification -------------------------------------------------------------


def test_the_scheduled_verification_reads_only_the_overdue_files(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    repo = add_repo(engine, "main", tmp_path / "main")
    chain = make_chain(engine, repo, size_mb=1, incrementals=2)
    verifier = engine.verifier
    full, *later = verifier.targets("chain", chain.chain_id)
    verifier.verify_targets([full])  # verified on the 24th
    clock.advance(timedelta(days=20))
    verifier.verify_targets(later)  # verified on 14 December
    engine.scheduler.tick()  # first sight of the schedule: next 03:00
    assert engine.scheduler.next_verification() == datetime(2026, 12, 15, 3, tzinfo=UTC)

    clock.set(datetime(2026, 12, 25, 3, 0, 10, tzinfo=UTC))  # the full is 31 days old
    assert verifier.report().overdue[0]["backup_id"] == chain.backup_ids[0]
    report = engine.scheduler.tick()
    assert report.verify_job is not None
    job = engine.job_store.get(report.verify_job)
    assert job.params["only"] == [["backup", chain.backup_ids[0]]]
    assert job.params["trigger"] == "schedule"
    assert job.title == "verify 1 file not verified in the last 30 days"
    assert engine.scheduler.tick().verify_job is None  # once per scheduled time
    engine.start()
    job = wait_job(engine, job.id)
    assert job.state == "succeeded" and job.result["files"] == 1
    after = verifier.report()
    assert after.overdue == [] and after.coverage_percent == 100

    # the next day nothing is overdue: no job, just a debug note
    clock.set(datetime(2026, 12, 26, 3, 0, 10, tzinfo=UTC))
    assert engine.scheduler.tick().verify_job is None
    assert engine.scheduler.next_verification() == datetime(2026, 12, 27, 3, tzinfo=UTC)


def test_reverify_days_and_schedule_come_from_the_settings(
    engine_factory: EngineFactory,
) -> None:
    from engine.config import VerifySettings

    engine = engine_factory(verify=VerifySettings(reverify_days=7, schedule="0 5 * * 0"))
    assert engine.verifier.reverify_after_days == 7
    assert engine.scheduler.verify_schedule == "0 5 * * 0"
    assert engine.scheduler.next_verification().weekday() == 6  # Sunday


# -- alerts -------------------------------------------------------------------------------


def test_a_failing_rule_alerts_once_survives_a_restart_and_clears_once(
    engine_factory: EngineFactory, tmp_path: Path
) -> None:
    clock = FixedClock()
    engine = engine_factory(clock=clock)
    scheduled_rule(engine, tmp_path)
    rule = engine.copies.get_rule("nightly")
    seen = record(engine)
    for _ in range(engine.copies.alert_after_failures):
        engine.copy_store.record_rule_outcome(rule.id, ok=False)
    engine.scheduler.evaluate_alerts()
    engine.scheduler.evaluate_alerts()
    assert [(e.kind, e.level) for e in seen] == [("alert.rule_failing", "warning")]
    assert seen[0].message == (
        "alert raised: copy rule nightly (main -> offsite) failed 3 times in a row"
    )

    # a restart (another engine on the same catalog) finds the alert raised: quiet
    again = engine_factory(clock=clock)
    seen_again = record(again)
    again.scheduler.evaluate_alerts()
    assert seen_again == []
    assert [m.key for m in again.scheduler.active_alerts()] == [
        f"alert:rule_failing:rule:{rule.id}"
    ]

    for _ in range(3):  # six in a row: the same alert, now critical (said once)
        again.copy_store.record_rule_outcome(rule.id, ok=False)
    again.scheduler.evaluate_alerts()
    again.scheduler.evaluate_alerts()
    assert [(e.kind, e.level) for e in seen_again] == [("alert.rule_failing", "critical")]
    assert seen_again[0].message.startswith("alert now critical: copy rule nightly")

    again.copy_store.record_rule_outcome(rule.id, ok=True)
    engine.scheduler.evaluate_alerts()
    again.scheduler.evaluate_alerts()
    cleared = [e for e in seen + seen_again if e.kind.endswith(".cleared")]
    assert len(cleared) == 1 and cleared[0].level == "info"
    assert cleared[0].message.startswith("alert cleared: copy rule nightly")
    assert again.scheduler.active_alerts() == []
    # the audit log answers `sendense events --grep alert`
    logged = [e.message for e in again.audit.query(text="alert")]
    assert len(logged) == 3 and all(m.startswith("alert ") for m in logged)


def test_a_destination_whose_copies_are_too_old_alerts_and_clears(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    add_repo(engine, "main", tmp_path / "main")
    add_repo(engine, "offsite", tmp_path / "offsite")
    engine.copies.add_rule(name="r", source="main", destination="offsite", max_age_hours=24)
    seen = record(engine)
    engine.scheduler.evaluate_alerts()
    assert seen == []  # a new rule is not blamed for having no copy yet
    clock.advance(timedelta(hours=25))
    engine.scheduler.evaluate_alerts()
    clock.advance(timedelta(hours=24))
    engine.scheduler.evaluate_alerts()
    assert [(e.kind, e.level) for e in seen] == [
        ("alert.copy_too_old", "warning"),
        ("alert.copy_too_old", "critical"),
    ]
    assert "destination offsite (copy rule r) has no copy yet; the rule allows 24 h" in (
        seen[0].message
    )
    assert seen[0].repository_id == engine.repository_store.get("offsite").id
    engine.copies.remove_rule("r")
    engine.scheduler.evaluate_alerts()
    assert seen[-1].kind == "alert.copy_too_old.cleared"
    assert len(seen) == 3


@SQLITE_ONLY
def test_verification_overdue_alerts_and_clears_when_the_files_are_read(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    repo = add_repo(engine, "main", tmp_path / "main")
    make_chain(engine, repo, size_mb=1, incrementals=0)
    engine.verifier.verify_targets(engine.verifier.targets("all"))
    seen = record(engine)
    engine.scheduler.evaluate_alerts()
    clock.advance(timedelta(days=31))
    engine.scheduler.evaluate_alerts()
    engine.scheduler.evaluate_alerts()
    assert [(e.kind, e.level) for e in seen] == [("alert.verification_overdue", "warning")]
    assert "verification overdue: 1 file older than 30 days not verified" in seen[0].message
    # meanwhile an hourly policy lands a new backup that nobody verified yet: it is
    # not overdue, so it does not hold the warning up once the old file is read
    make_chain(engine, repo, size_mb=1, incrementals=0, vm="db01")
    engine.verifier.verify_targets(
        [t for t in engine.verifier.due_targets() if t.backup.path.startswith("web01/")]
    )
    engine.scheduler.evaluate_alerts()
    assert [e.kind for e in seen] == [
        "alert.verification_overdue",
        "alert.verification_overdue.cleared",
    ]


def test_the_scheduler_thread_evaluates_alerts(engine: Engine, tmp_path: Path) -> None:
    scheduled_rule(engine, tmp_path)
    rule = engine.copies.get_rule("nightly")
    for _ in range(3):
        engine.copy_store.record_rule_outcome(rule.id, ok=False)
    seen = record(engine)
    engine.scheduler.interval = 0.05
    engine.scheduler.start()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    engine.scheduler.stop()
    assert [e.kind for e in seen] == ["alert.rule_failing"]
