"""Starting a backup over HTTP: the CLI's inputs and checks, 202 and a job that runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.runtime import Engine
from sendense_api.roles import Role
from tests.api.conftest import ClientFor
from tests.api.resources import World, accepted_job, make_world, problem
from tests.engine.diskgen import MiB, SourceDisk


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from make_world(tmp_path_factory)


@pytest.fixture
def engine(world: World) -> Engine:
    return world.engine


def test_an_operator_backs_up_a_vm_as_a_job(world: World, api_as: ClientFor) -> None:
    first = SourceDisk.create(world.root / "app-sda.raw", 2 * MiB, seed=11)
    second = SourceDisk.create(world.root / "app-sdb.raw", 1 * MiB, seed=12)
    body = {
        "repo": "local",
        "vm": "app01",
        "disks": [
            {"name": "sda", "source": str(first.path)},
            f"sdb={second.path}",  # the CLI's --disk text
        ],
        "compression": "zstd",
    }
    job = accepted_job(world.engine, api_as(Role.OPERATE).post("/api/v1/backups", json=body))
    assert job.state == "succeeded", job.error
    assert job.kind == "backup" and job.actor == "test-operate"
    points = api_as(Role.READ).get("/api/v1/restore-points", params={"vm": "app01"}).json()
    assert sorted((p["disk"], p["kind"], p["compression"]) for p in points) == [
        ("sda", "full", "zstd"),
        ("sdb", "full", "zstd"),
    ]


@pytest.mark.parametrize(
    ("change", "status", "says"),
    [
        # what the engine refuses, with the CLI's sentence
        ({"disks": [{"name": "sda", "source": "json:{}"}]}, 422, "protocol"),
        ({"vm": "../etc"}, 422, "VM name"),
        ({"disks": [{"name": "a/b", "source": "/dev/null"}]}, 422, "disk name"),
        ({"repo": "nowhere"}, 404, "nowhere"),
        # what the request's bounds refuse, naming the field
        ({"disks": [{"name": "sda", "source": "/x", "format": "vmdk"}]}, 422, "format"),
        ({"full_every": 0}, 422, "full_every"),
        ({"full_every": 10**30}, 422, "full_every"),
        ({"mode": "sometimes"}, 422, "mode"),
        ({"disks": []}, 422, "disks"),
        ({"disk": "sda=/dev/null"}, 422, "disk"),
        ({"disks": ["sda"]}, 422, "NAME=SOURCE"),
        ({"disks": ["sda:vmdk=/dev/null"]}, 422, "vmdk"),
        ({"disks": ["sda=/dev/null", "sda=/dev/zero"]}, 422, "repeat"),
    ],
)
def test_bad_backup_requests_get_one_sentence_and_queue_nothing(
    world: World, api_as: ClientFor, change: dict[str, object], status: int, says: str
) -> None:
    body = {"repo": "local", "vm": "bad01", "disks": [{"name": "sda", "source": "/dev/null"}]}
    before = len(world.engine.job_store.list(kind="backup", limit=1000))
    detail = problem(api_as(Role.OPERATE).post("/api/v1/backups", json={**body, **change}), status)
    assert says in detail
    assert len(world.engine.job_store.list(kind="backup", limit=1000)) == before


def test_a_reader_cannot_start_a_backup(world: World, api_as: ClientFor) -> None:
    body = {"repo": "local", "vm": "web01", "disks": [{"name": "sda", "source": "/dev/null"}]}
    assert "operate" in problem(api_as(Role.READ).post("/api/v1/backups", json=body), 403)
