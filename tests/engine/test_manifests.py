# ruff: noqa: F401, F811  (fixtures imported from tests.engine.diskgen)
"""Manifests next to every point, and reading a repository back from them.

Real backups (qemu-img) into a directory repository; "the catalog is lost" is a
second Engine on a fresh, empty catalog that imports the same directory. Damage
and hostile artefacts are built in the test: a lost or damaged manifest, an
altered or missing file, a header that names a host FIFO as its backing file or
an external data file, a point replaced by a symbolic link, a manifest that
names a file outside its directory.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.catalog.models import Backup, Chain
from engine.clock import FixedClock
from engine.config import CapacitySettings, default_settings
from engine.errors import SendenseError
from engine.runtime import Engine
from engine.services import manifests
from engine.services.backup import DiskSource
from engine.services.imports import ImportReport
from engine.services.manifests import ManifestError, PointManifest
from engine.services.repositories import RepositorySpec
from engine.tools import qemu_img
from tests.engine.diskgen import MiB, SourceDisk, bk_engine, repo, sha256_of

EngineMaker = Callable[[str], Engine]


@pytest.fixture
def new_engine(tmp_path: Path, clock: FixedClock) -> Iterator[EngineMaker]:
    """Engines on their own fresh catalogs: a catalog that was lost, a new appliance."""
    made: list[Engine] = []

    def make(name: str) -> Engine:
        base = default_settings(tmp_path / f"state-{name}")
        settings = dataclasses.replace(
            base, capacity=dataclasses.replace(CapacitySettings(), min_free_bytes=0)
        )
        engine = Engine(settings, clock=clock, owner=name)
        engine.open()
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def back_up(
    engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, points: int = 3
) -> dict[str, str]:
    """A full and incrementals; returns {point path: source sha256 at that moment}."""
    moments: dict[str, str] = {}
    for i in range(points):
        if i:
            clock.advance(3600)
            disk.change([(i * MiB, 128 * 1024)])
        run = engine.backups.run(repo.id, "web01", [DiskSource("sda", str(disk.path))])
        assert run.ok, run.sentence()
        assert run.disks[0].path is not None
        moments[run.disks[0].path] = disk.sha256()
    return moments


def import_into(engine: Engine, name: str, root: Path) -> ImportReport:
    repo = engine.imports.add_repository(RepositorySpec(name=name, path=str(root)))
    return engine.imports.import_repository(repo.id)


def restored(engine: Engine, backup_id: int, tmp_path: Path) -> str:
    target = tmp_path / f"restored-{backup_id}.raw"
    target.unlink(missing_ok=True)
    engine.restores.restore(backup_id, str(target))
    digest = sha256_of(target)
    target.unlink()
    return digest


def by_path(engine: Engine) -> dict[str, Backup]:
    return {b.path: b for b, _c in engine.chain_store.list_backups()}


# -- the manifest itself ------------------------------------------------------------------


def test_every_point_lands_with_a_manifest_that_says_what_the_catalog_says(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock
) -> None:
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=2)
    back_up(bk_engine, repo, disk, clock)
    rows = bk_engine.chain_store.list_backups()
    names = {Path(b.path).name: b for b, _ in rows}
    for b, chain in rows:
        path = Path(repo.path) / b.path
        m = manifests.read_manifest(path)
        parent = (
            None
            if b.parent_id is None
            else Path(bk_engine.chain_store.get_backup(b.parent_id).path).name
        )
        assert (m.vm, m.disk, m.kind, m.position, m.parent) == (
            chain.vm_name,
            chain.disk_name,
            b.kind,
            b.position,
            parent,
        )
        assert (m.sha256, m.file_size, m.virtual_size, m.allocated_bytes) == (
            b.checksum,
            b.file_size,
            b.virtual_size,
            b.allocated_bytes,
        )
        assert m.point_time == b.point_time and m.lock_expires is None
        assert parent is None or parent in names
        # root only, like the point
        assert manifests.manifest_path(path).stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "change",
    [
        {"format": 2},
        {"file": "../../../etc/passwd"},
        {"file": "0001-inc-20261124T090000Z.qcow2/x"},
        {"vm": "../evil"},
        {"sha256": "not hex"},
        {"position": -1},
        {"position": 2**64},
        {"virtual_size": "4096"},
        {"kind": "snapshot"},
        {"parent": "/etc/passwd"},
        {"parent": None},
        {"point_time": "yesterday"},
        {"point_time": "2026-11-24T09:00:00"},
        {"compression": "lz4"},
        {"copy_of": "a/b"},
    ],
)
def test_a_manifest_is_strictly_typed_and_names_only_files_of_its_directory(
    change: dict[str, Any],
) -> None:
    good = PointManifest(
        vm="web01",
        disk="sda",
        file="0001-inc-20261124T090000Z.qcow2",
        kind="incremental",
        position=1,
        parent="0000-full-20261124T080000Z.qcow2",
        point_time=FixedClock().now(),
        created=FixedClock().now(),
        virtual_size=4 * MiB,
        file_size=1000,
        allocated_bytes=512,
        sha256="a" * 64,
    )
    data = good.as_dict()
    assert PointManifest.from_dict(json.loads(good.to_bytes()), where="m") == good
    with pytest.raises(ManifestError):
        PointManifest.from_dict({**data, **change}, where="m")


def test_manifest_reader_refuses_big_links_and_other_files(tmp_path: Path) -> None:
    point = tmp_path / "0000-full-20261124T090000Z.qcow2"
    with pytest.raises(ManifestError, match="has no manifest"):
        manifests.read_manifest(point)
    manifests.manifest_path(point).write_bytes(b" " * (manifests.MAX_MANIFEST_BYTES + 10))
    with pytest.raises(ManifestError, match="larger than"):
        manifests.read_manifest(point)
    manifests.manifest_path(point).unlink()
    manifests.manifest_path(point).symlink_to("/etc/hostname")
    with pytest.raises(ManifestError, match="cannot be read"):
        manifests.read_manifest(point)


def test_qcow2_header_is_read_without_qemu_and_agrees_with_qemu_img(tmp_path: Path) -> None:
    base = tmp_path / "0000-full-20261124T090000Z.qcow2"
    top = tmp_path / "0001-inc-20261124T100000Z.qcow2"
    old = tmp_path / "old.qcow2"
    qemu_img.create(base, 4 * MiB)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2", top.name],
        cwd=tmp_path,
        check=True,
        timeout=30,
    )
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(old), "1M"],
        check=True,
        timeout=30,
    )
    for path, backing in ((base, None), (top, base.name), (old, None)):
        head = manifests.read_qcow2_header(path)
        info = qemu_img.info(path, fmt="qcow2")
        assert (head.virtual_size, head.backing_file) == (info.virtual_size, backing)
        assert head.refusal(backing) is None
    assert manifests.read_qcow2_header(old).version == 2
    assert "backing file" in (manifests.read_qcow2_header(top).refusal(None) or "")
    data = tmp_path / "data.raw"
    with_data = tmp_path / "0000-full-20261124T110000Z.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            f"data_file={data}",
            str(with_data),
            "1M",
        ],
        check=True,
        timeout=30,
    )
    assert "external data file" in (manifests.read_qcow2_header(with_data).refusal(None) or "")
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 4096)
    with pytest.raises(ManifestError, match="not a QCOW2 image"):
        manifests.read_qcow2_header(raw)


# -- importing after the catalog is lost --------------------------------------------------


def test_a_lost_catalog_is_rebuilt_from_the_repository_and_every_point_restores(
    bk_engine: Engine, repo: Any, new_engine: EngineMaker, tmp_path: Path, clock: FixedClock
) -> None:
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=3)
    moments = back_up(bk_engine, repo, disk, clock)
    before = {
        p: (b.checksum, b.kind, b.position, b.point_time) for p, b in by_path(bk_engine).items()
    }

    fresh = new_engine("after-loss")
    report = import_into(fresh, "local", Path(repo.path))
    assert report.ok, report.problems
    [chain] = report.chains
    assert chain.outcome == "imported" and len(chain.points) == 3
    after = by_path(fresh)
    assert {p: (b.checksum, b.kind, b.position, b.point_time) for p, b in after.items()} == before
    assert {b.verify_state for b in after.values()} == {"ok"}  # every checksum was read
    assert report.bytes_read == sum((Path(repo.path) / p).stat().st_size for p in moments)
    for path, digest in moments.items():
        assert restored(fresh, after[path].id, tmp_path) == digest
    # the next backup builds on the imported chain
    clock.advance(3600)
    disk.change([(3 * MiB, 64 * 1024)])
    run = fresh.backups.run("local", "web01", [DiskSource("sda", str(disk.path))])
    assert run.ok and run.disks[0].kind == "incremental", run.sentence()
    assert run.disks[0].chain_id == chain.chain_id
    assert restored(fresh, int(run.disks[0].backup_id or 0), tmp_path) == disk.sha256()
    # importing again records nothing twice
    again = fresh.imports.import_repository("local")
    assert again.ok and again.count("points") == 0
    assert len(fresh.chain_store.list_backups()) == 4


def _damage(kind: str, root: Path, paths: list[str]) -> str:
    """Damage the middle point; returns the phrase the report must contain."""
    middle = root / paths[1]
    if kind == "manifest_lost":
        manifests.manifest_path(middle).unlink()
        return "has no manifest: described from its header and name"
    if kind == "manifest_damaged":
        manifests.manifest_path(middle).write_text('{"format": 1, "vm": ')
        return "is not valid JSON: 0001-inc"
    if kind == "file_altered":
        with open(middle, "r+b") as f:  # same size: only the checksum can tell
            f.seek(middle.stat().st_size - 4096)
            f.write(os.urandom(16))
        return "does not match its manifest's checksum"
    middle.unlink()
    return "is missing from the disk"


@pytest.mark.parametrize(
    "kind", ["manifest_lost", "manifest_damaged", "file_altered", "file_missing"]
)
def test_damage_is_reported_and_never_recorded_as_good(
    bk_engine: Engine,
    repo: Any,
    new_engine: EngineMaker,
    tmp_path: Path,
    clock: FixedClock,
    kind: str,
) -> None:
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=4)
    moments = back_up(bk_engine, repo, disk, clock)
    paths = sorted(moments)
    phrase = _damage(kind, Path(repo.path), paths)
    fresh = new_engine("after-loss")
    report = import_into(fresh, "local", Path(repo.path))
    [chain] = report.chains
    said = chain.notes + chain.problems
    assert any(phrase in line for line in said), said
    rows = by_path(fresh)
    middle = rows[paths[1]]
    if kind == "manifest_lost":
        # a note, not damage: the point is good, but its checksum was not verifiable
        assert report.ok and middle.state == "complete" and middle.verify_state is None
        assert middle.checksum == sha256_of(Path(repo.path) / paths[1])
    elif kind == "manifest_damaged":
        assert not report.ok and middle.state == "complete" and middle.verify_state is None
    else:
        # recorded as a bad point with what it should be, so a good copy can stand in
        assert not report.ok and chain.outcome == "damaged"
        assert middle.state == "bad"
        assert middle.verify_state == ("mismatch" if kind == "file_altered" else "missing")
        assert (
            middle.checksum
            == bk_engine.chain_store.get_backup(by_path(bk_engine)[paths[1]].id).checksum
        )
    # the points that are fine are fine
    assert rows[paths[0]].state == "complete" and rows[paths[0]].verify_state == "ok"
    assert restored(fresh, rows[paths[0]].id, tmp_path) == moments[paths[0]]


class _FifoWatch:
    """A FIFO outside the repository; ``opened`` turns True if anything opens it to read
    (a writer can then open it without blocking)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.opened = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                assert exc.errno == errno.ENXIO  # no reader: as it must be
            else:
                self.opened = True
                os.close(fd)
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("attack", ["host_backing", "data_file", "symlink", "manifest_path"])
def test_hostile_points_are_refused_and_nothing_outside_the_repository_is_opened(
    bk_engine: Engine,
    repo: Any,
    new_engine: EngineMaker,
    tmp_path: Path,
    clock: FixedClock,
    attack: str,
) -> None:
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=5)
    moments = back_up(bk_engine, repo, disk, clock)
    paths = sorted(moments)
    root = Path(repo.path)
    middle = root / paths[1]
    outside = tmp_path / "outside"
    outside.mkdir()
    host = outside / "host-disk"
    if attack == "host_backing":
        # the header now reads the host's "disk" under the point's data
        qemu_img.rebase(middle, str(host), backing_fmt="raw", unsafe=True)
    elif attack == "data_file":
        middle.unlink()
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={host}",
             "-o", "data_file_raw=on", str(middle), "4M"],
            check=True, timeout=30,
        )  # fmt: skip
        host.unlink()  # the FIFO takes its place
    elif attack == "symlink":
        middle.unlink()
        middle.symlink_to(host)
    else:
        data = json.loads(manifests.manifest_path(middle).read_text())
        data["file"] = "../../../../outside/host-disk"
        manifests.manifest_path(middle).write_text(json.dumps(data))
    watch = _FifoWatch(host)
    try:
        fresh = new_engine("after-loss")
        report = import_into(fresh, "local", root)
        fresh.chains.check_all(deep=True)
    finally:
        watch.stop()
    assert not watch.opened, "the import opened a file outside the repository"
    [chain] = report.chains
    text = " ".join(chain.problems)
    rows = by_path(fresh)
    if attack in ("host_backing", "data_file"):
        assert "is refused" in text
        assert ("external data file" if attack == "data_file" else "host-disk") in text
        assert paths[1] not in rows and paths[2] not in rows  # nothing built on it
    elif attack == "symlink":
        assert "not a regular file (a link or a device): never read" in text
        assert paths[1] not in rows and paths[2] not in rows
    else:
        assert "field 'file' is missing or not valid" in text
        assert rows[paths[1]].state == "complete"  # described from its header instead
    assert rows[paths[0]].state == "complete"
    assert sorted(p.name for p in outside.iterdir()) == ["host-disk"]


