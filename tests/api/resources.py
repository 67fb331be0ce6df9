"""A module-scoped world for the resource route tests: one started Engine on SQLite
(route tests check the HTTP layer; the catalog's two backends are tested under
tests/engine), a local repository with real QCOW2 chains backed up by the engine
from small raw disks, and helpers to wait for a job and to read a problem document.

A test module uses it by overriding the ``engine`` fixture, so the shared ``api`` /
``api_as`` fixtures (tests/api/conftest.py) talk to this engine::

    world = pytest.fixture(scope="module")(make_world)
    @pytest.fixture
    def engine(world: World) -> Engine:
        return world.engine

Tests that change the world (delete, consolidate) back up a VM of their own
(``world.backup(vm, n)``) so the others see what they expect.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.config import CapacitySettings, JobSettings, default_settings
from engine.runtime import Engine
from engine.services.backup import DiskSource
from tests.engine.diskgen import MiB, SourceDisk

#: a disk of this size backs up in a blink and still has several clusters to change
DISK_SIZE = 2 * MiB


@dataclass
class World:
    engine: Engine
    root: Path
    repo: Any
    #: VM name -> point ids (oldest first) of its disk "sda"
    points: dict[str, list[int]] = field(default_factory=dict)
    disks: dict[str, SourceDisk] = field(default_factory=dict)

    def backup(self, vm: str, count: int = 1, repo: Any = None) -> list[int]:
        """``count`` more points of ``vm``/sda (a new source disk the first time)."""
        repo = repo or self.repo
        disk = self.disks.get(vm)
        if disk is None:
            disk = SourceDisk.create(self.root / f"{vm}.raw", DISK_SIZE, seed=len(self.disks) + 1)
            self.disks[vm] = disk
        ids = self.points.setdefault(vm, [])
        for _ in range(count):
            if ids:
                disk.change([(len(ids) * 128 * 1024 % DISK_SIZE, 64 * 1024)])
            run = self.engine.backups.run(repo.id, vm, [DiskSource("sda", str(disk.path))])
            assert run.ok, run.sentence()
            ids.append(run.disks[0].backup_id)  # type: ignore[arg-type]
        return ids

    def chain_of(self, vm: str) -> int:
        return self.engine.chain_store.get_backup(self.points[vm][0]).chain_id

    def add_repository(self, name: str) -> Any:
        path = self.root / name
        path.mkdir()
        return self.engine.repository_store.add(
            name=name, kind="local", path=str(path), now=self.engine.clock.now()
        )


def make_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("api-world")
    base = default_settings(root / "state")
    settings = dataclasses.replace(
        base,
        capacity=dataclasses.replace(CapacitySettings(), min_free_bytes=0),
        jobs=JobSettings(heartbeat_seconds=0.2),
        # the tests' tokens back up the world's own disks (test_backups.py tests the rule)
        api=dataclasses.replace(base.api, source_roots=(root,)),
    )
    engine = Engine(settings, owner="api-test")
    engine.open()
    repo_dir = root / "local"
    repo_dir.mkdir()
    repo = engine.repository_store.add(
        name="local", kind="local", path=str(repo_dir), now=engine.clock.now()
    )
    world = World(engine, root, repo)
    world.backup("web01", 2)
    engine.start()
    try:
        yield world
    finally:
        engine.close()


def wait_job(engine: Engine, job_id: int, timeout: float = 60) -> Any:
    """The job once it ended (the started engine runs it); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        job = engine.job_store.get(job_id)
        if job.state in ("succeeded", "failed", "failed_unprotected", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.state}"
        time.sleep(0.05)


def problem(response: httpx.Response, status: int) -> str:
    """The problem document's sentence, after checking status and media type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    return str(body["detail"])


def accepted_job(engine: Engine, response: httpx.Response) -> Any:
    """A 202's job, run to its end."""
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["url"] == f"/api/v1/jobs/{body['job']['id']}"
    assert response.headers["location"] == body["url"]
    return wait_job(engine, body["job"]["id"])
