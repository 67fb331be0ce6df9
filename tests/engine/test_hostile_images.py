# ruff: noqa: F401, F811  (fixtures imported from tests.engine.diskgen)
"""Hostile images, built here with real qemu-img: sources whose first bytes are a
qcow2/vmdk/LUKS header naming a host file, protocol-like source names, repository
points whose header was rewritten after they were recorded, and bad points.

Every test checks that nothing outside the repository was read or written (a host
file whose access time would move on any read, its content hash, a TCP listener
that must see no connection) and that the operator got one sentence naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.clock import FixedClock
from engine.errors import SendenseError
from engine.events import Event
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.services.images import DamagedPoint, ImageRefused
from engine.tools import loop, qemu_img
from engine.tools.blockspec import ImageSpec, parse_nbd_uri
from engine.tools.nbd import start_qemu_nbd
from sendense_tui.hints import cli_hint
from tests.engine.diskgen import MiB, SourceDisk, bk_engine, repo, sha256_of
from tests.engine.test_backup import wait_job

MARK = b"HOSTMARKER-7f3a-"


# -- what must stay untouched ------------------------------------------------------


@dataclass
class HostFile:
    """A file outside the repository holding a marker. Its access time is set before
    its modification time, so (relatime) any read of it moves the access time."""

    path: Path
    atime: float = 0.0
    digest: str = ""

    @classmethod
    def make(cls, path: Path, size: int = 4 * MiB) -> HostFile:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((MARK * (size // len(MARK) + 1))[:size])
        return cls.watch(path)

    @classmethod
    def watch(cls, path: Path) -> HostFile:
        """Start watching a file that exists: hash it, then age its access time."""
        digest = sha256_of(path)
        st = path.stat()
        os.utime(path, (st.st_mtime - 100_000, st.st_mtime))
        return cls(path, path.stat().st_atime, digest)

    def assert_untouched(self) -> None:
        assert self.path.stat().st_atime == self.atime, f"{self.path} was read"
        assert sha256_of(self.path) == self.digest, f"{self.path} was written"


def assert_no_marker(*roots: Path) -> None:
    """No file under these directories holds the host file's marker."""
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            if f.is_symlink():
                continue
            with open(f, "rb") as fh:
                while chunk := fh.read(4 * MiB):
                    assert MARK not in chunk, f"the host file's content reached {f}"