def test_a_repository_path_without_chains_is_refused_and_nothing_is_created(
    new_engine: EngineMaker, tmp_path: Path
) -> None:
    fresh = new_engine("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="holds no Sendense repository: it has no chains/"):
        fresh.imports.add_repository(RepositorySpec(name="nothing", path=str(empty)))
    assert list(empty.iterdir()) == []
    assert "nothing" not in [r.name for r in fresh.repositories.list()]


# -- copies ----------------------------------------------------------------------------------


def test_a_copied_repository_is_imported_as_copies_of_the_original(
    bk_engine: Engine, repo: Any, new_engine: EngineMaker, tmp_path: Path, clock: FixedClock
) -> None:
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=6)
    moments = back_up(bk_engine, repo, disk, clock)
    offsite = tmp_path / "offsite"
    offsite.mkdir()
    dst = bk_engine.repository_store.add(
        name="offsite", kind="local", path=str(offsite), now=clock.now()
    )
    bk_engine.copies.add_rule(name="off", source=repo.id, destination=dst.id)
    job = bk_engine.copies.run_rule("off")
    bk_engine.jobs.start()
    for _ in range(600):
        if bk_engine.job_store.get(job.id).state in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert bk_engine.job_store.get(job.id).state == "succeeded"
    for path in moments:
        m = manifests.read_manifest(offsite / path)
        assert m.copy_of == "local" and m.sha256 == by_path(bk_engine)[path].checksum
    # damage the copy of the newest point: reported, not recorded as a good copy
    newest = offsite / sorted(moments)[-1]
    with open(newest, "r+b") as f:
        f.seek(newest.stat().st_size - 4096)
        f.write(os.urandom(8))

    fresh = new_engine("after-loss")
    assert import_into(fresh, "local", Path(repo.path)).ok
    report = import_into(fresh, "offsite", offsite)
    [chain] = report.chains
    assert chain.outcome == "copies" and len(chain.copies) == 2
    assert any(
        "differs from point" in p and "not recorded as its copy" in p for p in chain.problems
    )
    copies = fresh.copies.list_copies(
        destination_repository_id=fresh.repositories.get("offsite").id
    )
    rows = by_path(fresh)
    assert {c.backup_id for c in copies} == {rows[p].id for p in sorted(moments)[:2]}
    assert {(c.state, c.verify_state, c.path) for c in copies} == {
        ("completed", "ok", p) for p in sorted(moments)[:2]
    }
    # no chain rows for the copies: the first repository imported holds the backups
    assert [c.repository_id for c in fresh.chain_store.list_chains()] == [
        fresh.repositories.get("local").id
    ]


