"""Policies over HTTP: CRUD for admins with the engine's checks, a run as a job,
retention previewed by readers and applied by admins."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from engine.runtime import Engine
from sendense_api.roles import Role
from tests.api.conftest import ClientFor
from tests.api.resources import World, accepted_job, make_world, problem, wait_job
from tests.engine.diskgen import MiB, SourceDisk


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from make_world(tmp_path_factory)


@pytest.fixture
def engine(world: World) -> Engine:
    return world.engine


def policy_body(world: World, name: str, vm: str, **overrides: Any) -> dict[str, Any]:
    source = str(world.disks["web01"].path)
    return {
        "name": name,
        "schedule": "0 2 * * *",
        "target": "local",
        "sources": [{"vm": vm, "disks": [{"name": "sda", "source": source}]}],
        **overrides,
    }


def test_a_policy_is_added_shown_changed_run_and_removed(world: World, api_as: ClientFor) -> None:
    admin, reader = api_as(Role.ADMIN), api_as(Role.READ)
    added = admin.post("/api/v1/policies", json=policy_body(world, "nightly", "pol01"))
    assert added.status_code == 201, added.text
    assert added.json()["retention"]["keep_last"] == 7
    assert added.json()["full_every"] == 7 and added.json()["enabled"] is True

    shown = reader.get("/api/v1/policies/nightly").json()
    assert len(shown["next_runs"]) == 5 and shown["compliance_detail"][0]["vm"] == "pol01"
    assert [p["name"] for p in reader.get("/api/v1/policies").json()] == ["nightly"]

    changed = admin.patch(
        "/api/v1/policies/nightly",
        json={"retention": {"keep_last": 2}, "full_weekday": 6, "enabled": False},
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["retention"]["keep_last"], body["full_weekday"], body["enabled"]) == (2, 6, False)
    assert body["schedule"] == "0 2 * * *"  # what was not given stays

    job = accepted_job(world.engine, api_as(Role.OPERATE).post("/api/v1/policies/nightly/run"))
    assert job.state == "succeeded", job.error
    assert job.kind == "policy_run" and job.actor == "test-operate"
    points = reader.get("/api/v1/restore-points", params={"vm": "pol01"}).json()
    assert [p["kind"] for p in points] == ["full"]

    removed = admin.delete("/api/v1/policies/nightly")
    assert removed.status_code == 200 and removed.json()["name"] == "nightly"
    problem(reader.get("/api/v1/policies/nightly"), 404)


def test_retention_is_previewed_by_a_reader_and_applied_by_an_admin(
    world: World, api_as: ClientFor
) -> None:
    ids = world.backup("ret01", 4)
    source = f"ret01:sda={world.disks['ret01'].path}"  # the CLI's --source text
    body = policy_body(
        world, "keep-two", "ret01", retention={"keep_last": 2}, full_every=2, sources=[source]
    )
    assert api_as(Role.ADMIN).post("/api/v1/policies", json=body).status_code == 201
    plan = api_as(Role.READ).get("/api/v1/policies/keep-two/retention")
    assert plan.status_code == 200, plan.text
    going = {d["backup_id"] for d in plan.json()["points"] if d["action"] != "keep"}
    assert going and going <= set(ids[:2])
    problem(api_as(Role.OPERATE).post("/api/v1/policies/keep-two/retention"), 403)
    applied = api_as(Role.ADMIN).post("/api/v1/policies/keep-two/retention", json={})
    assert applied.status_code == 200, applied.text
    assert "applied" in applied.json()
    left = api_as(Role.READ).get("/api/v1/restore-points", params={"vm": "ret01"}).json()
    assert [p["id"] for p in left][-2:] == ids[-2:]
    assert len(left) < len(ids)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"schedule": "at noon"}, "schedule"),
        ({"target": "nowhere"}, "nowhere"),
        ({"retention": {"keep_last": 0}}, "keeps nothing"),
        ({"full_every": 0}, "full_every"),
        ({"full_weekday": 7}, "full_weekday"),
        ({"immutable_days": 36501}, "immutable_days"),
        ({"retention": {"keep_last": -1}}, "keep_last"),
        ({"sources": [{"vm": "x", "disks": [{"name": "sda", "source": "json:{}"}]}]}, "json"),
        ({"copy_rules": ["no-such-rule"]}, "no-such-rule"),
        ({"keep_last": 3}, "keep_last"),
        ({"sources": ["web01-sda=/dev/null"]}, "VM:DISK=SOURCE"),
    ],
)
def test_bad_policies_are_refused_and_nothing_is_saved(
    world: World, api_as: ClientFor, overrides: dict[str, Any], says: str
) -> None:
    body = policy_body(world, "bad", "bad01", **overrides)
    assert says in problem(api_as(Role.ADMIN).post("/api/v1/policies", json=body), 422)
    problem(api_as(Role.READ).get("/api/v1/policies/bad"), 404)


def test_roles_and_missing_policies(world: World, api_as: ClientFor) -> None:
    body = policy_body(world, "x", "x01")
    assert "admin" in problem(api_as(Role.OPERATE).post("/api/v1/policies", json=body), 403)
    problem(api_as(Role.READ).post("/api/v1/policies/none/run"), 403)
    problem(api_as(Role.OPERATE).post("/api/v1/policies/none/run"), 404)
    problem(api_as(Role.READ).get("/api/v1/policies/none/retention"), 404)
    problem(api_as(Role.ADMIN).patch("/api/v1/policies/none", json={"full_every": 2}), 404)
    assert "nothing to change" in problem(
        api_as(Role.ADMIN).patch("/api/v1/policies/none", json={}), 422
    )


def test_a_token_s_policy_reads_no_file_outside_the_source_roots(
    world: World, api_as: ClientFor
) -> None:
    """The scheduler runs a policy as root: a token (an admin's too) names its sources
    as it would name a backup's (tests/api/test_backups.py)."""
    admin = api_as(Role.ADMIN)
    outside = [{"vm": "pol09", "disks": [{"name": "sda", "source": "/etc/shadow"}]}]
    added = admin.post(
        "/api/v1/policies", json={**policy_body(world, "p9", "pol09"), "sources": outside}
    )
    assert "'/etc/shadow'" in problem(added, 403)
    assert admin.get("/api/v1/policies/p9").status_code == 404

    assert admin.post("/api/v1/policies", json=policy_body(world, "p9", "pol09")).status_code == 201
    changed = admin.patch("/api/v1/policies/p9", json={"sources": ["pol09:sda=/etc/shadow"]})
    assert "'/etc/shadow'" in problem(changed, 403)
    shown = admin.get("/api/v1/policies/p9").json()
    assert shown["sources"][0]["disks"][0]["source"] == str(world.disks["web01"].path)
    admin.delete("/api/v1/policies/p9")


def test_a_token_s_policy_checks_its_sources_again_at_every_run(
    world: World, api_as: ClientFor
) -> None:
    """A policy runs for months: a link in a root a token named when it added the
    policy may lead somewhere else by the next run. Each run checks the sources a
    token set again; sources root sets (the unix socket, the CLI) are not marked."""
    admin = api_as(Role.ADMIN)
    link = world.root / "pol10-sda"
    link.symlink_to(world.disks["web01"].path)
    sources = [{"vm": "pol10", "disks": [{"name": "sda", "source": str(link)}]}]
    added = admin.post(
        "/api/v1/policies", json={**policy_body(world, "p10", "pol10"), "sources": sources}
    )
    assert added.status_code == 201, added.text
    stored = world.engine.policies.get("p10").sources
    assert stored[0]["named_by_token"] is True
    own = SourceDisk.create(world.engine.settings.state_dir / "own-p10", MiB, seed=20).path
    link.unlink()
    link.symlink_to(own)
    job = wait_job(
        world.engine, api_as(Role.OPERATE).post("/api/v1/policies/p10/run").json()["job"]["id"]
    )
    assert job.state == "failed"
    assert "Sendense's own files" in (job.error or "")
    assert world.engine.chain_store.list_backups(vm_name="pol10") == []
    admin.delete("/api/v1/policies/p10")
