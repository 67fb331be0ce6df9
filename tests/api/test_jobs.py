"""``/api/v1/jobs`` over the test's real engine and job runner; a job's progress
stream follows a job the runner really runs."""

from __future__ import annotations

import json
import threading
from typing import Any

from fastapi.testclient import TestClient

from engine.jobs import JobContext
from engine.runtime import Engine
from sendense_api.roles import Role
from tests.api.conftest import ClientFor

BASE = "/api/v1/jobs"
#: a job kind no engine runs unless this test registers it
KIND = "test.counting"


def _queued(engine: Engine, title: str = "count to three") -> int:
    return engine.jobs.submit(KIND, title, bytes_total=3).id


def test_list_show_and_filters(api: TestClient, engine: Engine) -> None:
    first, second = _queued(engine, "first"), _queued(engine, "second")
    engine.jobs.cancel(first, actor="alice")
    listed = api.get(BASE).json()
    assert [j["id"] for j in listed] == [second, first]
    assert [j["id"] for j in api.get(BASE, params={"state": "cancelled"}).json()] == [first]
    both = api.get(BASE, params=[("state", "queued"), ("state", "cancelled"), ("limit", "1")])
    assert [j["id"] for j in both.json()] == [second]
    assert api.get(BASE, params={"kind": "backup"}).json() == []
    shown = api.get(f"{BASE}/{first}").json()
    assert shown["state"] == "cancelled" and shown["title"] == "first"
    assert [e["kind"] for e in shown["log"]][:2] == ["job.queued", "job.cancelled"]
    assert api.get(BASE, params={"state": "exploded"}).status_code == 422
    assert api.get(BASE, params={"limit": 0}).status_code == 422
    missing = api.get(f"{BASE}/99999")
    assert missing.status_code == 404 and missing.json()["detail"] == "job 99999 does not exist"
    assert api.get(f"{BASE}/0").status_code == 422


def test_steering_a_job(api_as: ClientFor, engine: Engine) -> None:
    operator = api_as(Role.OPERATE)
    job_id = _queued(engine)
    paused = operator.post(f"{BASE}/{job_id}/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    resumed = operator.post(f"{BASE}/{job_id}/resume").json()
    assert resumed["state"] == "queued"
    again = operator.post(f"{BASE}/{job_id}/resume")
    assert again.status_code == 409 and again.json()["detail"]
    cancelled = operator.post(f"{BASE}/{job_id}/cancel").json()
    assert cancelled["state"] == "cancelled"
    retried = operator.post(f"{BASE}/{job_id}/retry").json()
    assert retried["state"] == "queued"
    actors = {e.actor for e in engine.audit.query(job_id=job_id) if e.kind != "job.queued"}
    assert actors == {"test-operate"}
    assert operator.post(f"{BASE}/424242/cancel").status_code == 404
    reader = api_as(Role.READ)
    assert reader.post(f"{BASE}/{job_id}/cancel").status_code == 403
    assert engine.jobs.get(job_id).state == "queued"


def _sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    messages = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            messages.append((fields["event"], json.loads(fields["data"])))
    return messages


def test_the_progress_stream_follows_a_job_to_its_end(api: TestClient, engine: Engine) -> None:
    """The runner really runs the job; it waits at each step until the test lets it go,
    so the stream sees it move and end."""
    step = threading.Semaphore(0)

    def count(ctx: JobContext) -> dict[str, int]:
        for done in range(1, 4):
            step.acquire(timeout=30)
            ctx.progress(done, 3)
        return {"counted": 3}

    engine.jobs.register(KIND, count)
    job_id = _queued(engine)
    engine.start()
    for _ in range(3):
        step.release()
    with api.stream("GET", f"{BASE}/{job_id}/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    messages = _sse(text)
    assert messages[-1][0] == "end" and messages[-1][1]["state"] == "succeeded"
    assert all(kind == "progress" for kind, _ in messages[:-1])
    assert messages[-2][1]["bytes_done"] == 3
    assert api.get(f"{BASE}/424242/stream").status_code == 404
