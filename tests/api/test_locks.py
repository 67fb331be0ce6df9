"""Immutability locks over HTTP: readers list them, admins extend them, never shorter.

The locks are real: a repository on a loop-mounted ext4 made immutable, a backup
there, ``chattr +i`` on its file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from engine.runtime import Engine
from engine.tools import attrs
from sendense_api.roles import Role
from tests.api.conftest import ClientFor
from tests.api.resources import World, make_world, problem
from tests.plugins.loopfs import LoopFsFactory

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from make_world(tmp_path_factory)


@pytest.fixture
def engine(world: World) -> Engine:
    return world.engine


def test_locks_are_listed_and_extended_never_shortened(
    world: World, api_as: ClientFor, loop_fs: LoopFsFactory
) -> None:
    fs = loop_fs("ext4", 32)
    vault = world.engine.repository_store.add(
        name="vault", kind="local", path=str(fs.mountpoint), now=world.engine.clock.now()
    )
    world.engine.locks.configure_repository(vault.id, 7)
    (point,) = world.backup("lock01", 1, repo=world.engine.repositories.get("vault"))

    listed = api_as(Role.READ).get("/api/v1/locks", params={"repo": "vault"})
    assert listed.status_code == 200, listed.text
    (lock,) = listed.json()
    assert (lock["backup_id"], lock["repository"], lock["state"]) == (point, "vault", "active")
    locked_file = fs.mountpoint / lock["path"]
    assert attrs.is_immutable(locked_file)

    url = f"/api/v1/locks/{lock['id']}/extend"
    assert "admin" in problem(api_as(Role.OPERATE).post(url, json={"until": "2099-01-01"}), 403)
    earlier = lock["expires_at"][:10]
    assert "never shortened" in problem(api_as(Role.ADMIN).post(url, json={"until": earlier}), 422)
    later = (world.engine.clock.now() + timedelta(days=30)).date().isoformat()
    extended = api_as(Role.ADMIN).post(url, json={"until": later})
    assert extended.status_code == 200, extended.text
    assert extended.json()["expires_at"].startswith(later)
    assert attrs.is_immutable(locked_file)
    again = api_as(Role.READ).get("/api/v1/locks", params={"repo": "vault"}).json()
    assert again[0]["expires_at"] == extended.json()["expires_at"]

    # a policy's lock period cannot be shortened later: it is confirmed explicitly, and
    # the refusal says what the lock will hold
    source = str(world.disks["lock01"].path)
    policy = {
        "name": "locked",
        "schedule": "0 3 * * *",
        "target": "vault",
        "sources": [f"lock01:sda={source}"],
        "immutable_days": 14,
        "full_every": 7,
    }
    admin = api_as(Role.ADMIN)
    assert "cannot be shortened" in problem(admin.post("/api/v1/policies", json=policy), 422)
    problem(admin.get("/api/v1/policies/locked"), 404)
    saved = admin.post("/api/v1/policies", json={**policy, "confirm_lock": True})
    assert saved.status_code == 201, saved.text
    assert saved.json()["immutable_days"] == 14
    longer = {"immutable_days": 30}
    assert "cannot be shortened" in problem(
        admin.patch("/api/v1/policies/locked", json=longer), 422
    )
    assert admin.get("/api/v1/policies/locked").json()["immutable_days"] == 14
    confirmed = admin.patch("/api/v1/policies/locked", json={**longer, "confirm_lock": True})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["immutable_days"] == 30


def test_bad_extensions_and_missing_locks(world: World, api_as: ClientFor) -> None:
    admin = api_as(Role.ADMIN)
    assert "lock" in problem(
        admin.post("/api/v1/locks/888888/extend", json={"until": "2099-01-01"}), 404
    )
    assert "until" in problem(admin.post("/api/v1/locks/1/extend", json={"until": "soon"}), 422)
    assert "until" in problem(admin.post("/api/v1/locks/1/extend", json={}), 422)
    problem(admin.post("/api/v1/locks/0/extend", json={"until": "2099-01-01"}), 422)
    problem(api_as(Role.READ).get("/api/v1/locks", params={"repo": "nowhere"}), 404)
