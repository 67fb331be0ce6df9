"""Copy rules (admin) and copies (operate runs, read sees) over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.runtime import Engine
from sendense_api.roles import Role
from tests.api.conftest import ClientFor
from tests.api.resources import World, accepted_job, make_world, problem


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    for world in make_world(tmp_path_factory):
        world.add_repository("offsite")
        yield world


@pytest.fixture
def engine(world: World) -> Engine:
    return world.engine


def test_a_rule_is_added_changed_run_and_removed(world: World, api_as: ClientFor) -> None:
    admin, reader = api_as(Role.ADMIN), api_as(Role.READ)
    added = admin.post(
        "/api/v1/copy-rules",
        json={"name": "to-offsite", "source": "local", "destination": "offsite"},
    )
    assert added.status_code == 201, added.text
    rule = added.json()
    assert (rule["source"], rule["destination"], rule["mode"]) == ("local", "offsite", "manual")
    assert rule["verify_after"] is True and rule["priority"] == 100

    changed = admin.patch("/api/v1/copy-rules/to-offsite", json={"priority": 5, "enabled": False})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["priority"], changed.json()["enabled"]) == (5, False)
    admin.patch(f"/api/v1/copy-rules/%23{rule['id']}", json={"enabled": True})
    assert reader.get("/api/v1/copy-rules/to-offsite").json()["enabled"] is True
    assert [r["name"] for r in reader.get("/api/v1/copy-rules").json()] == ["to-offsite"]

    job = accepted_job(world.engine, api_as(Role.OPERATE).post("/api/v1/copy-rules/to-offsite/run"))
    assert job.state == "succeeded", job.error
    status = reader.get("/api/v1/copies/status").json()
    assert status["rules"][0]["completed"] == len(world.points["web01"])
    assert status["rules"][0]["health"] == "ok"
    copies = reader.get("/api/v1/copies", params={"rule": "to-offsite"}).json()
    assert len(copies) == len(world.points["web01"])
    for copy in copies:
        assert copy["state"] == "completed" or copy["state"] == "verified", copy
        offsite = Path(world.engine.repositories.get("offsite").path)
        assert (offsite / copy["path"]).is_file()

    removed = admin.delete("/api/v1/copy-rules/to-offsite")
    assert removed.json() == {"removed": rule["id"], "name": "to-offsite"}
    assert reader.get("/api/v1/copy-rules").json() == []
    assert len(reader.get("/api/v1/copies").json()) == len(copies)  # copies stay


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"selection": "latest"}, "latest_count"),
        ({"priority": 5000}, "priority"),
        ({"max_age_hours": 0}, "max_age_hours"),
        ({"destination": "local"}, "local"),  # a rule copying a repository onto itself
        ({"mode": "scheduled", "schedule": "every day"}, "schedule"),
        ({"lock": True}, "lock"),
    ],
)
def test_bad_rules_are_refused_with_one_sentence(
    world: World, api_as: ClientFor, body: dict[str, object], says: str
) -> None:
    base = {"name": "bad", "source": "local", "destination": "offsite"}
    detail = problem(api_as(Role.ADMIN).post("/api/v1/copy-rules", json={**base, **body}), 422)
    assert says in detail
    assert api_as(Role.READ).get("/api/v1/copy-rules").json() == []


def test_roles_and_missing_rules_and_copies(world: World, api_as: ClientFor) -> None:
    body = {"name": "x", "source": "local", "destination": "offsite"}
    assert "admin" in problem(api_as(Role.OPERATE).post("/api/v1/copy-rules", json=body), 403)
    problem(api_as(Role.READ).post("/api/v1/copy-rules/none/run"), 403)
    assert "copy rule 'none' does not exist" in problem(
        api_as(Role.OPERATE).post("/api/v1/copy-rules/none/run"), 404
    )
    problem(api_as(Role.ADMIN).patch("/api/v1/copy-rules/none", json={"priority": 1}), 404)
    problem(api_as(Role.ADMIN).delete("/api/v1/copy-rules/none"), 404)
    problem(api_as(Role.OPERATE).post("/api/v1/copies/987654/rerun"), 404)