# -- chain check and --fix --------------------------------------------------------------------


def _forget(engine: Engine, *backup_ids: int, chain_id: int | None = None) -> None:
    """The catalog rows were never written (a crash just after the files landed)."""
    with engine.catalog.session() as session:
        for backup_id in sorted(backup_ids, reverse=True):
            session.delete(session.get(Backup, backup_id))
        session.flush()
        if chain_id is not None:
            session.delete(session.get(Chain, chain_id))


def _age(path: Path, seconds: float = 3600) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_chain_check_names_orphans_and_unknown_directories_and_fix_cleans_them(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock
) -> None:
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=7)
    moments = back_up(bk_engine, repo, disk, clock)
    paths = sorted(moments)
    root = Path(repo.path)
    # web01: the newest point landed, its row was never written
    newest = by_path(bk_engine)[paths[2]]
    _forget(bk_engine, newest.id)
    # db01: a whole new chain whose rows were never written
    other = SourceDisk.create(tmp_path / "o.raw", 4 * MiB, seed=8)
    run = bk_engine.backups.run(repo.id, "db01", [DiskSource("vda", str(other.path))])
    assert run.ok
    _forget(bk_engine, int(run.disks[0].backup_id or 0), chain_id=run.disks[0].chain_id)
    directory = (root / paths[0]).parent
    stale = directory / ".0009-inc-20261124T000000Z.qcow2.partial"
    stale.write_bytes(b"half a backup")
    _age(stale)
    fresh_partial = directory / ".0010-inc-20261124T000000Z.qcow2.partial"
    fresh_partial.write_bytes(b"still being written")
    leftover = directory / "0000-full-20261120T000000Z.qcow2.json"
    shutil.copy(manifests.manifest_path(root / paths[0]), leftover)
    junk = directory / "notes.txt"
    junk.write_text("someone's notes")

    reports = bk_engine.chains.check_all()
    web, unknown = reports
    assert web.ok  # orphans do not break a chain
    said = {f.path.rsplit("/", 1)[-1]: (f.message, f.hint) for f in web.findings if f.path}
    assert "finished point file the catalog does not know" in said[Path(paths[2]).name][0]
    assert "--fix` imports it" in said[Path(paths[2]).name][1]
    assert "left by an interrupted backup" in said[stale.name][0]
    assert "--fix` removes it" in said[stale.name][1]
    assert "belongs to 0000-full-20261120T000000Z.qcow2" in said[leftover.name][0]
    assert "rename it back" in said[junk.name][1]
    assert unknown.unknown and unknown.vm_name == "db01" and unknown.points == 1
    assert "the catalog has no chain for it" in unknown.findings[0].message

    fixed = bk_engine.imports.fix(actor="test")
    assert not stale.exists() and fresh_partial.exists() and junk.exists()
    assert leftover.exists()  # the catalog never recorded that point as deleted
    assert any(
        fresh_partial.name in line and "may still be in use" in line for line in fixed.left_alone
    )
    assert fixed.imported == 2
    after = bk_engine.chains.check_all()
    assert [r.unknown for r in after] == [False, False]
    assert all(r.ok for r in after)
    db = bk_engine.chain_store.current_chain(repo.id, "db01", "vda")
    web_chain = bk_engine.chain_store.current_chain(repo.id, "web01", "sda")
    assert db is not None and web_chain is not None
    assert [b.path for b in bk_engine.chain_store.backups(web_chain.id)] == paths
    assert restored(bk_engine, by_path(bk_engine)[paths[2]].id, tmp_path) == moments[paths[2]]
    # the next backup builds on the re-imported point
    clock.advance(3600)
    disk.change([(2 * MiB, 4096)])
    run = bk_engine.backups.run(repo.id, "web01", [DiskSource("sda", str(disk.path))])
    assert run.ok and run.disks[0].kind == "incremental"
    assert bk_engine.chain_store.get_backup(int(run.disks[0].backup_id or 0)).parent_id == (
        by_path(bk_engine)[paths[2]].id
    )


