# ruff: noqa: F401, F811  (fixtures imported from tests.engine.diskgen)
"""Immutability on real loop-mounted ext4/xfs with real chattr/lsattr (root).

A locked backup cannot be deleted or modified by the engine or by ``rm``; the
release job unlocks exactly the expired locks (FixedClock); drift is detected
and repaired; a clock that jumped backwards releases nothing; tmpfs and ramfs
are refused with the reason.
"""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.clock import FixedClock
from engine.events import Event
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.services.chains import LockedError
from engine.services.immutability import (
    ImmutabilityError,
    ImmutabilityUnsupported,
    LockedFile,
)
from engine.tools import attrs
from tests.engine.diskgen import MiB, SourceDisk, bk_engine

pytestmark = pytest.mark.root


def events_of(engine: Engine) -> list[Event]:
    seen: list[Event] = []
    engine.bus.subscribe(seen.append)
    return seen


def add_repo(engine: Engine, root: Path, clock: FixedClock, name: str = "vault", **kw: Any) -> Any:
    return engine.repository_store.add(
        name=name, kind="local", path=str(root), now=clock.now(), **kw
    )


def put(root: Path, rel: str, data: bytes = b"backup data\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_a_backup_landing_on_an_immutable_repository_cannot_be_deleted_or_changed(
    bk_engine: Engine, loop_fs: Any, tmp_path: Path, clock: FixedClock, fstype: str
) -> None:
    fs = loop_fs(fstype, 64 if fstype == "ext4" else 300)
    repo = add_repo(bk_engine, fs.mountpoint, clock)
    bk_engine.locks.configure_repository(repo, 30, actor="test")
    src = SourceDisk.create(tmp_path / "disk.raw", 16 * MiB, seed=5)
    run = bk_engine.backups.run(repo.id, "web01", [DiskSource("sda", str(src.path))])
    assert run.ok, run.sentence()
    point = run.disks[0]
    path = fs.mountpoint / str(point.path)

    # the backup job's lock step locked it, expiry in the catalog
    assert attrs.is_immutable(path)
    [lock] = bk_engine.locks.list()
    assert lock.backup_id == point.backup_id and lock.state == "active"
    assert lock.expires_at == clock.now() + timedelta(days=30)
    why = bk_engine.locks.why_locked(path)
    assert why == "locked by immutability until 2026-12-24 09:00 UTC"

    # the engine refuses, naming the lock and its end
    with pytest.raises(LockedError, match="locked until 2026-12-24 09:00 UTC"):
        bk_engine.chains.delete_point(int(point.backup_id))
    with pytest.raises(LockedFile, match="until 2026-12-24 09:00 UTC"):
        bk_engine.locks.assert_unlocked(path)
    # and so does the kernel, for rm and for writers
    rm = subprocess.run(["rm", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert rm.returncode != 0 and "Operation not permitted" in rm.stderr
    with pytest.raises(PermissionError):
        path.open("r+b")
    assert path.exists()

    # after expiry the release job clears the flag; then deletion works
    clock.advance(timedelta(days=31))
    report = bk_engine.locks.release_expired(actor="test")
    assert report.released == [lock.id]
    assert not attrs.is_immutable(path)
    bk_engine.chains.delete_point(int(point.backup_id))
    assert not path.exists()


def test_release_job_unlocks_exactly_the_expired_locks(
    bk_engine: Engine, loop_fs: Any, clock: FixedClock
) -> None:
    fs = loop_fs("ext4", 32)
    repo = add_repo(bk_engine, fs.mountpoint, clock)
    files = {days: put(fs.mountpoint, f"c/{days}.qcow2") for days in (5, 10, 30)}
    locks = {
        days: bk_engine.locks.lock_landed(repo, f"c/{days}.qcow2", days=days).lock for days in files
    }
    assert all(attrs.is_immutable(p) for p in files.values())

    clock.advance(timedelta(days=10, seconds=1))
    report = bk_engine.locks.release_expired()
    assert sorted(report.released) == sorted([locks[5].id, locks[10].id])  # type: ignore[union-attr]
    assert not attrs.is_immutable(files[5]) and not attrs.is_immutable(files[10])
    assert attrs.is_immutable(files[30])
    states = {lock.id: lock.state for lock in bk_engine.locks.list()}
    assert states[locks[30].id] == "active"  # type: ignore[union-attr]
    # running it again releases nothing more
    assert bk_engine.locks.release_expired().released == []


def test_drift_is_detected_reported_critical_and_repaired(
    bk_engine: Engine, loop_fs: Any, clock: FixedClock
) -> None:
    fs = loop_fs("ext4", 32)
    repo = add_repo(bk_engine, fs.mountpoint, clock)
    path = put(fs.mountpoint, "c/0.qcow2")
    lock = bk_engine.locks.lock_landed(repo, "c/0.qcow2", days=7).lock
    seen = events_of(bk_engine)
    subprocess.run(["chattr", "-i", str(path)], check=True, timeout=30)  # root, behind our back
    assert not attrs.is_immutable(path)

    report = bk_engine.locks.check_drift()
    assert report.drift_repaired == [lock.id]  # type: ignore[union-attr]
    assert attrs.is_immutable(path)
    [drift] = [e for e in seen if e.kind == "immutability.drift"]
    assert drift.level == "critical" and "0.qcow2" in drift.message
    assert "set again" in drift.message
    # a second check finds nothing to repair
    assert bk_engine.locks.check_drift().drift_repaired == []


def test_a_clock_that_jumped_backwards_releases_nothing(
    bk_engine: Engine, loop_fs: Any, clock: FixedClock
) -> None:
    fs = loop_fs("ext4", 32)
    repo = add_repo(bk_engine, fs.mountpoint, clock)
    path = put(fs.mountpoint, "c/0.qcow2")
    bk_engine.locks.lock_landed(repo, "c/0.qcow2", days=10)
    clock.advance(timedelta(days=12))
    bk_engine.bus.publish(Event(kind="test.marker", message="recorded at day 12"))
    clock.advance(timedelta(days=-1))  # day 11: the lock has expired by this clock too
    seen = events_of(bk_engine)

    report = bk_engine.locks.release_expired()
    assert report.released == []
    assert report.clock is not None and not report.clock.ok
    assert attrs.is_immutable(path)
    [suspect] = [e for e in seen if e.kind == "immutability.clock_suspect"]
    assert suspect.level == "critical" and "jumped backwards" in suspect.message
    # once time has caught up with what was recorded, release works again
    clock.advance(timedelta(days=1, minutes=1))
    assert len(bk_engine.locks.release_expired().released) == 1


def test_lock_periods_can_be_extended_never_shortened(
    bk_engine: Engine, loop_fs: Any, clock: FixedClock
) -> None:
    fs = loop_fs("ext4", 32)
    repo = add_repo(bk_engine, fs.mountpoint, clock)
    bk_engine.locks.configure_repository(repo, 30)
    with pytest.raises(ImmutabilityError, match="extended, never shortened"):
        bk_engine.locks.configure_repository(repo, 10)
    with pytest.raises(ImmutabilityError, match="cannot be turned off"):
        bk_engine.locks.disable_repository(repo)
    assert bk_engine.repository_store.get(repo.id).immutable_days == 30
    assert bk_engine.locks.configure_repository(repo, 60).immutable_days == 60

    put(fs.mountpoint, "c/0.qcow2")
    lock = bk_engine.locks.lock_landed(repo.id, "c/0.qcow2").lock
    assert lock is not None
    with pytest.raises(ImmutabilityError, match="never shortened"):
        bk_engine.locks.extend(lock.id, clock.now() + timedelta(days=5))
    longer = bk_engine.locks.extend(lock.id, clock.now() + timedelta(days=90))
    assert longer.expires_at == clock.now() + timedelta(days=90)
    # landing again (a policy asking for fewer days) never moves the expiry earlier
    again = bk_engine.locks.lock_landed(repo.id, "c/0.qcow2", days=1).lock
    assert again is not None and again.expires_at == clock.now() + timedelta(days=90)


def test_grace_period_leaves_a_new_backup_removable_then_locks_it(
    bk_engine: Engine, loop_fs: Any, clock: FixedClock
) -> None:
    fs = loop_fs("ext4", 32)
    repo = add_repo(bk_engine, fs.mountpoint, clock)
    repo = bk_engine.locks.configure_repository(repo, 7, grace_hours=2)
    path = put(fs.mountpoint, "c/0.qcow2")
    lock = bk_engine.locks.lock_landed(repo, "c/0.qcow2").lock
    assert lock is not None and lock.state == "pending"
    assert not attrs.is_immutable(path)
    assert "grace period" in (bk_engine.locks.why_locked(path) or "")
    clock.advance(timedelta(hours=1))
    assert bk_engine.locks.apply_pending() == []
    clock.advance(timedelta(hours=1, seconds=1))
    assert bk_engine.locks.apply_pending() == [lock.id]
    assert attrs.is_immutable(path)


def test_immutability_on_tmpfs_is_refused_because_it_does_not_survive_a_reboot(
    bk_engine: Engine, tmpfs: Path, clock: FixedClock
) -> None:
    repo = add_repo(bk_engine, tmpfs, clock)
    with pytest.raises(ImmutabilityUnsupported, match="tmpfs lives in memory") as info:
        bk_engine.locks.configure_repository(repo, 30)
    assert "ext4, xfs or btrfs" in (info.value.hint or "")
    assert not bk_engine.repository_store.get(repo.id).immutable  # nothing saved
    assert list(tmpfs.iterdir()) == []  # no canary left behind


def test_immutability_on_ramfs_is_refused_with_the_reason(
    bk_engine: Engine, ramfs: Path, clock: FixedClock
) -> None:
    repo = add_repo(bk_engine, ramfs, clock)
    with pytest.raises(ImmutabilityUnsupported, match="ramfs has no immutable flag"):
        bk_engine.locks.configure_repository(repo, 30)
    assert not bk_engine.repository_store.get(repo.id).immutable


def test_network_repositories_are_refused_before_touching_them(
    bk_engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    repo = bk_engine.repository_store.add(
        name="share", kind="nfs", path=str(tmp_path), server="nas", export="/x", now=clock.now()
    )
    with pytest.raises(ImmutabilityUnsupported, match="NFS share"):
        bk_engine.locks.configure_repository(repo, 30)


def test_the_console_text_says_what_the_flag_does_and_does_not_protect_against(
    bk_engine: Engine,
) -> None:
    assert "non-root user" in bk_engine.locks.protects
    assert "does not stop root" in bk_engine.locks.does_not_protect
