# ruff: noqa: F401, F811  (fixtures imported from tests.engine.diskgen)
"""Whole-disk restore with real qemu-img: raw, qcow2 and NBD targets, refusals."""

from __future__ import annotations

import filecmp
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from engine.clock import FixedClock
from engine.errors import ValidationError
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.services.restore_disk import RestoreError, point_file
from engine.tools import qemu_img
from engine.tools.nbd import start_qemu_nbd
from sendense_tui.hints import cli_hint
from tests.engine.diskgen import MiB, SourceDisk, bk_engine, disk, repo, sha256_of


def two_points(
    engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> list[tuple[int, str]]:
    sources = [DiskSource("sda", str(disk.path))]
    out = []
    for i in range(2):
        if i:
            clock.advance(3600)
            disk.change([(3 * MiB, MiB)])
        run = engine.backups.run(repo.id, "vm1", sources)
        assert run.ok
        out.append((run.disks[0].backup_id or 0, disk.sha256()))
    return out


def test_restore_incremental_to_raw_and_qcow2(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, tmp_path: Path
) -> None:
    (full, full_hash), (inc, inc_hash) = two_points(bk_engine, repo, disk, clock)
    raw = tmp_path / "out" / "disk.raw"
    raw.parent.mkdir()
    result = bk_engine.restores.restore(inc, str(raw))
    assert result.bytes == disk.size
    assert sha256_of(raw) == inc_hash
    q = tmp_path / "out" / "disk.qcow2"
    bk_engine.restores.restore(full, str(q), fmt="qcow2")
    info = qemu_img.info(q)
    assert info.format == "qcow2" and info.backing_filename is None  # standalone
    flat = tmp_path / "flat.raw"
    qemu_img.convert(q, flat, dst_fmt="raw")
    assert sha256_of(flat) == full_hash
    assert sorted(p.name for p in raw.parent.iterdir()) == ["disk.qcow2", "disk.raw"]


def test_existing_target_is_refused_unless_overwrite(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, tmp_path: Path
) -> None:
    (full, full_hash), _ = two_points(bk_engine, repo, disk, clock)
    target = tmp_path / "precious.raw"
    target.write_bytes(b"do not lose me")
    with pytest.raises(ValidationError, match="already exists") as err:
        bk_engine.restores.restore(full, str(target))
    # the engine names the action; the CLI renders its flag
    assert err.value.hint == "choose another name or replace it (overwrite)"
    assert "--overwrite" in (cli_hint(err.value) or "")
    assert target.read_bytes() == b"do not lose me"
    bk_engine.restores.restore(full, str(target), overwrite=True)
    assert sha256_of(target) == full_hash
    with pytest.raises(ValidationError, match="does not exist"):
        bk_engine.restores.restore(full, str(tmp_path / "no" / "dir.raw"))
    with pytest.raises(ValidationError, match="is a directory"):
        bk_engine.restores.restore(full, str(tmp_path))
    with pytest.raises(ValidationError, match="format"):
        bk_engine.restores.restore(full, str(tmp_path / "x.vmdk"), fmt="vmdk")


def test_a_target_another_restore_wrote_meanwhile_is_never_replaced(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, tmp_path: Path
) -> None:
    """Two restores to one new file at once (two operators, two CLIs, a CLI and the
    daemon): the target did not exist when either was checked. The one that finishes
    second must neither replace the first's disk nor share its partial file: it fails
    with one sentence, and the target is exactly the first one's point."""
    (full, full_hash), (inc, _inc_hash) = two_points(bk_engine, repo, disk, clock)
    target = tmp_path / "same.raw"
    other: list[str] = []

    def meanwhile(event: Any) -> None:
        # the job has written its disk (its last progress is just before it takes the
        # name): the other restore runs from start to end now
        if event.job_id == job.id and not other:
            other.append("started")
            bk_engine.restores.restore(full, str(target))
            other.append("done")

    job = bk_engine.restores.submit(inc, str(target))
    bk_engine.bus.subscribe(meanwhile, ("job.progress",))
    bk_engine.start()
    deadline = time.monotonic() + 60
    while (ended := bk_engine.jobs.get(job.id)).state not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert other == ["started", "done"]
    assert ended.state == "failed"
    assert f"restore target {target} was created by someone else while this restore ran" in (
        ended.error or ""
    )
    assert sha256_of(target) == full_hash
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_restore_to_an_nbd_target(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, tmp_path: Path
) -> None:
    _, (inc, inc_hash) = two_points(bk_engine, repo, disk, clock)
    blank = tmp_path / "blank.raw"
    with open(blank, "wb") as f:
        f.truncate(disk.size)
    with start_qemu_nbd(
        blank, socket_path=tmp_path / "t.sock", fmt="raw", read_only=False, export_name="t"
    ) as server:
        bk_engine.restores.restore(inc, server.uri)
    assert sha256_of(blank) == inc_hash
    small = tmp_path / "small.raw"
    with open(small, "wb") as f:
        f.truncate(MiB)
    with (
        start_qemu_nbd(
            small, socket_path=tmp_path / "s.sock", fmt="raw", read_only=False, export_name="s"
        ) as server,
        pytest.raises(RestoreError, match="holds 1048576 bytes, the disk needs"),
    ):
        bk_engine.restores.restore(inc, server.uri)


def test_restore_job_reports_progress_and_missing_file_is_explained(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, tmp_path: Path
) -> None:
    from tests.engine.test_backup import wait_job

    (full, _), (inc, inc_hash) = two_points(bk_engine, repo, disk, clock)
    job = bk_engine.restores.submit(inc, str(tmp_path / "job.raw"))
    bk_engine.start()
    final = wait_job(bk_engine, job.id)
    assert final.state == "succeeded", final.error
    assert final.bytes_done == final.bytes_total == disk.size
    assert sha256_of(tmp_path / "job.raw") == inc_hash
    (Path(repo.path) / bk_engine.chain_store.get_backup(full).path).unlink()
    with pytest.raises(RestoreError, match=r"cannot be read through its chain: .* is missing"):
        bk_engine.restores.restore(inc, str(tmp_path / "again.raw"))
    assert not (tmp_path / "again.raw").exists()
    assert not list(tmp_path.glob(".*.partial"))


def test_a_restored_disk_is_byte_for_byte_what_qemu_img_convert_makes(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, tmp_path: Path
) -> None:
    """A chain of three (a full, a change, then a region zeroed and a region changed):
    the restore is the same bytes as qemu-img's own convert of the top file, holes and
    zeroed clusters included, and no copy of it is left beside the target."""
    sources = [DiskSource("sda", str(disk.path))]
    points = []
    for step in range(3):
        if step == 1:
            disk.change([(3 * MiB, MiB), (9 * MiB + 512, 7)])
        if step == 2:
            with open(disk.path, "r+b") as f:  # a region the full held data in, zeroed
                f.seek(5 * MiB)
                f.write(bytes(2 * MiB + 4096))
            disk.change([(15 * MiB, MiB)])
        clock.advance(3600)
        run = bk_engine.backups.run(repo.id, "vm1", sources)
        assert run.ok
        points.append(run.disks[0].backup_id or 0)
    top = point_file(bk_engine.chain_store, points[-1])
    reference = tmp_path / "reference.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-O", "raw", str(top), str(reference)],
        check=True,
        timeout=120,
    )
    out = tmp_path / "out"
    out.mkdir()
    bk_engine.restores.restore(points[-1], str(out / "disk.raw"))
    assert filecmp.cmp(out / "disk.raw", reference, shallow=False)
    assert sha256_of(out / "disk.raw") == disk.sha256()
    assert [p.name for p in out.iterdir()] == ["disk.raw"]
