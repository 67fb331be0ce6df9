"""``sendense demo``: a real small Sendense (qcow2 chains made by the backup service,
copies, chattr locks, verification) whose figures agree on every screen, with no
job left waiting and nothing left behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from engine.runtime import Engine
from engine.tools import attrs
from sendense_tui.demo_mode import DISKS, NIGHTS, DemoWorld, demo_world
from tests.tui.ptyconsole import console_on_pty


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoWorld]:
    with demo_world(tmp_path_factory.mktemp("demo") / "world") as built:
        yield built
    assert not built.root.exists()


@pytest.fixture
def engine(world: DemoWorld) -> Iterator[Engine]:
    opened = world.engine()
    yield opened
    opened.close()


def _files_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.qcow2") if p.is_file())


def test_chains_are_real_qcow2_files_from_three_nights(world: DemoWorld, engine: Engine) -> None:
    views = engine.chains.overview()
    assert sorted((v.repository, v.chain.vm_name, v.chain.disk_name) for v in views) == sorted(
        ("primary", vm, disk) for vm, disk in DISKS
    )
    for view in views:
        assert [p.backup.kind for p in view.points] == ["full"] + ["incremental"] * (NIGHTS - 1)
        for point in view.points:
            path = world.repository("primary") / point.backup.path
            assert path.stat().st_size == point.backup.file_size
            assert path.read_bytes()[:4] == b"QFI\xfb"
            assert point.backup.verify_state == "ok"


def test_repositories_capacity_and_chains_agree(world: DemoWorld, engine: Engine) -> None:
    views = engine.chains.overview()
    capacity = {item.repository.name: item for item in engine.capacity.overview(measure=True)}
    assert set(capacity) == {"primary", "offsite", "archive"}
    for name, item in capacity.items():
        folder = world.repository(name)
        chains_here = [v for v in views if v.repository == name]
        # Capacity's "used by backups" is what lies in the folder, and (in primary)
        # what the Chains screen adds up
        assert item.breakdown.used == _files_on_disk(folder) > 0
        if chains_here:
            assert item.breakdown.used == sum(v.physical_bytes for v in chains_here)
            # the Repositories screen's Backups column counts the Chains screen's points
            assert engine.repository_store.backup_count(item.repository.id) == sum(
                len(v.points) for v in chains_here
            )
        # the gauge reads the filesystem that holds the folder
        assert item.reading is not None and item.reading.error is None
        assert item.reading.total == psutil.disk_usage(str(folder)).total
        assert engine.capacity.reading(item.repository.id) == item.reading
    copies = engine.copy_store.list_copies()
    every_point = sum(len(v.points) for v in views)
    offsite = engine.repository_store.get("offsite").id
    assert sum(1 for c in copies if c.destination_repository_id == offsite) == every_point


def test_no_job_waits_and_every_path_a_policy_or_repository_names_exists(
    world: DemoWorld, engine: Engine
) -> None:
    assert engine.job_store.list(states=("queued", "running", "paused"), limit=50) == []
    assert {j.state for j in engine.job_store.list(limit=100)} == {"succeeded"}
    for policy in engine.policies.list():
        for entry in policy.sources:
            for disk in entry["disks"]:
                assert Path(disk["source"]).is_file(), disk
                assert Path(disk["source"]).is_relative_to(world.root)
    for repo in engine.repository_store.list():
        assert Path(repo.path).is_dir() and Path(repo.path).is_relative_to(world.root)


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root")
def test_the_archive_locks_its_copies_with_the_immutable_flag(
    world: DemoWorld, engine: Engine
) -> None:
    locks = engine.locks.list()
    archive = engine.repository_store.get("archive")
    assert locks and all(lock.repository_id == archive.id for lock in locks)
    for lock in locks:
        assert attrs.is_immutable(world.repository("archive") / lock.path), lock.path


def test_sendense_demo_opens_the_console_and_leaves_nothing_behind(tmp_path: Path) -> None:
    real_state = tmp_path / "real-state"  # the operator's own: the demo never uses it
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp), "TERM": "xterm-256color", "SENDENSE_STATE_DIR": str(real_state)}
    with console_on_pty(env, ["demo"]) as console:
        deadline = time.monotonic() + 600  # the build takes ~1 min, more on a busy machine
        while b"Repositories" not in console.received:
            assert time.monotonic() < deadline, bytes(console.received[-400:])
            console.read(1.0)
        # the demo's own directory (a passing temporary file of the build may stand
        # beside it for a moment; the end checks that nothing at all is left)
        [made] = [p for p in temp.iterdir() if p.name.startswith("sendense-demo-")]
        console.settle()
        console.send("q")  # the Dashboard: q leaves
        deadline = time.monotonic() + 60
        while made.exists():
            assert time.monotonic() < deadline, list(made.rglob("*"))[:10]
            console.read(0.5)
    assert list(temp.iterdir()) == []
    assert not real_state.exists()
