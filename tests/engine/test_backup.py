# ruff: noqa: F401, F811  (fixtures imported from tests.engine.diskgen)
"""Full and incremental backups with real qemu-img, real files and a real catalog (SQLite).

The source disks are random data with known regions changed between backups;
every restore point is restored and compared byte for byte (sha256) with the
source as it was at that moment.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from engine.clock import FixedClock
from engine.digests import table_path
from engine.errors import JobCancelled, ValidationError
from engine.events import Event
from engine.runtime import Engine
from engine.services.backup import BackupError, BackupFailed, DiskSource
from engine.services.manifests import read_manifest
from engine.tools import qemu_img
from engine.tools.nbd import start_qemu_nbd
from tests.engine.diskgen import (
    CLUSTER,
    MiB,
    SourceDisk,
    bk_engine,
    cluster_span,
    disk,
    repo,
    sha256_of,
)


def restore_hash(engine: Engine, backup_id: int, tmp_path: Path) -> str:
    target = tmp_path / f"restored-{backup_id}.raw"
    if target.exists():
        target.unlink()
    engine.restores.restore(backup_id, str(target))
    digest = sha256_of(target)
    target.unlink()
    return digest


def events_of(engine: Engine) -> list[Event]:
    seen: list[Event] = []
    engine.bus.subscribe(seen.append)
    return seen


def test_full_then_incrementals_hold_only_changed_clusters_and_restore_exactly(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock
) -> None:
    src = SourceDisk.create(tmp_path / "vm-disk.raw", 64 * MiB, seed=3)
    sources = [DiskSource("sda", str(src.path))]
    run = bk_engine.backups.run(repo.id, "web01", sources)
    assert run.ok, run.sentence()
    full = run.disks[0]
    assert full.kind == "full"
    moments = {full.backup_id: src.sha256()}
    assert full.allocated_bytes == 64 * MiB

    changes = [
        [(10 * MiB, 2 * MiB)],
        [(0, 4096), (33 * MiB + 100, 300 * 1024)],
        [(60 * MiB, 4 * MiB), (20 * MiB, 1)],
    ]
    for regions in changes:
        clock.advance(3600)
        src.change(regions)
        run = bk_engine.backups.run(repo.id, "web01", sources)
        assert run.ok, run.sentence()
        point = run.disks[0]
        assert point.kind == "incremental"
        expected = cluster_span(regions)
        # exactly the changed clusters are stored in the new file...
        assert point.allocated_bytes == expected
        # ...and the file is not much more than that (qcow2 header and tables)
        assert expected <= point.file_size <= expected + 1 * MiB
        moments[point.backup_id] = src.sha256()

    chain = bk_engine.chain_store.current_chain(repo.id, "web01", "sda")
    assert chain is not None and chain.state == "ok"
    points = bk_engine.chain_store.backups(chain.id)
    assert [p.kind for p in points] == ["full", "incremental", "incremental", "incremental"]
    # backing references are plain file names: the chain directory is relocatable
    for parent, child in itertools.pairwise(points):
        child_file = Path(repo.path) / child.path
        assert qemu_img.info(child_file).backing_filename == Path(parent.path).name
    # every point restores to exactly the source bytes of its moment
    for backup_id, digest in moments.items():
        assert restore_hash(bk_engine, backup_id, tmp_path) == digest
    # a copy of the chain directory elsewhere still reads through its chain
    moved = tmp_path / "moved"
    shutil.copytree(Path(repo.path) / chain.directory, moved)
    newest = moved / Path(points[-1].path).name
    assert len(qemu_img.info_chain(newest)) == 4
    assert qemu_img.compare(newest, src.path, b_fmt="raw")
    # the catalog recorded what the files hold
    for p in points:
        assert p.checksum == sha256_of(Path(repo.path) / p.path)
        assert p.virtual_size == 64 * MiB


def test_backup_through_nbd_unix_socket(
    bk_engine: Engine, repo: Any, disk: SourceDisk, tmp_path: Path, clock: FixedClock
) -> None:
    sock = tmp_path / "src.sock"
    with start_qemu_nbd(disk.path, socket_path=sock, fmt="raw", export_name="sda") as server:
        assert server.uri.startswith("nbd+unix://")
        sources = [DiskSource("sda", server.uri)]
        first = bk_engine.backups.run(repo.id, "db01", sources)
        assert first.ok, first.sentence()
        full_hash = disk.sha256()
        clock.advance(60)
        disk.change([(5 * MiB, 256 * 1024)])
        second = bk_engine.backups.run(repo.id, "db01", sources)
        assert second.ok, second.sentence()
    point = second.disks[0]
    assert point.kind == "incremental"
    assert point.allocated_bytes == 256 * 1024
    assert restore_hash(bk_engine, first.disks[0].backup_id, tmp_path) == full_hash
    assert restore_hash(bk_engine, point.backup_id, tmp_path) == disk.sha256()
    # the source is recorded, the socket path is not a secret but credentials would be
    row = bk_engine.chain_store.get_backup(point.backup_id)
    assert row.source is not None and row.source.startswith("nbd+unix:///sda")


def test_qcow2_source_and_zstd_full(
    bk_engine: Engine, repo: Any, disk: SourceDisk, tmp_path: Path, clock: FixedClock
) -> None:
    q = tmp_path / "source.qcow2"
    qemu_img.convert(disk.path, q, src_fmt="raw")
    sources = [DiskSource("sda", str(q), fmt="qcow2")]
    run = bk_engine.backups.run(repo.id, "app", sources, compression="zstd")
    assert run.ok, run.sentence()
    full = bk_engine.chain_store.get_backup(run.disks[0].backup_id)
    assert full.compression == "zstd"
    assert qemu_img.info(Path(repo.path) / full.path).compression_type == "zstd"
    clock.advance(60)
    # change the qcow2 source through qemu-img itself
    changed = tmp_path / "changed.raw"
    shutil.copy(disk.path, changed)
    with open(changed, "r+b") as f:
        f.seek(MiB)
        f.write(os.urandom(128 * 1024))
    q.unlink()
    qemu_img.convert(changed, q, src_fmt="raw")
    run = bk_engine.backups.run(repo.id, "app", sources)
    assert run.ok and run.disks[0].kind == "incremental"
    assert run.disks[0].allocated_bytes == 128 * 1024
    assert restore_hash(bk_engine, run.disks[0].backup_id, tmp_path) == sha256_of(changed)


def test_source_that_does_not_exist_or_cannot_be_read(
    bk_engine: Engine, repo: Any, tmp_path: Path
) -> None:
    run = bk_engine.backups.run(
        repo.id,
        "web01",
        [
            DiskSource("sda", str(tmp_path / "nope.raw")),
            DiskSource("sdb", str(tmp_path)),
            DiskSource("sdc", f"nbd+unix:///x?socket={tmp_path}/dead.sock"),
        ],
    )
    assert not run.ok
    errors = {d.disk: d.error or "" for d in run.disks}
    assert "nope.raw of disk sda does not exist" in errors["sda"]
    assert "is a directory" in errors["sdb"]
    assert "sdc cannot be read" in errors["sdc"]
    # nothing was written, nothing recorded
    assert bk_engine.chain_store.list_chains() == []
    assert list(Path(repo.path).iterdir()) == []


def test_bad_names_and_modes_are_refused_before_anything_is_written(
    bk_engine: Engine, repo: Any, disk: SourceDisk
) -> None:
    with pytest.raises(ValidationError, match="VM name"):
        bk_engine.backups.run(repo.id, "../etc", [DiskSource("sda", str(disk.path))])
    with pytest.raises(ValidationError, match="repeat"):
        bk_engine.backups.run(
            repo.id, "vm", [DiskSource("sda", str(disk.path)), DiskSource("sda", "x")]
        )
    with pytest.raises(ValidationError, match="mode"):
        bk_engine.backups.run(repo.id, "vm", [DiskSource("sda", str(disk.path))], mode="diff")


def test_multi_disk_job_fails_if_one_disk_fails_and_keeps_the_others(
    bk_engine: Engine, repo: Any, disk: SourceDisk, tmp_path: Path
) -> None:
    seen = events_of(bk_engine)
    job = bk_engine.backups.submit(
        repo.id,
        "web01",
        [DiskSource("sda", str(disk.path)), DiskSource("sdb", str(tmp_path / "gone.raw"))],
    )
    bk_engine.start()
    final = wait_job(bk_engine, job.id)
    assert final.state == "failed"
    assert "1 of 2 disks of web01 failed: sdb" in (final.error or "")
    assert "Kept: sda (full #" in (final.error or "")
    chains = bk_engine.chain_store.list_chains()
    assert [(c.disk_name, c.state) for c in chains] == [("sda", "ok")]
    assert any(e.kind == "backup.completed" for e in seen)
    assert any(e.kind == "backup.failed" and "sdb" in e.message for e in seen)
    assert final.bytes_total == disk.size  # the failed disk could not even be probed


def wait_job(engine: Engine, job_id: int, timeout: float = 60.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = engine.job_store.get(job_id)
        if job.state in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_backup_job_reports_progress_in_bytes(
    bk_engine: Engine, repo: Any, disk: SourceDisk
) -> None:
    progress: list[tuple[int, int]] = []
    bk_engine.bus.subscribe(
        lambda e: progress.append((e.data["bytes_done"], e.data["bytes_total"])),
        ("job.progress",),
    )
    job = bk_engine.backups.submit(repo.id, "web01", [DiskSource("sda", str(disk.path))])
    bk_engine.start()
    final = wait_job(bk_engine, job.id)
    assert final.state == "succeeded", final.error
    assert final.bytes_done == final.bytes_total == disk.size
    assert progress and progress[-1] == (disk.size, disk.size)
    assert all(total == disk.size for _, total in progress)
    assert final.result["disks"][0]["kind"] == "full"


class _CancelAfter:
    """A JobContext stand-in that cancels at the n-th check (the real JobContext needs
    a running JobRunner; this drives the same code path deterministically)."""

    job_id = None

    def __init__(self, checks: int) -> None:
        self.left = checks
        self.stopped: JobCancelled | None = None

    def check(self) -> None:
        self.left -= 1
        if self.left < 0:
            self.stopped = JobCancelled("cancelled by the test")
            raise self.stopped

    # JobContext's polling form of check (what qemu-img's should_stop calls)
    def should_stop(self) -> bool:
        try:
            self.check()
        except JobCancelled:
            return True
        return False

    def stop_error(self) -> JobCancelled:
        return self.stopped or JobCancelled("stopped")

    def raise_stop(self) -> None:
        raise self.stop_error()

    def progress(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_cancel_removes_the_partial_file_and_keeps_the_chain(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    sources = [DiskSource("sda", str(disk.path))]
    assert bk_engine.backups.run(repo.id, "web01", sources).ok
    before = sorted(p.name for p in Path(repo.path).rglob("*"))
    clock.advance(60)
    disk.change([(0, 8 * MiB)])
    with pytest.raises(JobCancelled):
        bk_engine.backups.run(repo.id, "web01", sources, ctx=_CancelAfter(0))  # type: ignore[arg-type]
    assert sorted(p.name for p in Path(repo.path).rglob("*")) == before
    chain = bk_engine.chain_store.current_chain(repo.id, "web01", "sda")
    assert chain is not None and len(bk_engine.chain_store.backups(chain.id)) == 1


def test_full_refused_with_numbers_when_repository_lacks_room(
    bk_engine: Engine, repo: Any, disk: SourceDisk
) -> None:
    bk_engine.repository_store.update(repo.id, bk_engine.clock.now(), min_free_bytes=10**15)
    run = bk_engine.backups.run(repo.id, "web01", [DiskSource("sda", str(disk.path))])
    assert not run.ok
    error = run.disks[0].error or ""
    assert "free; a full backup of sda needs up to 16.3 MiB" in error
    assert "reserve" in error
    assert list(Path(repo.path).iterdir()) == []


@pytest.mark.root
def test_repository_filling_up_mid_backup_removes_partial_and_keeps_old_chain(
    bk_engine: Engine, loop_fs: Any, tmp_path: Path, clock: FixedClock
) -> None:
    fs = loop_fs("ext4", size_mb=48)
    small = bk_engine.repository_store.add(
        name="small", kind="local", path=str(fs.mountpoint), now=clock.now()
    )
    src = SourceDisk.create(tmp_path / "big.raw", 24 * MiB, seed=9)
    sources = [DiskSource("sda", str(src.path))]
    first = bk_engine.backups.run(small.id, "web01", sources)
    assert first.ok, first.sentence()
    # leave ~6 MiB free, then change the whole disk: the incremental cannot fit
    free = os.statvfs(fs.mountpoint).f_bavail * os.statvfs(fs.mountpoint).f_frsize
    fs.fill("filler.bin", free - 6 * MiB)
    clock.advance(60)
    src.change([(0, src.size)])
    run = bk_engine.backups.run(small.id, "web01", sources)
    assert not run.ok
    assert "filled up while backing up web01/sda" in (run.disks[0].error or "")
    assert "partial file was removed" in (run.disks[0].error or "")
    leftovers = [p.name for p in fs.mountpoint.rglob("*.partial")]
    assert leftovers == []
    chain = bk_engine.chain_store.current_chain(small.id, "web01", "sda")
    assert chain is not None
    assert [b.id for b in bk_engine.chain_store.backups(chain.id)] == [first.disks[0].backup_id]
    assert bk_engine.chains.validate(chain.id).ok


def test_new_full_after_n_incrementals_retires_the_old_chain(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    sources = [DiskSource("sda", str(disk.path))]
    kinds = []
    for i in range(4):
        disk.change([(i * MiB, 4096)])
        run = bk_engine.backups.run(repo.id, "web01", sources, full_every=2)
        kinds.append(run.disks[0].kind)
        clock.advance(3600)
    assert kinds == ["full", "incremental", "incremental", "full"]
    chains = bk_engine.chain_store.list_chains()
    assert [c.state for c in chains] == ["retired", "ok"]
    assert "2 incrementals reached the limit of 2" in (chains[0].state_detail or "")


def test_incremental_whose_base_changed_becomes_a_new_full_loudly(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    seen = events_of(bk_engine)
    sources = [DiskSource("sda", str(disk.path))]
    first = bk_engine.backups.run(repo.id, "web01", sources)
    full_file = Path(repo.path) / (first.disks[0].path or "")
    # someone wrote into the full (same size, different data); the whole-disk compare,
    # which reads the full anyway, checks its checksum (without a digest table, the
    # next incremental compares)
    table_path(full_file).unlink()
    with open(full_file, "r+b") as f:
        f.seek(full_file.stat().st_size - 4096)
        f.write(os.urandom(4096))
    clock.advance(60)
    with pytest.raises(BackupError, match="its base changed under it"):
        run = bk_engine.backups.run(repo.id, "web01", sources, mode="incremental")
        raise BackupError(run.disks[0].error or "")
    run = bk_engine.backups.run(repo.id, "web01", sources)
    assert run.ok and run.disks[0].kind == "full"
    assert "base changed" in (run.disks[0].full_reason or "")
    loud = [e for e in seen if e.kind == "backup.new_full"]
    assert loud and loud[-1].level == "warning" and "NEW FULL" in loud[-1].message
    bad = bk_engine.chain_store.get_backup(first.disks[0].backup_id or 0)
    assert bad.state == "bad"


def test_backup_failed_error_lists_kept_disks() -> None:
    from engine.services.backup import BackupRun, BackupService, DiskResult

    run = BackupRun(
        "vm",
        "r",
        [
            DiskResult("sda", "/a", ok=True, kind="full", backup_id=4),
            DiskResult("sdb", "/b", error="no space"),
        ],
    )
    err = BackupService._failure(None, run)  # type: ignore[arg-type]
    assert isinstance(err, BackupFailed)
    assert str(err) == "1 of 2 disks of vm failed: sdb: no space. Kept: sda (full #4)"


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("size", [MiB, 17 * MiB + 4096, 40 * MiB])
def test_stored_checksum_is_the_sha256_of_the_final_file(
    bk_engine: Engine,
    repo: Any,
    tmp_path: Path,
    clock: FixedClock,
    size: int,
    compression: str | None,
) -> None:
    # the checksum is read back while the file is flushed; it must still be exactly
    # what verify and copy will read from the published file, for a full and an
    # incremental, and no temporary file may be left behind
    src = SourceDisk.create(tmp_path / "d.raw", size, seed=size % 97)
    sources = [DiskSource("sda", str(src.path))]
    run = bk_engine.backups.run(repo.id, "vm", sources, compression=compression)
    assert run.ok, run.sentence()
    clock.advance(60)
    src.change([(size // 2, 70 * 1024)])
    run = bk_engine.backups.run(repo.id, "vm", sources)
    assert run.ok and run.disks[0].kind == "incremental", run.sentence()
    chain = bk_engine.chain_store.get_chain(run.disks[0].chain_id)
    points = bk_engine.chain_store.backups(chain.id)
    assert len(points) == 2
    for p in points:
        path = Path(repo.path) / p.path
        assert p.checksum == sha256_of(path)
        assert p.file_size == path.stat().st_size
        assert p.virtual_size == qemu_img.info(path).virtual_size
    directory = Path(repo.path) / chain.directory
    # each point, its manifest (the same facts) and its digest table, nothing else
    assert sorted(f.name for f in directory.iterdir()) == sorted(
        Path(p.path).name + side for p in points for side in ("", ".json", ".digests")
    )
    for p in points:
        manifest = read_manifest(Path(repo.path) / p.path)
        assert (manifest.sha256, manifest.file_size, manifest.position, manifest.kind) == (
            p.checksum,
            p.file_size,
            p.position,
            p.kind,
        )
        assert manifest.compression == p.compression
        assert manifest.parent == (None if p.kind == "full" else Path(points[0].path).name)


def test_publish_never_overwrites_a_file_that_appeared_at_the_final_name(tmp_path: Path) -> None:
    """The finished partial file takes its final name without clobbering: a file that
    appeared there after the plan (another writer, a restored copy) keeps its bytes,
    the backup is refused with a sentence naming the file, and no partial is left."""
    from engine.fsutil import partial_path
    from engine.services.backup import _publish

    final = tmp_path / "0001-full-20261201T100000Z.qcow2"
    tmp = partial_path(final)
    tmp.write_bytes(b"new backup data")
    final.write_bytes(b"somebody else's backup")
    with pytest.raises(BackupError, match="already exists; refusing to overwrite") as err:
        _publish(tmp, final)
    assert str(final) in str(err.value)
    assert final.read_bytes() == b"somebody else's backup"
    assert not tmp.exists()
    # nothing in the way: the file is published under its final name, the partial gone
    other = tmp_path / "0002-inc-20261201T110000Z.qcow2"
    partial_path(other).write_bytes(b"incremental")
    _publish(partial_path(other), other)
    assert other.read_bytes() == b"incremental" and not partial_path(other).exists()
