"""Verification over HTTP: a run is a job an operator starts; the report is for readers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.runtime import Engine
from sendense_api.roles import Role
from tests.api.conftest import ClientFor
from tests.api.resources import World, accepted_job, make_world, problem


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from make_world(tmp_path_factory)


@pytest.fixture
def engine(world: World) -> Engine:
    return world.engine


def test_verifying_a_chain_then_the_report_counts_it(world: World, api_as: ClientFor) -> None:
    reader = api_as(Role.READ)
    before = reader.get("/api/v1/verification/report", params={"days": 7})
    assert before.status_code == 200, before.text
    assert before.json()["files_verified"] == 0
    chain = world.chain_of("web01")
    job = accepted_job(
        world.engine, api_as(Role.OPERATE).post("/api/v1/verification", json={"chain": chain})
    )
    assert job.state == "succeeded", job.error
    assert job.kind == "verify" and job.actor == "test-operate"
    report = reader.get("/api/v1/verification/report", params={"days": 7}).json()
    assert report["files_verified"] == len(world.points["web01"])
    assert report["bad"] == []
    assert {"overdue_count", "reverify_days", "schedule", "next_scheduled_at"} <= set(report)


def test_a_damaged_point_shows_in_the_report_as_data(world: World, api_as: ClientFor) -> None:
    (point,) = world.backup("rot01")
    path = world.engine.chain_store.get_backup(point).path
    with open(f"{world.repo.path}/{path}", "r+b") as f:  # one flipped byte deep in the data
        f.seek(-4096, 2)
        byte = f.read(1)
        f.seek(-4096, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    job = accepted_job(
        world.engine, api_as(Role.OPERATE).post("/api/v1/verification", json={"backup": point})
    )
    assert job.state in ("succeeded", "failed")
    report = api_as(Role.READ).get("/api/v1/verification/report")
    assert report.status_code == 200
    assert [b["path"] for b in report.json()["bad"]] == [path]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"backup": 1, "chain": 1}, "backup and chain"),
        ({"backup": 0}, "backup"),
        ({"repository": ""}, "repository"),
        ({"everything": True}, "everything"),
    ],
)
def test_bad_verification_requests(
    world: World, api_as: ClientFor, body: dict[str, object], says: str
) -> None:
    assert says in problem(api_as(Role.OPERATE).post("/api/v1/verification", json=body), 422)


def test_missing_targets_roles_and_bounds(world: World, api_as: ClientFor) -> None:
    operator = api_as(Role.OPERATE)
    problem(operator.post("/api/v1/verification", json={"backup": 999999}), 404)
    problem(operator.post("/api/v1/verification", json={"repository": "nowhere"}), 404)
    assert "operate" in problem(api_as(Role.READ).post("/api/v1/verification"), 403)
    assert "days" in problem(
        api_as(Role.READ).get("/api/v1/verification/report", params={"days": 0}), 422
    )