class Listener:
    """A local TCP port that counts the connections it gets (it must get none)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    try:
        yield lst
    finally:
        lst.close()


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def critical(events: list[Event], kind: str, name: str) -> list[Event]:
    return [e for e in events if e.kind == kind and e.level == "critical" and name in e.message]


# -- item 1: a source is read the way the operator named it --------------------------


def hostile_head(kind: str, host: Path, work: Path) -> bytes:
    """The first bytes of a guest disk that pretend to be an image naming ``host``."""
    if kind == "qcow2":
        head = work / "head.qcow2"
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(host), "-F", "raw", str(head), "4M")
        return head.read_bytes()
    if kind == "vmdk":
        return (
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
            'createType="monolithicFlat"\n\n# Extent description\n'
            f'RW 8192 FLAT "{host}" 0\n\nddb.virtualHWVersion = "4"\n'
        ).encode() + b"\0" * 512
    head = work / "head.luks"
    create = (
        "qemu-img", "create", "-q", "-f", "luks", "--object", "secret,id=s0,data=guest",
        "-o", "key-secret=s0,iter-time=10", str(head), "1M",
    )  # fmt: skip
    # qemu before 9.2.1 sometimes fails its own PBKDF benchmark on a busy machine
    # ("Unable to get accurate CPU usage", fixed upstream by "crypto: fix bogus error
    # benchmarking pbkdf on fast machines"): the header is made again, never skipped
    for _ in range(5):
        made = subprocess.run(create, capture_output=True, text=True)
        if made.returncode == 0 or "accurate CPU usage" not in made.stderr:
            break
    assert made.returncode == 0, made.stderr
    return head.read_bytes()[: 2 * MiB]


def guest_disk(path: Path, head: bytes, size: int = 8 * MiB) -> SourceDisk:
    disk = SourceDisk.create(path, size, seed=3)
    with open(path, "r+b") as f:
        f.write(head)
    return disk


@pytest.mark.parametrize("kind", ["qcow2", "vmdk", "luks"])
def test_raw_source_whose_first_bytes_are_an_image_header_is_backed_up_as_raw_bytes(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock, kind: str
) -> None:
    host = HostFile.make(tmp_path / "host" / "secret.raw")
    disk = guest_disk(tmp_path / "guest.raw", hostile_head(kind, host.path, tmp_path))
    probed = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(disk.path)], capture_output=True, text=True
        ).stdout
        or "{}"
    )
    # the artefact is real: a probing qemu-img sees the pretended format (luks needs a key)
    assert kind == "luks" or probed["format"] == kind
    host = HostFile.watch(host.path)  # the probe above read it
    moments = []
    for i in range(2):
        if i:
            clock.advance(3600)
            disk.change([(5 * MiB, 64 * 1024)])
        run = bk_engine.backups.run(repo.id, "vm1", [DiskSource("sda", str(disk.path))])
        assert run.ok, run.sentence()
        assert run.disks[0].virtual_size == disk.size  # the raw size, not the header's
        moments.append((run.disks[0].backup_id or 0, disk.sha256()))
    assert run.disks[0].kind == "incremental"
    out = tmp_path / "out"
    out.mkdir()
    for backup_id, digest in moments:
        target = out / f"{backup_id}.raw"
        bk_engine.restores.restore(backup_id, str(target))
        assert sha256_of(target) == digest
    host.assert_untouched()
    assert_no_marker(Path(repo.path), out)


@pytest.mark.root
def test_block_device_and_nbd_sources_are_read_as_raw_bytes(
    bk_engine: Engine, repo: Any, tmp_path: Path
) -> None:
    host = HostFile.make(tmp_path / "host" / "secret.raw")
    disk = guest_disk(tmp_path / "guest.raw", hostile_head("qcow2", host.path, tmp_path))
    device = loop.attach(disk.path, read_only=True)
    try:
        run = bk_engine.backups.run(repo.id, "vm1", [DiskSource("sda", device)])
    finally:
        loop.detach(device)
    assert run.ok, run.sentence()
    with start_qemu_nbd(disk.path, socket_path=tmp_path / "g.sock", fmt="raw", export_name="vda"):
        uri = f"nbd+unix:///vda?socket={tmp_path / 'g.sock'}"
        nbd_run = bk_engine.backups.run(repo.id, "vm2", [DiskSource("vda", uri)])
    assert nbd_run.ok, nbd_run.sentence()
    out = tmp_path / "out"
    out.mkdir()
    for result in (run.disks[0], nbd_run.disks[0]):
        target = out / f"{result.backup_id}.raw"
        bk_engine.restores.restore(result.backup_id or 0, str(target))
        assert sha256_of(target) == disk.sha256()
    host.assert_untouched()
    assert_no_marker(Path(repo.path), out)


def test_qcow2_source_is_read_as_qcow2_only_when_named_so_and_standing_alone(
    bk_engine: Engine, repo: Any, tmp_path: Path
) -> None:
    host = HostFile.make(tmp_path / "host" / "secret.raw")
    plain = SourceDisk.create(tmp_path / "plain.raw", 4 * MiB, seed=9)
    alone = tmp_path / "alone.qcow2"
    qemu_img.convert(ImageSpec.file(plain.path, "raw"), alone)
    run = bk_engine.backups.run(repo.id, "vm1", [DiskSource.parse(f"sda:qcow2={alone}")])
    assert run.ok and run.disks[0].virtual_size == plain.size
    bk_engine.restores.restore(run.disks[0].backup_id or 0, str(tmp_path / "alone.raw"))
    assert sha256_of(tmp_path / "alone.raw") == plain.sha256()

    backed = tmp_path / "backed.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(host.path), "-F", "raw", str(backed))
    stub = tmp_path / "stub.raw"
    stub.write_bytes(b"\0" * MiB)
    with_data = tmp_path / "data.qcow2"
    sh(
        "qemu-img", "create", "-q", "-f", "qcow2", "-o",
        f"data_file={stub},data_file_raw=on", str(with_data), "4M",
    )  # fmt: skip
    sh("qemu-img", "amend", "-f", "qcow2", "-o", f"data_file={host.path}", str(with_data))
    host = HostFile.watch(host.path)
    before = sorted(p.name for p in Path(repo.path).rglob("*"))
    refused = bk_engine.backups.run(
        repo.id,
        "vm2",
        [DiskSource("sda", str(backed), "qcow2"), DiskSource("sdb", str(with_data), "qcow2")],
    )
    assert not refused.ok
    errors = {d.disk: d.error or "" for d in refused.disks}
    assert "refused" in errors["sda"] and f"backing file '{host.path}'" in errors["sda"]
    assert "refused" in errors["sdb"] and "external data file" in errors["sdb"]
    assert sorted(p.name for p in Path(repo.path).rglob("*")) == before
    host.assert_untouched()
    assert_no_marker(Path(repo.path))


def test_source_names_qemu_would_read_as_a_protocol_are_refused(
    bk_engine: Engine,
    repo: Any,
    tmp_path: Path,
    listener: Listener,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = HostFile.make(tmp_path / "host" / "secret.raw")
    port = listener.port
    texts = [
        "json:"
        + json.dumps({"driver": "raw", "file": {"driver": "file", "filename": str(host.path)}}),
        "json:" + json.dumps({"driver": "file", "filename": str(host.path)}),
        f"file:{host.path}",
        f"nbd:127.0.0.1:{port}",
        f"http://127.0.0.1:{port}/disk.raw",
        f"ssh://127.0.0.1:{port}/disk.raw",
        f"nbd+tcp://127.0.0.1:{port}/x",
        f"nbd://127.0.0.1:{port}/x?socket=/run/x",
        "secret:1",
    ]
    disks = [DiskSource(f"d{i}", text) for i, text in enumerate(texts)]
    run = bk_engine.backups.run(repo.id, "vm1", disks)
    for result in run.disks:
        assert not result.ok
        assert "refused" in (result.error or "") or "URI" in (result.error or ""), result.error
        assert "\n" not in (result.error or "").split("\n  -> ")[0]  # one sentence (+ hint)
    assert list(Path(repo.path).rglob("*.qcow2")) == []
    assert listener.connections() == 0
    host.assert_untouched()
    # a relative file name with a colon is a file when written as a path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "disk:1.raw").write_bytes(b"\1" * MiB)
    ok = bk_engine.backups.run(repo.id, "vm2", [DiskSource("sda", "./disk:1.raw")])
    assert ok.ok, ok.sentence()


# -- item 2: a recorded point is opened as the catalog says -------------------------


def chain_of_three(engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock) -> list[int]:
    disk = SourceDisk.create(tmp_path / "vm.raw", 4 * MiB, seed=11)
    ids = []
    for i in range(3):
        if i:
            clock.advance(3600)
            disk.change([(i * MiB, 64 * 1024)])
        run = engine.backups.run(repo.id, "vm1", [DiskSource("sda", str(disk.path))])
        assert run.ok, run.sentence()
        ids.append(run.disks[0].backup_id or 0)
    return ids


def point_file(engine: Engine, repo: Any, backup_id: int) -> Path:
    return Path(repo.path) / engine.chain_store.get_backup(backup_id).path


def tamper(
    variant: str,
    engine: Engine,
    repo: Any,
    ids: list[int],
    host: HostFile,
    port: int,
    request: pytest.FixtureRequest | None = None,
) -> Path:
    """Rewrite a recorded point as an attacker would; returns the file changed."""
    full, inc1, inc2 = (point_file(engine, repo, i) for i in ids)
    if variant == "device":
        # a block device node (a loop device over the host file) in place of the point
        assert request is not None
        device = loop.attach(host.path, read_only=True)
        request.addfinalizer(lambda: loop.detach(device))
        inc2.unlink()
        os.mknod(inc2, stat.S_IFBLK | 0o600, os.stat(device).st_rdev)
        return inc2
    if variant == "data_file":
        # the full replaced by a qcow2 whose guest view is the host file
        stub = full.with_name("stub.raw")
        stub.write_bytes(b"\0" * MiB)
        full.unlink()
        sh(
            "qemu-img", "create", "-q", "-f", "qcow2", "-o",
            f"data_file={stub},data_file_raw=on", str(full), "4M",
        )  # fmt: skip
        sh("qemu-img", "amend", "-f", "qcow2", "-o", f"data_file={host.path}", str(full))
        stub.unlink()
        return full
    if variant == "raw_file":
        inc2.unlink()
        shutil.copyfile(host.path, inc2)
        return inc2
    if variant == "symlink":
        inc2.unlink()
        inc2.symlink_to(host.path)
        return inc2
    backing = {
        "host_file": str(host.path),
        "absolute_parent": str(inc1),
        "json_spec": "json:"
        + json.dumps({"driver": "raw", "file": {"driver": "file", "filename": str(host.path)}}),
        "nbd_json": "json:"
        + json.dumps(
            {
                "driver": "raw",
                "file": {
                    "driver": "nbd",
                    "server": {"type": "inet", "host": "127.0.0.1", "port": str(port)},
                    "export": "x",
                },
            }
        ),
        "elsewhere_in_repo": "../../../../stray.qcow2",
    }[variant]
    fmt = "qcow2" if variant in ("absolute_parent", "elsewhere_in_repo") else "raw"
    sh("qemu-img", "rebase", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", fmt, str(inc2))
    return inc2


VARIANTS = [
    "host_file",
    "absolute_parent",
    "json_spec",
    "nbd_json",
    "elsewhere_in_repo",
    "data_file",
    "raw_file",
    "symlink",
    "device",
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_point_whose_header_was_rewritten_is_never_opened(
    bk_engine: Engine,
    repo: Any,
    tmp_path: Path,
    clock: FixedClock,
    listener: Listener,
    variant: str,
    request: pytest.FixtureRequest,
) -> None:
    events: list[Event] = []
    bk_engine.bus.subscribe(events.append)
    host = HostFile.make(tmp_path / "host" / "secret.raw")
    ids = chain_of_three(bk_engine, repo, tmp_path, clock)
    stray = Path(repo.path) / "stray.qcow2"  # inside the repository, outside the chain
    qemu_img.convert(ImageSpec.file(host.path, "raw"), stray)
    changed = tamper(variant, bk_engine, repo, ids, host, listener.port, request)
    stray_file = HostFile.watch(stray)
    host = HostFile.watch(host.path)  # from here on nothing may read it
    name = changed.name
    newest = ids[-1]
    out = tmp_path / "out"
    out.mkdir()
    offsite = tmp_path / "offsite"
    offsite.mkdir()
    bk_engine.repository_store.add(name="offsite", kind="local", path=str(offsite), now=clock.now())

    def refused(call: Any, kind: type[SendenseError] = ImageRefused) -> str:
        before = len(events)
        with pytest.raises(kind) as err:
            call()
        message = err.value.message
        assert name in message and "refused" in message, message
        assert critical(events[before:], "image.refused", name), "no critical event"
        return message

    sentence = refused(lambda: bk_engine.restores.restore(newest, str(out / "disk.raw")))
    refused(lambda: bk_engine.restores.submit(newest, str(out / "disk.raw")))  # no job queued
    assert list(out.iterdir()) == []
    assert bk_engine.job_store.list(kind="restore_disk") == []
    refused(lambda: bk_engine.file_restore.mount(newest))
    refused(lambda: bk_engine.exports.start(newest))
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    refused(lambda: bk_engine.chains.consolidate(chain_id))
    assert [b.id for b in bk_engine.chain_store.backups(chain_id)] == ids  # nothing merged

    job = bk_engine.copies.copy_backups([newest], "offsite")
    bk_engine.start()
    final = wait_job(bk_engine, job.id)
    assert final.state == "failed" and name in (final.error or "") and "refused" in final.error
    assert critical(events, "image.refused", name)
    assert not any(p.name == name for p in offsite.rglob("*"))

    targets = bk_engine.verifier.targets("backup", newest, include_copies=False)
    (result,) = bk_engine.verifier.verify_targets(targets)
    assert result.outcome != "ok"
    assert any(e.kind.startswith("verify.") and e.level == "critical" for e in events)

    assert "\n" not in sentence
    assert listener.connections() == 0
    host.assert_untouched()
    stray_file.assert_untouched()
    assert_no_marker(out, offsite, tmp_path / "state")


def test_a_header_rewritten_right_after_a_restore_read_it_is_refused_at_the_next_read(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock, listener: Listener
) -> None:
    """The guard keeps what a header said for a few minutes (one read per job), but
    only for the very file it read: rewritten in place, its modification time even
    set back, the file is read again and refused."""
    host = HostFile.make(tmp_path / "host" / "secret.raw")
    ids = chain_of_three(bk_engine, repo, tmp_path, clock)
    bk_engine.restores.restore(ids[-1], str(tmp_path / "first.raw"))
    top = point_file(bk_engine, repo, ids[-1])
    before = top.stat()
    tamper("host_file", bk_engine, repo, ids, host, listener.port)
    os.utime(top, ns=(before.st_atime_ns, before.st_mtime_ns))
    host = HostFile.watch(host.path)
    with pytest.raises(ImageRefused) as err:
        bk_engine.restores.restore(ids[-1], str(tmp_path / "second.raw"))
    assert top.name in err.value.message and "refused" in err.value.message
    assert not (tmp_path / "second.raw").exists()
    host.assert_untouched()


def test_validate_and_point_details_name_a_foreign_header_without_opening_it(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock
) -> None:
    host = HostFile.make(tmp_path / "host" / "secret.raw")
    ids = chain_of_three(bk_engine, repo, tmp_path, clock)
    tamper("json_spec", bk_engine, repo, ids, host, 1)
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    report = bk_engine.chains.validate(chain_id)
    assert not report.ok
    (finding,) = [f for f in report.findings if f.breaking]
    assert finding.kind == "wrong_backing" and "a json: specification" in finding.message
    details = bk_engine.chains.point_details(ids[-1])
    assert "json: specification" in (details["chain"][0]["problem"] or "")
    assert [c["problem"] for c in details["chain"][1:]] == [None, None]
    host.assert_untouched()


# -- item 4: a bad point is never served as if it were good --------------------------


@pytest.fixture
def two_repos(bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock) -> Any:
    nas = tmp_path / "nas"
    nas.mkdir()
    return bk_engine.repository_store.add(name="nas", kind="local", path=str(nas), now=clock.now())


def damage_data(path: Path) -> None:
    """Flip bytes inside a data cluster of a point (its header stays valid)."""
    extents = [
        e
        for e in qemu_img.map_image(ImageSpec.file(path))
        if e.depth == 0 and e.data and e.offset is not None
    ]
    with open(path, "r+b") as f:
        f.seek(extents[0].offset + 100)  # type: ignore[operator]
        f.write(b"\xff" * 64)


@pytest.mark.root
def test_bad_point_is_read_from_a_verified_copy_refused_without_one_and_forced_unverified(
    bk_engine: Engine, repo: Any, two_repos: Any, tmp_path: Path, clock: FixedClock
) -> None:
    from tests.engine.fsimages import Part, build_disk

    source = tmp_path / "disk.raw"
    moments = []
    for i, text in enumerate((b"first\n", b"second\n")):
        if i:
            clock.advance(3600)
        built = build_disk(
            tmp_path / f"v{i}.raw", [Part("ext4", 8, {"note.txt": text})], table=None
        )
        shutil.copyfile(built, source)
        run = bk_engine.backups.run(repo.id, "vm1", [DiskSource("sda", str(source))])
        assert run.ok, run.sentence()
        moments.append((run.disks[0].backup_id or 0, sha256_of(source)))
    (full, _), (inc, inc_sha) = moments
    bk_engine.start()
    job = bk_engine.copies.copy_backups([inc], "nas")
    assert wait_job(bk_engine, job.id).state == "succeeded"
    damage_data(point_file(bk_engine, repo, inc))
    (result,) = bk_engine.verifier.verify_targets(
        bk_engine.verifier.targets("backup", inc, include_copies=False)
    )
    assert result.outcome == "mismatch"
    (view,) = bk_engine.chains.overview()
    assert view.state == "damaged" and view.damage()[0].startswith(f"point #{inc} is bad")

    # a verified copy stands in, and the operator is told
    restored = bk_engine.restores.restore(inc, str(tmp_path / "r1.raw"))
    assert restored.read_from == "nas" and "verified copy on repository nas" in (
        restored.note or ""
    )
    assert sha256_of(tmp_path / "r1.raw") == inc_sha
    mounted = bk_engine.file_restore.mount(inc)
    try:
        assert "verified copy on repository nas" in (mounted.note or "")
        (fs,) = [f for f in mounted.filesystems if f.state == "mounted"]
        assert (Path(fs.path or "") / "note.txt").read_bytes() == b"second\n"
    finally:
        bk_engine.file_restore.unmount(mounted.id)
    export = bk_engine.exports.start(inc)
    try:
        assert "verified copy on repository nas" in (export.note or "")
        served = ImageSpec.nbd(parse_nbd_uri(export.uri))
        qemu_img.convert(served, tmp_path / "served.raw", dst_fmt="raw")
        assert sha256_of(tmp_path / "served.raw") == inc_sha
    finally:
        bk_engine.exports.stop(export.id)

    # the copy goes bad too: refused, naming what is still good; --force reads anyway
    (copy,) = [c for c in bk_engine.copies.list_copies() if c.backup_id == inc]
    damage_data(Path(two_repos.path) / copy.path)
    assert bk_engine.verifier.verify_copy(copy.id) == "mismatch"
    for call in (
        lambda: bk_engine.restores.restore(inc, str(tmp_path / "r2.raw")),
        lambda: bk_engine.restores.submit(inc, str(tmp_path / "r2.raw")),
        lambda: bk_engine.file_restore.mount(inc),
        lambda: bk_engine.exports.start(inc),
    ):
        with pytest.raises(DamagedPoint) as err:
            call()
        assert f"point #{inc} is bad" in err.value.message
        assert f"verified copies exist only of #{full} on nas" in err.value.message
        # the engine names the action (the console offers it in its own dialog);
        # the CLI renders its flag
        assert err.value.action is not None and err.value.action.key == "read_unverified"
        assert "--force" in (cli_hint(err.value) or "")
    assert not (tmp_path / "r2.raw").exists()
    forced = bk_engine.restores.restore(inc, str(tmp_path / "r2.raw"), force=True)
    assert forced.unverified and forced.read_from == "local" and "UNVERIFIED" in (forced.note or "")
    forced_export = bk_engine.exports.start(inc, force=True)
    bk_engine.exports.stop(forced_export.id)
    assert "UNVERIFIED" in (forced_export.note or "")
    # the full alone is good: served from its own repository without a note
    plain = bk_engine.restores.restore(full, str(tmp_path / "r3.raw"))
    assert plain.note is None and plain.read_from == "local"
