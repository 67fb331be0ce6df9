# ruff: noqa: F401, F811  (fixtures imported from tests.engine.diskgen)
"""Changed-block incrementals on every rung of the ladder (engine.services.changes),
with real qemu-img, qemu-io, qemu-nbd and qemu-storage-daemon, raw and qcow2
sources: each point restores byte for byte to its source's moment (sha256), each
records which rung ran and why, a tracking that cannot be trusted falls to the
next rung out loud, and a tracking that lies is caught by the periodic check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from engine.clock import FixedClock
from engine.digests import table_path
from engine.events import Event
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.tools import qemu_img
from engine.tools.blockspec import ImageSpec
from tests.engine.diskgen import MiB, SourceDisk, bk_engine, repo, sha256_of
from tests.engine.test_backup import events_of, restore_hash

KiB = 1024


def qcow2_source(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "guest.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True)
    guest_write(path, [(0, 4 * MiB, 0x11), (size // 2, 2 * MiB, 0x22)])
    return path


def guest_write(path: Path, writes: list[tuple[int, int, int]]) -> None:
    """A guest's writes, through qemu (so the image's enabled bitmaps record them)."""
    args = ["qemu-io", "-f", "qcow2", str(path)]
    for offset, length, pattern in writes:
        args += ["-c", f"write -q -P {pattern} {offset} {length}"]
    subprocess.run(args, check=True)


def raw_view_hash(path: Path, tmp_path: Path) -> str:
    flat = tmp_path / "flat.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(path), str(flat)], check=True
    )
    digest = sha256_of(flat)
    flat.unlink()
    return digest


def sendense_bitmaps(path: Path) -> list[qemu_img.Bitmap]:
    return [b for b in qemu_img.bitmaps(ImageSpec.file(path)) if b.name.startswith("sendense-")]


def test_raw_source_incrementals_compare_digests_and_read_only_the_data(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock
) -> None:
    # a sparse 64 MiB disk holding 12 MiB of data: holes are never read
    src = tmp_path / "sparse.raw"
    with open(src, "wb") as f:
        f.truncate(64 * MiB)
        f.write(os.urandom(8 * MiB))
        f.seek(40 * MiB)
        f.write(os.urandom(4 * MiB))
    sources = [DiskSource("sda", str(src))]
    full = bk_engine.backups.run(repo.id, "vm", sources).disks[0]
    assert full.rung == "full" and full.source_held_seconds is not None
    assert table_path(Path(repo.path) / str(full.path)).is_file()
    moments = {full.backup_id: sha256_of(src)}
    with open(src, "r+b") as f:
        f.seek(1 * MiB + 100)
        f.write(os.urandom(300 * KiB))  # data changed
        f.seek(42 * MiB)
        f.write(bytes(64 * KiB))  # a block became zeros
        f.seek(20 * MiB)
        f.write(os.urandom(64 * KiB))  # a hole got data
    clock.advance(3600)
    inc = bk_engine.backups.run(repo.id, "vm", sources).disks[0]
    assert inc.ok and inc.kind == "incremental"
    assert inc.rung == "digest" and inc.rung_reason is None
    # the data was read once (no holes), the previous point was not needed
    assert inc.bytes_read is not None and inc.bytes_read <= 12 * MiB + 64 * KiB + 64 * KiB
    # 300 KiB at 1 MiB+100 spans 5 blocks, plus the block in the former hole; the
    # zeroed block is recorded as a zero cluster, not written as data
    assert inc.bytes_written == (5 + 1) * 64 * KiB
    assert inc.changed_bytes == (5 + 1 + 1) * 64 * KiB
    assert inc.file_size < 2 * MiB
    moments[inc.backup_id] = sha256_of(src)
    for bid, digest in moments.items():
        assert restore_hash(bk_engine, bid, tmp_path) == digest
    row = bk_engine.chain_store.get_backup(inc.backup_id)
    assert row.tracking["rung"] == "digest" and row.tracking["digest_verified"]


def test_qcow2_source_uses_its_bitmap_and_rotates_it(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock
) -> None:
    size = 32 * MiB
    src = qcow2_source(tmp_path, size)
    sources = [DiskSource("vda", str(src), "qcow2")]
    full = bk_engine.backups.run(repo.id, "vm", sources).disks[0]
    [first] = sendense_bitmaps(src)
    assert first.enabled and not first.in_use
    moments = {full.backup_id: raw_view_hash(src, tmp_path)}
    for round_ in range(2):
        guest_write(src, [(3 * MiB + round_ * 64 * KiB, 100 * KiB, 0x40 + round_)])
        clock.advance(3600)
        inc = bk_engine.backups.run(repo.id, "vm", sources).disks[0]
        assert inc.ok and inc.rung == "bitmap", (inc.rung, inc.rung_reason)
        # only what the bitmap marks is read: 100 KiB spans at most 3 blocks
        assert inc.bytes_read is not None and inc.bytes_read <= 3 * 64 * KiB
        moments[inc.backup_id] = raw_view_hash(src, tmp_path)
        [now] = sendense_bitmaps(src)  # the previous point's bitmap is gone, a new one records
        assert now.name != first.name and now.enabled
        first = now
    for bid, digest in moments.items():
        assert restore_hash(bk_engine, bid, tmp_path) == digest


def test_two_repositories_backing_up_one_image_each_keep_their_own_bitmap(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock
) -> None:
    (tmp_path / "second").mkdir()
    second = bk_engine.repository_store.add(
        name="second", kind="local", path=str(tmp_path / "second"), now=clock.now()
    )
    src = qcow2_source(tmp_path, 16 * MiB)
    sources = [DiskSource("vda", str(src), "qcow2")]
    for target in (repo, second):
        assert bk_engine.backups.run(target.id, "vm", sources).ok
    assert len(sendense_bitmaps(src)) == 2
    guest_write(src, [(MiB, 64 * KiB, 0x31)])
    clock.advance(3600)
    for target in (repo, second):
        inc = bk_engine.backups.run(target.id, "vm", sources).disks[0]
        assert inc.rung == "bitmap", inc.rung_reason
        assert restore_hash(bk_engine, int(inc.backup_id or 0), tmp_path) == raw_view_hash(
            src, tmp_path
        )
    assert len(sendense_bitmaps(src)) == 2


def test_a_bitmap_left_in_use_by_a_killed_writer_falls_back_to_digests_out_loud(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock
) -> None:
    size = 16 * MiB
    src = qcow2_source(tmp_path, size)
    sources = [DiskSource("vda", str(src), "qcow2")]
    bk_engine.backups.run(repo.id, "vm", sources)
    # a hypervisor writes, then dies with the image open: its bitmaps stay "in-use"
    writer = subprocess.Popen(
        ["qemu-io", "-f", "qcow2", str(src), "-c", "write -q -P 0x77 5M 64k", "-c", "sleep 60000"]
    )
    deadline = time.monotonic() + 20
    while not any(b.in_use for b in qemu_img.bitmaps(ImageSpec.file(src))):
        assert time.monotonic() < deadline, "qemu-io never opened the image"
        time.sleep(0.1)
    time.sleep(0.5)  # its write lands
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert all(b.in_use for b in sendense_bitmaps(src))
    seen = events_of(bk_engine)
    clock.advance(3600)
    inc = bk_engine.backups.run(repo.id, "vm", sources).disks[0]
    assert inc.ok and inc.rung == "digest"
    assert "in use after an unclean stop" in (inc.rung_reason or "")
    warned = [e for e in seen if e.kind == "backup.tracking_fallback"]
    assert warned and warned[0].level == "warning" and "unclean stop" in warned[0].message
    assert restore_hash(bk_engine, int(inc.backup_id or 0), tmp_path) == raw_view_hash(
        src, tmp_path
    )
    # the untrusted bitmap is gone and a fresh one records for the next run
    [fresh] = sendense_bitmaps(src)
    assert fresh.enabled and not fresh.in_use
    guest_write(src, [(0, 64 * KiB, 0x55)])
    clock.advance(3600)
    nxt = bk_engine.backups.run(repo.id, "vm", sources).disks[0]
    assert nxt.rung == "bitmap"


@pytest.mark.parametrize("damage", ["missing", "edited", "truncated"])
def test_a_missing_or_tampered_digest_table_falls_back_to_the_whole_disk_compare(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock, damage: str
) -> None:
    src = SourceDisk.create(tmp_path / "d.raw", 16 * MiB, seed=5)
    sources = [DiskSource("sda", str(src.path))]
    full = bk_engine.backups.run(repo.id, "vm", sources).disks[0]
    table = table_path(Path(repo.path) / str(full.path))
    if damage == "missing":
        table.unlink()
    elif damage == "edited":
        data = bytearray(table.read_bytes())
        data[-1] ^= 0xFF  # "this block did not change", says a forger
        table.write_bytes(bytes(data))
    else:
        table.write_bytes(table.read_bytes()[:100])
    src.change([(3 * MiB, 200 * KiB)])
    seen = events_of(bk_engine)
    clock.advance(3600)
    inc = bk_engine.backups.run(repo.id, "vm", sources).disks[0]
    assert inc.ok and inc.rung == "compare"
    word = {"missing": "missing", "edited": "does not match", "truncated": "does not match"}
    assert word[damage] in (inc.rung_reason or "")
    assert any(e.kind == "backup.tracking_fallback" for e in seen)
    assert restore_hash(bk_engine, int(inc.backup_id or 0), tmp_path) == src.sha256()
    # the compare wrote a new table: the next run is back on the digest rung
    src.change([(9 * MiB, 4 * KiB)])
    clock.advance(3600)
    nxt = bk_engine.backups.run(repo.id, "vm", sources).disks[0]
    assert nxt.rung == "digest"
    assert restore_hash(bk_engine, int(nxt.backup_id or 0), tmp_path) == src.sha256()


def extent_file(tmp_path: Path, since: int, size: int, extents: list[tuple[int, int]]) -> str:
    path = tmp_path / f"extents-{since}.json"
    path.write_text(
        json.dumps(
            {
                "since_point": since,
                "disk_size": size,
                "extents": [{"start": s, "length": n} for s, n in extents],
            }
        )
    )
    return str(path)


def test_an_extent_list_that_lies_is_caught_by_the_periodic_digest_check(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock
) -> None:
    size = 16 * MiB
    src = SourceDisk.create(tmp_path / "d.raw", size, seed=9)
    full = bk_engine.backups.run(repo.id, "vm", [DiskSource("sda", str(src.path))]).disks[0]
    # the agent reports one change and misses another
    src.change([(1 * MiB, 64 * KiB), (7 * MiB, 64 * KiB)])
    listed = extent_file(tmp_path, int(full.backup_id or 0), size, [(1 * MiB, 64 * KiB)])
    clock.advance(3600)
    disk = DiskSource("sda", str(src.path), changed_extents=listed)
    lied = bk_engine.backups.run(repo.id, "vm", [disk]).disks[0]
    assert lied.rung == "extents" and lied.bytes_read == 64 * KiB
    # the lie is in that point (only the periodic check can know)
    assert restore_hash(bk_engine, int(lied.backup_id or 0), tmp_path) != src.sha256()
    # a week later the incremental that could use the list checks it instead
    clock.advance(8 * 86400)
    src.change([(12 * MiB, 64 * KiB)])
    listed = extent_file(tmp_path, int(lied.backup_id or 0), size, [(12 * MiB, 64 * KiB)])
    seen = events_of(bk_engine)
    checked = bk_engine.backups.run(
        repo.id, "vm", [DiskSource("sda", str(src.path), changed_extents=listed)]
    ).disks[0]
    assert checked.rung == "digest" and "periodic check" in (checked.rung_reason or "")
    row = bk_engine.chain_store.get_backup(int(checked.backup_id or 0))
    assert row.tracking["check"]["missed_blocks"] == 1
    assert row.tracking["check"]["missed_offsets"] == [7 * MiB]
    missed = [e for e in seen if e.kind == "backup.tracking_missed"]
    assert missed and missed[0].level == "critical" and "MISSED 1" in missed[0].message
    # the checked point holds everything
    assert restore_hash(bk_engine, int(checked.backup_id or 0), tmp_path) == src.sha256()


def test_an_extent_list_for_another_point_is_refused_and_digests_are_compared(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock
) -> None:
    size = 8 * MiB
    src = SourceDisk.create(tmp_path / "d.raw", size, seed=4)
    full = bk_engine.backups.run(repo.id, "vm", [DiskSource("sda", str(src.path))]).disks[0]
    src.change([(2 * MiB, 4 * KiB)])
    stale = extent_file(tmp_path, int(full.backup_id or 0) + 99, size, [])
    clock.advance(3600)
    seen = events_of(bk_engine)
    disk = DiskSource("sda", str(src.path), changed_extents=stale)
    inc = bk_engine.backups.run(repo.id, "vm", [disk]).disks[0]
    assert inc.rung == "digest" and "not since the previous point" in (inc.rung_reason or "")
    assert any(e.kind == "backup.tracking_fallback" for e in seen)
    assert restore_hash(bk_engine, int(inc.backup_id or 0), tmp_path) == src.sha256()


def test_an_nbd_source_with_a_dirty_bitmap_reads_only_the_dirty_extents(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock
) -> None:
    """The hypervisor's side is played by qemu-nbd exporting a qcow2 image with a
    disabled bitmap (what libvirt or a capture agent hands over)."""
    size = 16 * MiB
    image = qcow2_source(tmp_path, size)
    sock = tmp_path / "hv.sock"
    uri = f"nbd+unix:///vda?socket={sock}"

    def serve(bitmap: str | None) -> subprocess.Popen[bytes]:
        args = ["qemu-nbd", "-r", "-f", "qcow2", "-x", "vda", "-k", str(sock), "-t", "--shared=8"]
        if bitmap:
            args += ["-B", bitmap]
        proc = subprocess.Popen([*args, str(image)])
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        return proc

    server = serve(None)
    try:
        full = bk_engine.backups.run(repo.id, "vm", [DiskSource("vda", uri)]).disks[0]
        assert full.ok, full.error
    finally:
        server.terminate()
        server.wait()
    sock.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "bitmap", "--add", "-g", "65536", "-f", "qcow2", str(image), "hv1"],
        check=True,
    )
    guest_write(image, [(6 * MiB, 128 * KiB, 0x66)])
    subprocess.run(
        ["qemu-img", "bitmap", "--disable", "-f", "qcow2", str(image), "hv1"], check=True
    )
    server = serve("hv1")
    try:
        clock.advance(3600)
        disk = DiskSource("vda", uri, changed_bitmap="hv1")
        inc = bk_engine.backups.run(repo.id, "vm", [disk]).disks[0]
    finally:
        server.terminate()
        server.wait()
    assert inc.ok and inc.rung == "extents", (inc.rung, inc.rung_reason, inc.error)
    assert inc.bytes_read == 128 * KiB
    assert restore_hash(bk_engine, int(full.backup_id or 0), tmp_path) != raw_view_hash(
        image, tmp_path
    )
    assert restore_hash(bk_engine, int(inc.backup_id or 0), tmp_path) == raw_view_hash(
        image, tmp_path
    )


def _qmp(sock: Path, *commands: dict[str, Any]) -> list[dict[str, Any]]:
    """Send QMP commands to a qemu-storage-daemon monitor; the replies, in order."""
    import socket as socketlib

    replies = []
    with socketlib.socket(socketlib.AF_UNIX) as s:
        s.connect(str(sock))
        reader = s.makefile("r")
        json.loads(reader.readline())  # greeting
        for command in ({"execute": "qmp_capabilities"}, *commands):
            s.sendall(json.dumps(command).encode() + b"\n")
            while True:
                reply = json.loads(reader.readline())
                if "return" in reply or "error" in reply:
                    break  # events in between are skipped
            assert "error" not in reply, reply
            replies.append(reply)
    return replies[1:]


def test_a_fleecing_export_gives_the_moment_while_the_guest_keeps_writing(
    bk_engine: Engine, repo: Any, tmp_path: Path
) -> None:
    """The hypervisor's side (played by a qemu-storage-daemon): the disk, a fleecing
    overlay filled by ``blockdev-backup sync=none`` (copy-before-write), the overlay
    exported over NBD for Sendense and the disk exported writable for the guest. The
    guest writes all through the backup; the point is the disk at the moment the
    fleecing started."""
    size = 64 * MiB
    image = qcow2_source(tmp_path, size)
    moment = raw_view_hash(image, tmp_path)
    fleece = tmp_path / "fleece.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image), str(fleece)],
        check=True,
    )
    qmp, nbd = tmp_path / "qmp.sock", tmp_path / "hv.sock"
    disk_node = {
        "driver": "qcow2",
        "node-name": "disk",
        "file": {"driver": "file", "filename": str(image)},
    }
    fleece_node = {
        "driver": "qcow2",
        "node-name": "fleece",
        "backing": "disk",
        "file": {"driver": "file", "filename": str(fleece)},
    }
    hypervisor = subprocess.Popen(
        [
            "qemu-storage-daemon",
            "--blockdev", json.dumps(disk_node),
            "--blockdev", json.dumps(fleece_node),
            "--chardev", f"socket,path={qmp},server=on,wait=off,id=m",
            "--monitor", "chardev=m",
            "--nbd-server", f"addr.type=unix,addr.path={nbd}",
        ]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not (qmp.exists() and nbd.exists()):
            assert time.monotonic() < deadline and hypervisor.poll() is None
            time.sleep(0.05)
        # the guest's device first: the backup job puts its copy-before-write filter
        # between that device and the disk
        _qmp(
            qmp,
            {"execute": "block-export-add",
             "arguments": {"type": "nbd", "id": "live", "node-name": "disk", "name": "live",
                           "writable": True}},
            {"execute": "blockdev-backup",
             "arguments": {"job-id": "fleecing", "device": "disk", "target": "fleece",
                           "sync": "none"}},
            {"execute": "block-export-add",
             "arguments": {"type": "nbd", "id": "snap", "node-name": "fleece", "name": "vda"}},
        )  # fmt: skip
        live = f"driver=nbd,server.type=unix,server.path={nbd},export=live"
        done = tmp_path / "backup-done"
        guest = subprocess.Popen(
            [
                "sh", "-c",
                f"i=0; while [ ! -e {done} ] && [ $i -lt 2000 ]; do qemu-io --image-opts "
                f"'{live}' -c \"write -q -P $((i % 200 + 30)) $(( (i * 1048576) % {size} )) "
                "1M\" || exit 1; i=$((i+1)); done",
            ]
        )  # fmt: skip
        time.sleep(0.3)  # the guest is writing
        uri = f"nbd+unix:///vda?socket={nbd}"
        point = bk_engine.backups.run(repo.id, "vm", [DiskSource("vda", uri)]).disks[0]
        writing_during = guest.poll() is None
        done.touch()
        guest.wait(timeout=60)
        assert guest.returncode == 0
        assert point.ok, point.error
        assert writing_during, "the guest stopped writing before the backup ended"
        assert restore_hash(bk_engine, int(point.backup_id or 0), tmp_path) == moment
    finally:
        hypervisor.terminate()
        hypervisor.wait(timeout=30)
    assert raw_view_hash(image, tmp_path) != moment  # the guest's writes are in the disk
