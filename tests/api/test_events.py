"""``/api/v1/events``: the audit log with the filters of ``sendense events`` (the
live stream is tested against a real daemon in test_serving.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from engine.runtime import Engine
from sendense_api.roles import Role
from tests.api.conftest import ClientFor

BASE = "/api/v1/events"


def test_events_with_filters_oldest_first(api_as: ClientFor, engine: Engine) -> None:
    bus = engine.bus
    bus.emit("capacity", "capacity.threshold_crossed", "nas1 is 91 % full", level="warning")
    bus.emit("copy", "copy.failed", "copy of web01/sda failed", level="error")
    bus.emit("copy", "copy.done", "copy of web01/sdb done")
    bus.emit("copy", "copy.debug", "a detail", level="debug")
    reader = api_as(Role.READ)
    everything = reader.get(BASE, params={"level": "debug"}).json()
    assert [e["kind"] for e in everything][-4:] == [
        "capacity.threshold_crossed",
        "copy.failed",
        "copy.done",
        "copy.debug",
    ]
    assert everything == sorted(everything, key=lambda e: e["id"])
    warnings = reader.get(BASE, params={"level": "warning"}).json()
    assert [e["kind"] for e in warnings] == ["capacity.threshold_crossed", "copy.failed"]
    copies = reader.get(BASE, params={"source": "copy"}).json()
    assert [e["kind"] for e in copies] == ["copy.failed", "copy.done"]
    grep = reader.get(BASE, params={"grep": "web01/sdb"}).json()
    assert [e["message"] for e in grep] == ["copy of web01/sdb done"]
    after = reader.get(BASE, params={"after_id": copies[0]["id"], "level": "debug"}).json()
    assert [e["kind"] for e in after] == ["copy.done", "copy.debug"]
    newest = reader.get(BASE, params={"limit": 1, "level": "debug"}).json()
    assert [e["kind"] for e in newest] == ["copy.debug"]
    assert set(newest[0]) == {
        "id",
        "at",
        "level",
        "source",
        "kind",
        "message",
        "repository_id",
        "job_id",
        "actor",
    }


def test_one_jobs_events(api_as: ClientFor, engine: Engine) -> None:
    """``job``: what a command following a job in the daemon prints after it (a backup's
    "new full" and "broken chain" warnings)."""
    now = engine.clock.now()
    mine = engine.job_store.create("backup", "backup web01/sda", now=now)
    other = engine.job_store.create("backup", "backup web02/sda", now=now)
    engine.bus.emit("backup", "backup.new_full", "web01/sda: a new full", job_id=mine.id)
    engine.bus.emit("backup", "backup.new_full", "web02/sda: a new full", job_id=other.id)
    engine.bus.emit("backup", "chain.broken", "web01/sda: chain 3 is broken", job_id=mine.id)
    reader = api_as(Role.READ)
    found = reader.get(BASE, params={"job": mine.id, "level": "debug"}).json()
    assert [e["message"] for e in found] == [
        "web01/sda: a new full",
        "web01/sda: chain 3 is broken",
    ]
    assert {e["job_id"] for e in found} == {mine.id}
    newer = reader.get(BASE, params={"job": mine.id, "after_id": found[0]["id"]}).json()
    assert [e["kind"] for e in newer] == ["chain.broken"]
    assert reader.get(BASE, params={"job": 0}).status_code == 422


def test_bad_filters_are_refused(api: TestClient) -> None:
    loud = api.get(BASE, params={"level": "loud"})
    assert loud.status_code == 422 and loud.json()["detail"].startswith("query.level:")
    assert api.get(BASE, params={"limit": 0}).status_code == 422
    assert api.get(BASE, params={"grep": "x" * 300}).status_code == 422