def test_fix_removes_the_manifest_of_a_deleted_point_and_leaves_busy_repositories_alone(
    bk_engine: Engine, repo: Any, tmp_path: Path, clock: FixedClock
) -> None:
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=9)
    paths = sorted(back_up(bk_engine, repo, disk, clock))
    root = Path(repo.path)
    newest = by_path(bk_engine)[paths[2]]
    # a deletion that stopped after the file went, before its manifest did
    manifest = manifests.manifest_path(root / paths[2]).read_bytes()
    bk_engine.chains.delete_point(newest.id)
    manifests.manifest_path(root / paths[2]).write_bytes(manifest)
    _age(manifests.manifest_path(root / paths[2]))
    stale = (root / paths[0]).parent / ".0003-inc-20261124T000000Z.qcow2.partial"
    stale.write_bytes(b"x")
    _age(stale)
    # a job runs on the repository: nothing is touched
    job = bk_engine.job_store.create(
        "backup", "back up web01", now=clock.now(), repository_id=repo.id
    )
    assert bk_engine.job_store.claim(job.id, "elsewhere", clock.now(), timedelta(minutes=5))
    fixed = bk_engine.imports.fix()
    assert stale.exists() and manifests.manifest_path(root / paths[2]).exists()
    assert any(f"job #{job.id}" in line for line in fixed.left_alone)
    bk_engine.job_store.finish(job.id, "elsewhere", "succeeded", clock.now())
    fixed = bk_engine.imports.fix()
    assert not stale.exists() and not manifests.manifest_path(root / paths[2]).exists()
    assert len(fixed.removed) == 2 and fixed.imported == 0


