"""The engine's event bus: subscribers, filters, and the audit log behind it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from engine.catalog import Catalog
from engine.catalog.audit import AuditStore
from engine.clock import FixedClock
from engine.events import Event, EventBus


def test_subscribe_and_unsubscribe(clock: FixedClock) -> None:
    bus = EventBus(clock=clock)
    got: list[str] = []
    unsubscribe = bus.subscribe(lambda e: got.append(e.kind))
    bus.publish(Event(kind="repository.added", message="added main"))
    unsubscribe()
    bus.publish(Event(kind="repository.removed", message="removed main"))
    unsubscribe()  # twice is harmless
    assert got == ["repository.added"]


def test_events_get_the_clock_time_unless_they_carry_one(clock: FixedClock) -> None:
    bus = EventBus(clock=clock)
    stamped = bus.publish(Event(kind="a.b", message="m"))
    assert stamped.at == clock.now()
    given = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert bus.publish(Event(kind="a.b", message="m", at=given)).at == given


def test_kind_filter_by_prefix(clock: FixedClock) -> None:
    bus = EventBus(clock=clock)
    jobs: list[str] = []
    capacity_and_copy: list[str] = []
    bus.subscribe(lambda e: jobs.append(e.kind), kinds=("job.",))
    bus.subscribe(lambda e: capacity_and_copy.append(e.kind), kinds=("capacity.", "copy."))
    for kind in ("job.queued", "capacity.threshold_crossed", "copy.failed", "job.progress", "x.y"):
        bus.publish(Event(kind=kind, message=kind))
    assert jobs == ["job.queued", "job.progress"]
    assert capacity_and_copy == ["capacity.threshold_crossed", "copy.failed"]


def test_a_failing_subscriber_does_not_stop_the_others(
    clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    bus = EventBus(clock=clock)
    before: list[str] = []
    after: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("widget went away")

    bus.subscribe(lambda e: before.append(e.kind))
    bus.subscribe(broken)
    bus.subscribe(lambda e: after.append(e.kind))
    with caplog.at_level(logging.ERROR, logger="engine.events"):
        published = bus.publish(Event(kind="job.failed", message="copy failed"))
    assert published.kind == "job.failed"  # the publisher carried on
    assert before == after == ["job.failed"]
    assert any("job.failed" in r.getMessage() for r in caplog.records)


def test_events_are_written_to_the_audit_log(catalog: Catalog, clock: FixedClock) -> None:
    audit = AuditStore(catalog)
    bus = EventBus(audit, clock)
    bus.publish(
        Event(
            kind="capacity.threshold_crossed",
            message="repository main is 91% full",
            level="warning",
            source="capacity",
            actor="monitor",
            data={"percent": 91.2, "level": "critical"},
        )
    )
    bus.publish(Event(kind="job.progress", message="copy 10%", source="jobs", record=False))

    entries = audit.query()
    assert len(entries) == 1
    entry = entries[0]
    assert entry.kind == "capacity.threshold_crossed"
    assert entry.level == "warning"
    assert entry.source == "capacity"
    assert entry.actor == "monitor"
    assert entry.message == "repository main is 91% full"
    assert entry.data == {"percent": 91.2, "level": "critical"}
    assert entry.at == clock.now()


def test_subscribers_still_hear_events_when_the_catalog_is_down(
    clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = Catalog("mysql+pymysql://u:pw@127.0.0.1:1/sendense")
    try:
        bus = EventBus(AuditStore(unreachable), clock)
        got: list[Event] = []
        bus.subscribe(got.append)
        with caplog.at_level(logging.WARNING):
            bus.publish(Event(kind="repository.unresponsive", message="nas1 does not answer"))
            bus.publish(Event(kind="repository.unresponsive", message="nas1 still silent"))
    finally:
        unreachable.dispose()
    assert [e.kind for e in got] == ["repository.unresponsive"] * 2
    # one warning for the outage (from the catalog), not one per event, no traceback
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert "cannot reach the database server" in logged[0].getMessage()
    assert logged[0].exc_info is None
    assert "pw@" not in logged[0].getMessage()
