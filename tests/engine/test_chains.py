# ruff: noqa: F401, F811  (fixtures imported from tests.engine.diskgen)
"""The chain manager: validation against real files, broken chains on purpose,
consolidation and deletion with real qemu-img; the chain store on both catalogs."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.catalog import Catalog
from engine.catalog.chains import ChainStore
from engine.catalog.locks import LockStore
from engine.catalog.models import ImmutabilityLock
from engine.catalog.repositories import RepositoryStore
from engine.clock import FixedClock
from engine.errors import SendenseError
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.services.chains import ChainError, LockedError
from engine.services.manifests import read_manifest
from engine.tools import attrs, qemu_img
from sendense_tui.hints import cli_hint
from tests.engine.diskgen import MiB, SourceDisk, bk_engine, disk, repo, sha256_of


def build_chain(
    engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, incrementals: int = 3
) -> tuple[list[int], dict[int, str]]:
    """A full and ``incrementals`` incrementals; returns point ids and the source hash
    at each point."""
    sources = [DiskSource("sda", str(disk.path))]
    ids: list[int] = []
    moments: dict[int, str] = {}
    for i in range(incrementals + 1):
        if i:
            disk.change([(i * 2 * MiB, 512 * 1024)])
            clock.advance(3600)
        run = engine.backups.run(repo.id, "web01", sources)
        assert run.ok, run.sentence()
        bid = run.disks[0].backup_id
        assert bid is not None
        ids.append(bid)
        moments[bid] = disk.sha256()
    return ids, moments


def point_path(engine: Engine, repo: Any, backup_id: int) -> Path:
    return Path(repo.path) / engine.chain_store.get_backup(backup_id).path


def restored(engine: Engine, backup_id: int, tmp_path: Path) -> str:
    target = tmp_path / f"r{backup_id}.raw"
    engine.restores.restore(backup_id, str(target), overwrite=True)
    return sha256_of(target)


def test_healthy_chain_validates_with_sizes(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    ids, _ = build_chain(bk_engine, repo, disk, clock)
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    report = bk_engine.chains.validate(chain_id, deep=True)
    assert report.ok and report.findings == []
    assert "4 points, all consistent" in report.sentence()
    (view,) = bk_engine.chains.overview()
    assert view.logical_bytes == disk.size
    assert view.logical_total == 4 * disk.size
    assert view.allocated_bytes == disk.size + 3 * 512 * 1024
    assert view.physical_bytes == sum(point_path(bk_engine, repo, i).stat().st_size for i in ids)
    details = bk_engine.chains.point_details(ids[-1])
    assert [c["backing"] for c in details["chain"]] == [
        point_path(bk_engine, repo, i).name for i in reversed(ids[:-1])
    ] + [None]


@pytest.mark.parametrize("damage", ["delete", "rename", "corrupt_header", "truncate"])
def test_broken_chain_is_reported_with_what_to_do_and_next_backup_is_a_full(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, damage: str
) -> None:
    seen: list[Any] = []
    bk_engine.bus.subscribe(seen.append)
    ids, _ = build_chain(bk_engine, repo, disk, clock)
    middle = point_path(bk_engine, repo, ids[1])
    if damage == "delete":
        middle.unlink()
    elif damage == "rename":
        middle.rename(middle.with_name("renamed.qcow2"))
    elif damage == "corrupt_header":
        with open(middle, "r+b") as f:
            f.write(b"\0" * 512)
    else:
        with open(middle, "r+b") as f:
            f.truncate(middle.stat().st_size // 2)
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    report = bk_engine.chains.validate(chain_id)
    assert not report.ok
    kinds = {f.kind for f in report.findings}
    first = next(f for f in report.findings if f.breaking)
    assert first.backup_id == ids[1]
    assert "the next backup of this disk starts a new full automatically" in first.hint
    if damage in ("delete", "rename"):
        assert "missing" in kinds
        assert "2 later point(s) cannot be restored" in first.message
        assert "put the file back" in first.hint
    if damage == "rename":
        orphan = next(f for f in report.findings if f.kind == "orphan")
        assert "renamed.qcow2" in orphan.message and "rename it back" in orphan.hint
    if damage == "corrupt_header":
        assert kinds == {"corrupt"}
        assert "not a readable QCOW2 image" in first.message
    if damage == "truncate":
        assert "changed" in kinds and "the file changed after it was written" in first.message
    chain = bk_engine.chain_store.get_chain(chain_id)
    assert chain.state == "broken"
    assert any(e.kind == "chain.broken" and e.level == "error" for e in seen)
    # the next backup does not fail forever: it starts a new full, loudly
    clock.advance(3600)
    run = bk_engine.backups.run(repo.id, "web01", [DiskSource("sda", str(disk.path))])
    assert run.ok and run.disks[0].kind == "full"
    assert any(e.kind == "backup.new_full" and "broken" in e.message for e in seen)
    # restoring a point behind the break says why instead of writing garbage
    with pytest.raises(Exception, match=r"cannot be read through its chain|missing|refused to"):
        bk_engine.restores.restore(ids[-1], str(Path(repo.path).parent / "x.raw"))


def test_wrong_backing_reference_names_the_fix(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    ids, _ = build_chain(bk_engine, repo, disk, clock)
    last = point_path(bk_engine, repo, ids[3])
    full_name = point_path(bk_engine, repo, ids[0]).name
    # point the newest at the full: readable, but not what the catalog recorded
    qemu_img.rebase(last, full_name, unsafe=True)
    bk_engine.chain_store.update_backup(ids[3], file_size=last.stat().st_size)
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    report = bk_engine.chains.validate(chain_id)
    (finding,) = report.findings
    assert finding.kind == "wrong_backing"
    expected = point_path(bk_engine, repo, ids[2]).name
    assert f"points at '{full_name}'" in finding.message
    assert f"qemu-img rebase -u -b {expected}" in finding.hint


def test_orphan_partial_file_is_reported_but_chain_stays_usable(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    ids, _ = build_chain(bk_engine, repo, disk, clock, incrementals=1)
    left = point_path(bk_engine, repo, ids[0]).parent / ".0002-inc-x.qcow2.partial"
    left.write_bytes(b"half")
    report = bk_engine.chains.validate(bk_engine.chain_store.get_backup(ids[0]).chain_id)
    assert report.ok
    (orphan,) = report.findings
    assert "left by an interrupted backup" in orphan.message


def test_consolidate_merges_oldest_point_and_every_other_point_still_restores(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, tmp_path: Path
) -> None:
    ids, moments = build_chain(bk_engine, repo, disk, clock)
    old_full = point_path(bk_engine, repo, ids[0])
    old_inc1 = point_path(bk_engine, repo, ids[1])
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    later_files = {i: point_path(bk_engine, repo, i).read_bytes() for i in ids[2:]}
    new_full = bk_engine.chains.consolidate(chain_id)
    assert new_full.id == ids[1] and new_full.kind == "full"
    assert not old_full.exists()
    points = bk_engine.chain_store.backups(chain_id)
    assert [p.id for p in points] == ids[1:]
    assert bk_engine.chain_store.get_backup(ids[0]).state == "deleted"
    # the merged full replaced the target's file under its name: the later points (and
    # their copies elsewhere) are untouched, header and all
    new_file = Path(repo.path) / new_full.path
    assert new_file == old_inc1
    assert qemu_img.info(new_file).backing_filename is None
    assert {i: point_path(bk_engine, repo, i).read_bytes() for i in ids[2:]} == later_files
    assert qemu_img.info(point_path(bk_engine, repo, ids[2])).backing_filename == new_file.name
    report = bk_engine.chains.validate(chain_id, deep=True)
    assert report.ok and report.findings == []
    for bid in ids[1:]:
        assert restored(bk_engine, bid, tmp_path) == moments[bid]
    # shorten further: everything up to the newest point merges into one full
    bk_engine.chains.consolidate(chain_id, new_base_id=ids[3])
    assert [p.id for p in bk_engine.chain_store.backups(chain_id)] == [ids[3]]
    assert restored(bk_engine, ids[3], tmp_path) == moments[ids[3]]
    last = bk_engine.chain_store.get_backup(ids[3])
    # the merged points' files, manifests and digest tables are gone; the new full
    # keeps its manifest and its table (a merge does not change what a point holds)
    assert sorted(p.name for p in new_file.parent.iterdir()) == [
        Path(last.path).name,
        Path(last.path).name + ".digests",
        Path(last.path).name + ".json",
    ]
    manifest = read_manifest(Path(repo.path) / last.path)
    assert (manifest.kind, manifest.parent, manifest.position) == ("full", None, 3)
    assert manifest.sha256 == last.checksum == sha256_of(Path(repo.path) / last.path)


def test_consolidate_refused_on_locked_points(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    ids, _ = build_chain(bk_engine, repo, disk, clock, incrementals=2)
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    with bk_engine.catalog.session() as s:
        s.add(
            ImmutabilityLock(
                repository_id=repo.id,
                backup_id=ids[0],
                path=bk_engine.chain_store.get_backup(ids[0]).path,
                state="active",
                locked_at=clock.now(),
                expires_at=clock.now() + timedelta(days=7),
                created_at=clock.now(),
            )
        )
    with pytest.raises(LockedError, match="is locked until 2026-12-01 11:00 UTC"):
        bk_engine.chains.consolidate(chain_id)
    with pytest.raises(LockedError):
        bk_engine.chains.delete_point(ids[0])
    # deleting the newest point is fine: the lock is on the full
    plan = bk_engine.chains.delete_point(ids[2])
    assert [b.id for b in plan.goes] == [ids[2]]
    assert len(bk_engine.chain_store.backups(chain_id)) == 2


@pytest.mark.root
def test_consolidate_refused_on_immutable_file(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    ids, _ = build_chain(bk_engine, repo, disk, clock, incrementals=1)
    full = point_path(bk_engine, repo, ids[0])
    try:
        attrs.set_immutable(full)
    except attrs.ImmutableUnsupported:
        pytest.skip("the tmp filesystem has no immutable flag")
    try:
        with pytest.raises(LockedError, match="immutable"):
            bk_engine.chains.consolidate(bk_engine.chain_store.get_backup(ids[0]).chain_id)
        assert full.exists()
    finally:
        attrs.set_immutable(full, False)


def test_consolidate_refused_on_broken_chain(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    ids, _ = build_chain(bk_engine, repo, disk, clock, incrementals=2)
    point_path(bk_engine, repo, ids[1]).unlink()
    with pytest.raises(ChainError, match="is broken"):
        bk_engine.chains.consolidate(bk_engine.chain_store.get_backup(ids[0]).chain_id)


def test_delete_point_takes_later_points_and_next_backup_builds_on_what_is_left(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, tmp_path: Path
) -> None:
    ids, moments = build_chain(bk_engine, repo, disk, clock)
    plan = bk_engine.chains.delete_plan(ids[2])
    assert [b.id for b in plan.goes] == [ids[2], ids[3]]
    assert not plan.chain_ends and "deletes 2 points" in plan.sentence()
    files = [point_path(bk_engine, repo, i) for i in ids]
    bk_engine.chains.delete_point(ids[2], actor="test")
    assert [f.exists() for f in files] == [True, True, False, False]
    assert [b.state for b in map(bk_engine.chain_store.get_backup, ids)] == [
        "complete",
        "complete",
        "deleted",
        "deleted",
    ]
    clock.advance(3600)
    disk.change([(MiB, 4096)])
    run = bk_engine.backups.run(repo.id, "web01", [DiskSource("sda", str(disk.path))])
    assert run.disks[0].kind == "incremental"
    new = bk_engine.chain_store.get_backup(run.disks[0].backup_id or 0)
    assert new.parent_id == ids[1]
    assert restored(bk_engine, new.id, tmp_path) == disk.sha256()
    assert restored(bk_engine, ids[1], tmp_path) == moments[ids[1]]
    # deleting the full ends the chain
    plan = bk_engine.chains.delete_point(ids[0])
    assert plan.chain_ends
    assert bk_engine.chain_store.get_chain(new.chain_id).state == "retired"
    assert os.listdir(files[0].parent) == []


def test_chain_store_on_both_catalogs(catalog: Catalog, clock: FixedClock) -> None:
    repos = RepositoryStore(catalog)
    r = repos.add(name="r", kind="local", path="/srv/r", now=clock.now())
    store = ChainStore(catalog)
    fields = {"path": "chains/vm/sda/a/0000-full.qcow2", "state": "complete"}
    chain, full = store.add_full(
        repository_id=r.id,
        vm_name="vm",
        disk_name="sda",
        directory="chains/vm/sda/a",
        now=clock.now(),
        backup={**fields, "point_time": clock.now(), "file_size": 10, "checksum": "x"},
    )
    inc = store.add_incremental(
        chain_id=chain.id,
        parent_id=full.id,
        position=1,
        now=clock.now(),
        backup={
            "path": "chains/vm/sda/a/0001-inc.qcow2",
            "point_time": clock.now(),
            "state": "complete",
        },
    )
    assert store.current_chain(r.id, "vm", "sda").id == chain.id  # type: ignore[union-attr]
    assert store.directory_taken(r.id, "chains/vm/sda/a")
    chain2, _ = store.add_full(
        repository_id=r.id,
        vm_name="vm",
        disk_name="sda",
        directory="chains/vm/sda/b",
        now=clock.now(),
        backup={**fields, "path": "chains/vm/sda/b/0.qcow2", "point_time": clock.now()},
        retire=[chain.id],
        retire_detail="new full",
    )
    assert store.get_chain(chain.id).state == "retired"
    assert store.current_chain(r.id, "vm", "sda").id == chain2.id  # type: ignore[union-attr]
    store.promote_to_full(
        backup_id=inc.id,
        path="chains/vm/sda/a/0001-full.qcow2",
        fields={"checksum": "y"},
        deleted_ids=[full.id],
        detail="merged",
    )
    assert [(b.id, b.kind) for b in store.backups(chain.id)] == [(inc.id, "full")]
    assert len(store.backups(chain.id, include_deleted=True)) == 2
    assert len(store.list_backups(repository_id=r.id)) == 2
    with catalog.session() as s:
        s.add(
            ImmutabilityLock(
                repository_id=r.id,
                backup_id=inc.id,
                path="p",
                state="active",
                expires_at=clock.now() + timedelta(hours=1),
                created_at=clock.now(),
            )
        )
    assert [lock.backup_id for lock in store.active_locks([inc.id], clock.now())] == [inc.id]
    assert set(store.lock_counts(clock.now())) == {inc.id}
    # past its expiry a lock still holds until the lock job released it (only the
    # release checks that the clock can be trusted)
    later = clock.now() + timedelta(hours=2)
    [held] = store.active_locks([inc.id], later)
    LockStore(catalog).mark_released(held.id, later)
    assert store.active_locks([inc.id], later) == []
    assert store.lock_counts(later) == {}


def test_delete_refused_while_a_later_point_is_exported_or_mounted(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    """Deleting a point that an NBD export serves (or a file-restore mount browses) would
    leave the operator reading a backup the catalog says is gone: refuse, say which."""
    from engine.catalog.restore import RestoreStore

    ids, _ = build_chain(bk_engine, repo, disk, clock, incrementals=2)
    restores = RestoreStore(bk_engine.catalog)
    export = restores.add_export(
        backup_id=ids[2], export_name="live", uri="nbd+unix:///live", started_at=clock.now()
    )
    with pytest.raises(ChainError, match="NBD export 'live' serves point") as err:
        bk_engine.chains.delete_point(ids[1], actor="test")
    # the engine names the action; the CLI renders it as its command
    assert err.value.action is not None and err.value.action.subject == "live"
    assert err.value.hint == "stop export live first"
    assert cli_hint(err.value) == "stop it first: sendense export stop live"
    assert all(point_path(bk_engine, repo, i).exists() for i in ids)
    assert bk_engine.chain_store.get_backup(ids[1]).state == "complete"
    restores.update_export(export.id, state="stopped")
    mount = restores.add_mount(
        backup_id=ids[1],
        state="mounted",
        base_dir="/nowhere",
        created_at=clock.now(),
        last_used_at=clock.now(),
        expires_at=clock.now() + timedelta(hours=1),
    )
    with pytest.raises(ChainError, match=f"restore mount {mount.id} browses point {ids[1]}"):
        bk_engine.chains.delete_point(ids[1], actor="test")
    assert point_path(bk_engine, repo, ids[1]).exists()
    restores.delete_mount(mount.id)
    bk_engine.chains.delete_point(ids[1], actor="test")  # nothing reads it: it may go now
    assert not point_path(bk_engine, repo, ids[1]).exists()


def test_consolidate_refused_while_a_merged_point_is_exported(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    from engine.catalog.restore import RestoreStore

    ids, _ = build_chain(bk_engine, repo, disk, clock, incrementals=2)
    RestoreStore(bk_engine.catalog).add_export(
        backup_id=ids[0], export_name="full", uri="nbd+unix:///full", started_at=clock.now()
    )
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    with pytest.raises(ChainError, match=r"cannot consolidate chain .*NBD export 'full'"):
        bk_engine.chains.consolidate(chain_id)
    assert point_path(bk_engine, repo, ids[0]).exists()


def test_consolidate_refused_when_the_network_repository_is_not_mounted(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    """The same "really mounted" gate as backups: a network repository whose path is a
    plain directory (the share fell off) gets no new full written onto the local disk.
    (No kernel NFS client here: the repository is switched to kind nfs in the catalog.)"""
    ids, _ = build_chain(bk_engine, repo, disk, clock, incrementals=2)
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    bk_engine.repository_store.update(repo.id, clock.now(), kind="nfs", server="nas", export="/x")
    root = Path(repo.path)
    files_before = {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    rows_before = [(b.id, b.kind, b.state, b.path) for b in bk_engine.chain_store.backups(chain_id)]
    with pytest.raises(SendenseError, match="is not mounted, so nothing may be written there"):
        bk_engine.chains.consolidate(chain_id)
    assert {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()} == files_before
    rows_after = [(b.id, b.kind, b.state, b.path) for b in bk_engine.chain_store.backups(chain_id)]
    assert rows_after == rows_before
    assert bk_engine.chain_store.get_chain(chain_id).state != "broken"
