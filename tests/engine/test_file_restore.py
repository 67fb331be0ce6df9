"""File-level restore on real images: GPT + ext4 + xfs, full + incremental chains,
mounted through qemu-storage-daemon's FUSE export and read-only loop devices."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from engine.catalog import Catalog
from engine.clock import FixedClock
from engine.config import default_settings, sqlite_url
from engine.errors import ValidationError
from engine.events import EventBus
from engine.safepath import UnsafePath
from engine.services.file_restore import FileRestoreError, FileRestoreService, teardown_dir
from tests.engine.fsimages import (
    MTIME,
    File,
    Link,
    Part,
    backup_chain,
    build_disk,
    host_passwd_kept,
    host_passwd_lines,
    loops_on,
    mounts_under,
    processes_mentioning,
)

pytestmark = pytest.mark.root

MiB = 1024 * 1024
BIG = random.Random(7).randbytes(3 * MiB + 123)

EXT4_V1: dict[str, object] = {
    "etc/hosts": b"127.0.0.1 localhost\n",
    "etc/app.conf": File(b"level=1\n", mode=0o600, mtime=MTIME + 60),
    "data/big.bin": BIG,
    "data/old.txt": b"will be deleted\n",
    "empty": None,
}
EXT4_V2 = {
    **{k: v for k, v in EXT4_V1.items() if k != "data/old.txt"},
    "etc/app.conf": File(b"level=2 changed\n", mode=0o600, mtime=MTIME + 3600),
    "data/new.txt": b"added in the incremental\n",
}
XFS_V1: dict[str, object] = {
    "home/ann/notes.txt": b"ann's notes v1\n",
    "srv/www/index.html": b"<h1>",
}
XFS_V2 = {**XFS_V1, "home/ann/notes.txt": b"ann's notes v2, longer\n", "home/bob/todo": b"x\n"}


@dataclass
class Env:
    catalog: Catalog
    service: FileRestoreService
    clock: FixedClock
    repo: Path
    tmp: Path

    def new_service(self) -> FileRestoreService:
        settings = default_settings(self.tmp / "state")
        return FileRestoreService(
            self.catalog, EventBus(None, self.clock), settings, clock=self.clock
        )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    catalog = Catalog(sqlite_url(tmp_path / "catalog.db")).open()
    clock = FixedClock()
    settings = default_settings(tmp_path / "state")
    service = FileRestoreService(catalog, EventBus(None, clock), settings, clock=clock)
    repo = tmp_path / "repo"
    repo.mkdir()
    try:
        yield Env(catalog, service, clock, repo, tmp_path)
    finally:
        # whatever happened: no mount, loop device or exporter may outlive the test
        try:
            service.close()
        finally:
            root = tmp_path / "state" / "restore"
            if root.is_dir():
                for base in root.iterdir():
                    teardown_dir(base, None)
            for pid in processes_mentioning(str(tmp_path)):
                os.kill(pid, 9)
            catalog.dispose()
        assert mounts_under(tmp_path) == [], "a mount outlived the test"
        assert loops_on(tmp_path) == [], "a loop device outlived the test"


@pytest.fixture(scope="module")
def gpt_versions(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    work = tmp_path_factory.mktemp("gpt")
    v1 = build_disk(
        work / "v1.raw", [Part("ext4", 24, EXT4_V1, "root"), Part("xfs", 300 // 10, XFS_V1)]
    )
    v2 = build_disk(
        work / "v2.raw", [Part("ext4", 24, EXT4_V2, "root"), Part("xfs", 300 // 10, XFS_V2)]
    )
    return [v1, v2]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_clean(env: Env) -> None:
    assert mounts_under(env.tmp / "state") == []
    assert loops_on(env.tmp / "state") == []
    assert processes_mentioning(str(env.tmp / "state")) == []


def test_full_and_incremental_show_the_files_of_their_moment(
    env: Env, gpt_versions: list[Path]
) -> None:
    chain = backup_chain(env.catalog, env.repo, gpt_versions, now=env.clock.now())
    full = env.service.mount(chain.full_id)
    inc = env.service.mount(chain.incremental_ids[0])
    assert {(f.name, f.fs_type, f.state) for f in full.filesystems} == {
        ("p1", "ext4", "mounted"),
        ("p2", "xfs", "mounted"),
    }
    assert [e.name for e in env.service.ls(full.id)] == ["p1", "p2"]

    full_data = {e.name for e in env.service.ls(full.id, "p1/data")}
    inc_data = {e.name for e in env.service.ls(inc.id, "p1/data")}
    assert full_data == {"big.bin", "old.txt"}
    assert inc_data == {"big.bin", "new.txt"}
    conf = next(e for e in env.service.ls(full.id, "p1/etc") if e.name == "app.conf")
    assert (conf.kind, conf.size, conf.mode) == ("file", 8, 0o600)
    assert conf.mtime is not None and conf.mtime.timestamp() == MTIME + 60
    assert {e.name for e in env.service.ls(inc.id, "p2/home")} == {"ann", "bob"}

    out_full, out_inc = env.tmp / "out-full", env.tmp / "out-inc"
    progress: list[tuple[int, int]] = []
    res = env.service.extract(
        full.id,
        ["p1/etc", "p1/data/big.bin", "p2/home/ann/notes.txt"],
        out_full,
        on_progress=lambda done, total, _: progress.append((done, total)),
    )
    assert (res.files, res.skipped) == (4, [])
    assert (out_full / "etc" / "app.conf").read_bytes() == b"level=1\n"
    assert (out_full / "big.bin").read_bytes() == BIG
    assert (out_full / "notes.txt").read_bytes() == b"ann's notes v1\n"
    st = (out_full / "etc" / "app.conf").stat()
    assert (st.st_mode & 0o7777, int(st.st_mtime)) == (0o600, MTIME + 60)
    assert int((out_full / "etc").stat().st_mtime) == MTIME  # folder times restored too
    assert progress[-1][0] == progress[-1][1] == res.bytes_total

    env.service.extract(inc.id, ["p1/etc/app.conf", "p2/home"], out_inc)
    assert (out_inc / "app.conf").read_bytes() == b"level=2 changed\n"
    assert (out_inc / "home" / "ann" / "notes.txt").read_bytes() == b"ann's notes v2, longer\n"
    assert (out_inc / "home" / "bob" / "todo").read_bytes() == b"x\n"
    assert not list(out_inc.rglob(".sendense-*"))

    hits = env.service.search(inc.id, "*.TXT")
    assert {h.path for h in hits} == {"p1/data/new.txt", "p2/home/ann/notes.txt"}
    assert [h.path for h in env.service.search(inc.id, "todo", "p2")] == ["p2/home/bob/todo"]

    env.service.unmount(full.id)
    env.service.unmount(inc.id)
    _assert_clean(env)


def test_second_mount_reuses_and_use_extends_expiry(env: Env, gpt_versions: list[Path]) -> None:
    chain = backup_chain(env.catalog, env.repo, gpt_versions[:1], now=env.clock.now())
    first = env.service.mount(chain.full_id)
    assert first.expires_at - env.clock.now() == timedelta(hours=1)
    env.clock.advance(timedelta(minutes=50))
    second = env.service.mount(chain.full_id)
    assert second.reused and second.id == first.id
    assert second.expires_at == env.clock.now() + timedelta(hours=1)
    assert len(env.service.list_mounts()) == 1

    env.clock.advance(timedelta(minutes=59))
    env.service.ls(first.id, "p1")  # browsing counts as use
    env.clock.advance(timedelta(minutes=30))
    assert env.service.reap_expired() == []
    env.clock.advance(timedelta(minutes=31))
    assert env.service.reap_expired() == [first.id]
    assert env.service.list_mounts() == []
    _assert_clean(env)


def test_bare_filesystem_disk_and_unknown_filesystem(env: Env) -> None:
    bare = build_disk(env.tmp / "bare.raw", [Part("ext4", 16, {"a.txt": b"bare\n"})], table=None)
    mixed = build_disk(env.tmp / "mixed.raw", [Part(None, 4), Part("ext4", 8, {"b": b"b\n"})])
    unknown = build_disk(env.tmp / "unknown.raw", [Part(None, 4)], table=None)
    ids = [
        backup_chain(env.catalog, env.repo, [raw], now=env.clock.now(), vm=raw.stem).full_id
        for raw in (bare, mixed, unknown)
    ]
    view = env.service.mount(ids[0])
    assert [(f.name, f.fs_type) for f in view.filesystems] == [("disk", "ext4")]
    assert [e.name for e in env.service.ls(view.id, "disk") if e.kind == "file"] == ["a.txt"]

    view = env.service.mount(ids[1])
    top = {e.name: e for e in env.service.ls(view.id)}
    assert top["p1"].kind == "filesystem" and "unknown filesystem" in top["p1"].detail
    assert top["p2"].kind == "dir"
    with pytest.raises(FileRestoreError, match="not browsable: unknown filesystem"):
        env.service.ls(view.id, "p1")

    with pytest.raises(FileRestoreError, match="unknown filesystem"):
        env.service.mount(ids[2])
    env.service.unmount_all()
    _assert_clean(env)


def test_links_and_dotted_names_in_the_backup_never_escape(env: Env) -> None:
    files: dict[str, object] = {
        "etc/passwd-link": Link("/etc/passwd"),
        "etc/up": Link("../../../../../etc"),
        "etc/ok-link": Link("../data/..evil"),
        "data/..evil": b"just a name with dots\n",
        "data/...": b"three dots\n",
        "data/a..b": b"dots inside\n",
    }
    raw = build_disk(env.tmp / "evil.raw", [Part("ext4", 16, files)])
    point = backup_chain(env.catalog, env.repo, [raw], now=env.clock.now()).full_id
    view = env.service.mount(point)
    outside_before = sorted(p.name for p in env.tmp.iterdir())

    with pytest.raises(UnsafePath):
        env.service.ls(view.id, "p1/../../..")
    with pytest.raises(UnsafePath, match="symbolic link"):
        env.service.ls(view.id, "p1/etc/up")
    with pytest.raises(UnsafePath, match="symbolic link"):
        env.service.extract(view.id, ["p1/etc/up/passwd"], env.tmp / "x")

    dest = env.tmp / "dest"
    passwd_before = host_passwd_lines()
    res = env.service.extract(view.id, ["p1/etc", "p1/data"], dest)
    # links are data: restored exactly as the guest had them, and never followed
    assert res.skipped == [] and res.symlinks == 3
    assert os.readlink(dest / "etc" / "passwd-link") == "/etc/passwd"
    assert os.readlink(dest / "etc" / "up") == "../../../../../etc"
    assert sorted(p.name for p in (dest / "data").iterdir()) == ["...", "..evil", "a..b"]
    assert (dest / "data" / "..evil").read_bytes() == b"just a name with dots\n"
    assert os.readlink(dest / "etc" / "ok-link") == "../data/..evil"
    assert sorted(p.name for p in env.tmp.iterdir()) == sorted([*outside_before, "dest"])
    # again with overwrite: the restored links are replaced, not written through
    res = env.service.extract(view.id, ["p1/etc"], dest, overwrite=True)
    assert res.skipped == [] and res.symlinks == 3
    assert host_passwd_kept(passwd_before)
    assert (dest / "data" / "..evil").read_bytes() == b"just a name with dots\n"
    # a link extracted on its own is a link too
    res = env.service.extract(view.id, ["p1/etc/ok-link"], env.tmp / "dest2")
    assert res.skipped == [] and os.readlink(env.tmp / "dest2" / "ok-link") == "../data/..evil"
    env.service.unmount(view.id)
    _assert_clean(env)


def test_corrupt_point_gives_clear_error_and_leaves_nothing_mounted(
    env: Env, gpt_versions: list[Path]
) -> None:
    chain = backup_chain(env.catalog, env.repo, gpt_versions, now=env.clock.now())
    with open(chain.files[1], "r+b") as f:  # break the incremental's header
        f.seek(4)
        f.write(b"\x00\x00\x00\x09")
    with pytest.raises(FileRestoreError, match="cannot mount restore point") as err:
        env.service.mount(chain.incremental_ids[0])
    assert err.value.hint
    assert env.service.list_mounts() == []
    _assert_clean(env)
    # the full beside it still mounts
    assert env.service.mount(chain.full_id).state == "mounted"


def test_missing_point_file(env: Env, gpt_versions: list[Path]) -> None:
    chain = backup_chain(env.catalog, env.repo, gpt_versions[:1], now=env.clock.now())
    chain.files[0].unlink()
    with pytest.raises(FileRestoreError, match="missing"):
        env.service.mount(chain.full_id)
    _assert_clean(env)


def test_destination_not_writable_or_full(env: Env, loop_fs, gpt_versions: list[Path]) -> None:  # type: ignore[no-untyped-def]
    chain = backup_chain(env.catalog, env.repo, gpt_versions[:1], now=env.clock.now())
    view = env.service.mount(chain.full_id)
    ro = loop_fs(size_mb=16, read_only=True)
    with pytest.raises(FileRestoreError, match="read-only"):
        env.service.extract(view.id, ["p1/etc"], ro.mountpoint)
    with pytest.raises(ValidationError, match="absolute"):
        env.service.extract(view.id, ["p1/etc"], "relative/dir")

    small = loop_fs(size_mb=4)
    dest = small.mountpoint / "restore"
    with pytest.raises(FileRestoreError, match="full"):
        env.service.extract(view.id, ["p1/etc", "p1/data/big.bin", "p1/data/big.bin"], dest)
    # whole files stay; the one that did not fit is not there under its name or a temp name
    names = {p.name for p in dest.iterdir()}
    assert "big.bin" not in names and not [n for n in names if n.startswith(".sendense")]
    env.service.unmount(view.id)


def test_leftovers_of_a_crashed_engine_are_cleaned_at_start(
    env: Env, gpt_versions: list[Path]
) -> None:
    chain = backup_chain(env.catalog, env.repo, gpt_versions[:1], now=env.clock.now())
    env.service.mount(chain.full_id)
    env.service.abandon()  # the engine "crashes": mounts, loops and exporter stay
    assert mounts_under(env.tmp / "state") != []
    fresh = env.new_service()
    try:
        cleaned = fresh.cleanup_leftovers()
        assert len(cleaned) == 1
        assert fresh.list_mounts() == []
        _assert_clean(env)
    finally:
        fresh.close()


def test_detached_mount_outlives_its_engine_until_it_expires(
    env: Env, gpt_versions: list[Path]
) -> None:
    chain = backup_chain(env.catalog, env.repo, gpt_versions[:1], now=env.clock.now())
    view = env.service.mount(chain.full_id, detached=True)
    env.service.close()  # the CLI process ends
    later = env.new_service()
    try:
        assert later.cleanup_leftovers() == []
        assert [e.name for e in later.ls(view.id, "p1/etc")] == ["app.conf", "hosts"]
        env.clock.advance(timedelta(hours=2))
        assert len(later.cleanup_leftovers()) == 1
        _assert_clean(env)
    finally:
        later.close()
