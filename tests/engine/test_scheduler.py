"""The scheduler with a FixedClock on both catalog backends: the right runs fire, a
missed stretch is caught up once, and two engines on one catalog never start the same
run twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.catalog.policies import POLICY_RUN
from engine.clock import FixedClock
from engine.events import Event
from engine.runtime import Engine
from engine.services.policies import PolicySpec
from tests.plugins.common import EngineFactory


def setup_policy(engine: Engine, tmp_path: Path, schedule: str = "0 2 * * *") -> None:
    root = tmp_path / "main"
    root.mkdir(exist_ok=True)
    engine.repository_store.add(name="main", kind="local", path=str(root), now=engine.clock.now())
    engine.policies.add(
        PolicySpec(
            name="web",
            schedule=schedule,
            target="main",
            sources=PolicySpec.sources_from(["web01:sda=/dev/null"]),
        )
    )


def runs(engine: Engine) -> list[int]:
    return sorted(j.id for j in engine.job_store.list(kind=POLICY_RUN))


def finish_all(engine: Engine) -> None:
    for job in engine.job_store.list(kind=POLICY_RUN, states=("queued",)):
        engine.job_store.request_cancel(job.id, engine.clock.now())


def test_fires_at_each_scheduled_time_and_not_in_between(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    setup_policy(engine, tmp_path, "0 2,14 * * *")  # 02:00 and 14:00 UTC
    assert engine.scheduler.tick().started == []  # 2026-11-24 09:00: nothing due
    clock.set(datetime(2026, 11, 24, 13, 59, tzinfo=UTC))
    assert engine.scheduler.tick().started == []
    clock.set(datetime(2026, 11, 24, 14, 0, 5, tzinfo=UTC))
    first = engine.scheduler.tick()
    assert [name for name, _ in first.started] == ["web"]
    assert engine.scheduler.tick().started == []  # the same time does not fire twice
    assert engine.policies.get("web").next_run_at == datetime(2026, 11, 25, 2, tzinfo=UTC)
    finish_all(engine)
    clock.set(datetime(2026, 11, 25, 2, 0, 30, tzinfo=UTC))
    assert [name for name, _ in engine.scheduler.tick().started] == ["web"]
    assert len(runs(engine)) == 2
    job = engine.job_store.get(runs(engine)[-1])
    assert job.params == {"policy_id": engine.policies.get("web").id, "trigger": "schedule"}


def test_a_missed_stretch_is_caught_up_once_at_start(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    setup_policy(engine, tmp_path)
    seen: list[Event] = []
    engine.bus.subscribe(seen.append, ("scheduler.",))
    # the appliance was off from the 24th to the 28th 09:00: four 02:00 runs missed
    clock.set(datetime(2026, 11, 28, 9, 0, tzinfo=UTC))
    report = engine.scheduler.tick()
    assert [name for name, _ in report.started] == ["web"]
    assert report.caught_up == ["web"]
    assert "4 runs were missed" in seen[-1].message and "running once now" in seen[-1].message
    assert engine.scheduler.tick().started == []
    assert len(runs(engine)) == 1
    assert engine.policies.get("web").next_run_at == datetime(2026, 11, 29, 2, tzinfo=UTC)


def test_a_run_still_going_is_not_started_again(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    setup_policy(engine, tmp_path)
    clock.set(datetime(2026, 11, 25, 2, 0, tzinfo=UTC))
    assert len(engine.scheduler.tick().started) == 1
    clock.set(datetime(2026, 11, 26, 2, 0, tzinfo=UTC))  # first run still queued
    report = engine.scheduler.tick()
    assert report.started == [] and report.skipped == [("web", "the previous run is still going")]
    assert len(runs(engine)) == 1


def test_two_engines_on_one_catalog_start_a_due_run_once(
    engine_factory: EngineFactory, tmp_path: Path
) -> None:
    clock = FixedClock()
    a = engine_factory(clock=clock, owner="console")
    b = engine_factory(clock=clock, owner="daemon")
    setup_policy(a, tmp_path)
    clock.set(datetime(2026, 11, 25, 2, 0, tzinfo=UTC))
    both = a.scheduler.tick().started + b.scheduler.tick().started
    assert len(both) == 1
    assert len(runs(a)) == len(runs(b)) == 1  # and both engines see the job


def test_a_disabled_policy_does_not_run_and_resumes_without_catching_up(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    setup_policy(engine, tmp_path)
    engine.policies.set_enabled("web", False)
    clock.advance(timedelta(days=3))
    assert engine.scheduler.tick().started == []
    engine.policies.set_enabled("web", True)
    assert engine.scheduler.tick().started == []
    assert engine.policies.get("web").next_run_at == datetime(2026, 11, 28, 2, tzinfo=UTC)


def test_the_scheduler_starts_only_when_asked(engine_factory: EngineFactory) -> None:
    plain = engine_factory(start=True)
    assert not plain.scheduler.running
    daemon = engine_factory()
    daemon.start(run_scheduler=True)
    assert daemon.scheduler.running
    daemon.close()
    assert not daemon.scheduler.running
