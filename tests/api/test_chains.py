"""Chains and restore points over HTTP: the CLI's shapes, consolidate as a job, delete
for admins only, and one sentence for what is missing or wrong."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from engine.catalog.writers import DiskKey
from engine.runtime import Engine
from sendense_api.roles import Role
from sendense_tui.cli import main
from tests.api.conftest import ClientFor
from tests.api.resources import World, accepted_job, make_world, problem


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from make_world(tmp_path_factory)


@pytest.fixture
def engine(world: World) -> Engine:
    return world.engine


def test_chains_answer_what_the_cli_prints_as_json(
    world: World, api_as: ClientFor, capsys: pytest.CaptureFixture[str]
) -> None:
    response = api_as(Role.READ).get("/api/v1/chains", params={"repo": "local"})
    assert response.status_code == 200
    # the real CLI, in this process, on the same state directory and catalog
    state_dir = str(world.engine.settings.state_dir)
    code = main(["--state-dir", state_dir, "chain", "show", "--repo", "local", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert response.json() == json.loads(out.out)
    web01 = [c for c in response.json() if c["vm"] == "web01"]
    assert [p["id"] for p in web01[0]["points"]] == world.points["web01"]
    assert web01[0]["points"][0]["kind"] == "full"


def test_one_chain_its_check_and_a_missing_chain(world: World, api_as: ClientFor) -> None:
    reader = api_as(Role.READ)
    chain_id = world.chain_of("web01")
    shown = reader.get(f"/api/v1/chains/{chain_id}")
    assert shown.status_code == 200 and shown.json()["chain_id"] == chain_id
    check = reader.get(f"/api/v1/chains/{chain_id}/check", params={"deep": "true"})
    assert check.status_code == 200, check.text
    assert check.json()["findings"] == []
    everything = reader.get("/api/v1/chains/check")
    assert chain_id in [r["chain_id"] for r in everything.json()]
    assert "chain 999999 does not exist" in problem(reader.get("/api/v1/chains/999999"), 404)
    assert "chain_id" in problem(reader.get("/api/v1/chains/0"), 422)
    assert "chain_id" in problem(reader.get("/api/v1/chains/%231"), 422)


def test_restore_points_list_show_and_a_missing_one(world: World, api_as: ClientFor) -> None:
    reader = api_as(Role.READ)
    listed = reader.get("/api/v1/restore-points", params={"vm": "web01"}).json()
    assert [p["id"] for p in listed] == world.points["web01"]
    point = world.points["web01"][1]
    shown = reader.get(f"/api/v1/restore-points/{point}")
    assert shown.status_code == 200
    assert shown.json()["kind"] == "incremental" and shown.json()["vm"] == "web01"
    assert len(shown.json()["files"]["chain"]) == 2  # the point and its full
    assert "restore point 424242 does not exist" in problem(
        reader.get("/api/v1/restore-points/424242"), 404
    )
    assert "repository" in problem(
        reader.get("/api/v1/restore-points", params={"repo": "nowhere"}), 404
    )


def test_consolidate_is_a_job_an_operator_may_start(world: World, api_as: ClientFor) -> None:
    ids = world.backup("cons01", 3)
    chain_id = world.chain_of("cons01")
    # (3 points: merging the full into the 2nd leaves an incremental behind it)
    url = f"/api/v1/chains/{chain_id}/consolidate"
    problem(api_as(Role.READ).post(url), 403)
    job = accepted_job(world.engine, api_as(Role.OPERATE).post(url, json={"upto": ids[1]}))
    assert job.state == "succeeded", job.error
    assert job.actor == "test-operate"
    points = api_as(Role.READ).get(f"/api/v1/chains/{chain_id}").json()["points"]
    assert [(p["id"], p["kind"]) for p in points] == [(ids[1], "full"), (ids[2], "incremental")]
    assert "upto" in problem(api_as(Role.OPERATE).post(url, json={"upto": -1}), 422)
    assert "up_to" in problem(api_as(Role.OPERATE).post(url, json={"up_to": 3}), 422)
    problem(api_as(Role.OPERATE).post("/api/v1/chains/777777/consolidate"), 404)


def test_deleting_a_point_takes_the_later_ones_and_needs_admin(
    world: World, api_as: ClientFor
) -> None:
    ids = world.backup("del01", 3)
    url = f"/api/v1/restore-points/{ids[1]}"
    plan = api_as(Role.READ).get(url + "/delete-plan")
    assert plan.json()["would_delete"] == ids[1:]
    assert "admin" in problem(api_as(Role.OPERATE).delete(url), 403)
    assert os.path.exists(world.repo.path + "/" + world.engine.chain_store.get_backup(ids[2]).path)
    deleted = api_as(Role.ADMIN).delete(url)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] == ids[1:]
    left = api_as(Role.READ).get("/api/v1/restore-points", params={"vm": "del01"}).json()
    assert [p["id"] for p in left] == ids[:1]
    assert not os.path.exists(
        world.repo.path + "/" + world.engine.chain_store.get_backup(ids[2]).path
    )
    assert "already deleted" in problem(api_as(Role.ADMIN).delete(url), 422)


def test_a_busy_disk_is_a_conflict_named_not_a_wait(world: World, api_as: ClientFor) -> None:
    ids = world.backup("busy01", 2)
    disk = DiskKey(world.repo.id, "busy01", "sda")
    with world.engine.writers.hold_all([disk], operation="backup", actor="someone"):
        busy = api_as(Role.ADMIN).delete(f"/api/v1/restore-points/{ids[1]}")
        assert "backup" in problem(busy, 409)
        chain = world.chain_of("busy01")
        url = f"/api/v1/chains/{chain}/consolidate"
        problem(api_as(Role.OPERATE).post(url, json={"no_wait": True}), 409)
    left = api_as(Role.READ).get("/api/v1/restore-points", params={"vm": "busy01"}).json()
    assert [p["id"] for p in left] == ids


def test_fix_is_for_admins_and_reports_what_it_did(world: World, api_as: ClientFor) -> None:
    ids = world.backup("orph01", 1)
    backup = world.engine.chain_store.get_backup(ids[0])
    partial = f"{world.repo.path}/{backup.path}.partial"  # what a crashed write leaves
    with open(partial, "wb") as f:
        f.write(b"half a file")
    two_days_ago = time.time() - 2 * 86400  # long dead: a live writer touches its file
    os.utime(partial, (two_days_ago, two_days_ago))
    assert "admin" in problem(api_as(Role.OPERATE).post("/api/v1/chains/fix"), 403)
    problem(api_as(Role.ADMIN).post("/api/v1/chains/fix", json={"repo": "nowhere"}), 404)
    fixed = api_as(Role.ADMIN).post("/api/v1/chains/fix", json={"repo": "local"})
    assert fixed.status_code == 200, fixed.text
    assert any(backup.path.rsplit("/", 1)[0] in line for line in fixed.json()["removed"]), (
        fixed.json()
    )
    assert not os.path.exists(partial)
    assert os.path.exists(f"{world.repo.path}/{backup.path}")