def test_an_import_is_refused_while_a_job_writes_the_repository_and_a_dead_one_is_taken_over(
    bk_engine: Engine, repo: Any, clock: FixedClock
) -> None:
    (Path(repo.path) / "chains").mkdir()
    backup = bk_engine.job_store.create(
        "backup", "back up web01", now=clock.now(), repository_id=repo.id
    )
    assert bk_engine.job_store.claim(backup.id, "elsewhere", clock.now(), timedelta(seconds=30))
    with pytest.raises(SendenseError, match=f"job #{backup.id} .* is running on repository"):
        bk_engine.imports.submit(repo.id)
    bk_engine.job_store.finish(backup.id, "elsewhere", "succeeded", clock.now())
    first = bk_engine.imports.submit(repo.id)
    assert bk_engine.imports.submit(repo.id).id == first.id  # still queued: the same job
    assert bk_engine.job_store.claim(first.id, "dead-engine", clock.now(), timedelta(seconds=30))
    with pytest.raises(SendenseError, match="is running on repository"):
        bk_engine.imports.submit(repo.id)
    clock.advance(31)  # the engine that claimed it died: its lease lapsed
    assert bk_engine.imports.submit(repo.id).id == first.id  # taken over, never doubled


def test_a_disk_moved_under_a_new_name_is_recorded_as_copies_and_the_report_says_how_to_move_it(
    bk_engine: Engine, repo: Any, new_engine: EngineMaker, tmp_path: Path, clock: FixedClock
) -> None:
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=15)
    moments = back_up(bk_engine, repo, disk, clock, points=2)
    fresh = new_engine("after-loss")
    assert import_into(fresh, "local", Path(repo.path)).ok
    moved = tmp_path / "moved"
    shutil.move(repo.path, moved)
    report = import_into(fresh, "moved", moved)
    [chain] = report.chains
    assert chain.outcome == "copies" and len(chain.copies) == len(moments)
    assert any(
        "local no longer has these files" in note and "change the path of local" in note
        for note in chain.notes
    )
