"""Restore into a folder gives back what the guest had (issue 17, items 1, 2 and 4).

A guest filesystem (ext4 and xfs) is built in the test with what a Debian guest's
/etc or a user's home holds: absolute and relative links (one to /etc/passwd, one
climbing far out, one to a folder of this very host), files of uid 1234/gid 5678, a
setuid and a setgid file, a sticky folder, a hard-link pair, user/trusted xattrs, a
POSIX ACL and a default ACL, a file capability, a 1 GiB sparse file holding 1 MiB of
data, a fifo, a character device, an empty folder. It is backed up as a QCOW2 point,
mounted the way an operator mounts it, extracted, and compared with the source tree
by ``rsync -naHAXS --numeric-ids --itemize-changes`` (nothing may differ).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engine.fsimages import (
    XFS_ENV,
    backup_chain,
    host_passwd_kept,
    host_passwd_lines,
    posix_acl,
    sh,
)
from tests.engine.test_file_restore import Env, env  # noqa: F401  (the fixture)

pytestmark = pytest.mark.root

MiB = 1024 * 1024
GiB = 1024 * MiB
ROOT = Path(__file__).resolve().parents[2]
#: nanoseconds, so a restore that keeps only seconds shows up
STAMP = 1_700_000_000_123_456_789
NOBODY = pwd.getpwnam("nobody")
#: what is not restored without specials: rsync's lines for them
SPECIALS = {"run/fifo", "run/null"}


def _set(path: Path, uid: int = 0, gid: int = 0, mode: int | None = None) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    if mode is not None:
        os.chmod(path, mode)  # after chown: chown clears setuid/setgid


def build_guest_tree(top: Path, victim: Path) -> None:
    """The guest's files under ``top``; ``victim`` is a folder of this host that a
    link of the guest names by its absolute path."""
    for folder in ("etc", "home/ann", "bin", "tmp", "shared", "data", "run", "empty", "x"):
        (top / folder).mkdir(parents=True)
    os.symlink("/etc/passwd", top / "etc/passwd-link")
    os.symlink("/usr/share/zoneinfo/Etc/UTC", top / "etc/localtime")
    os.symlink("../../../../../../../../..", top / "etc/far")
    os.symlink("../home/ann/notes", top / "etc/rel")
    os.symlink(str(victim), top / "x/home")  # named like the real folder home
    os.lchown(top / "etc/rel", 1234, 5678)
    notes = top / "home/ann/notes"
    notes.write_bytes(b"ann's notes\n")
    _set(notes, 1234, 5678, 0o640)
    os.setxattr(notes, "user.origin", b"guest")
    os.setxattr(notes, "trusted.tag", b"t1")
    os.setxattr(notes, "system.posix_acl_access", posix_acl(6, 4, 0, users={1001: 6}, mask=6))
    _set(top / "home/ann", 1234, 5678, 0o750)
    for name, gid, mode in (("su", 0, 0o4755), ("wall", 5678, 0o2755)):
        (top / "bin" / name).write_bytes(b"\x7fELF not really\n")
        _set(top / "bin" / name, 0, gid, mode)
    (top / "bin/ping").write_bytes(b"ping\n")
    os.chmod(top / "bin/ping", 0o755)
    sh("setcap", "cap_net_raw+ep", str(top / "bin/ping"))
    _set(top / "tmp", mode=0o1777)
    os.setxattr(top / "shared", "system.posix_acl_default", posix_acl(7, 5, 0, groups={5678: 7}))
    (top / "data/a").write_bytes(b"one inode, two names\n")
    os.link(top / "data/a", top / "data/b")
    _set(top / "data/a", 1234, 5678, 0o600)
    with open(top / "data/sparse", "wb") as f:
        f.truncate(GiB)
        f.seek(512 * MiB)
        f.write(os.urandom(MiB))
    os.mkfifo(top / "run/fifo", 0o620)
    _set(top / "run/fifo", 1234, 5678)
    os.mknod(top / "run/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(top / "run/null", 0o666)
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(Path(dirpath) / name, ns=(STAMP - 7, STAMP), follow_symlinks=False)
        os.utime(dirpath, ns=(STAMP - 7, STAMP + 1))


@dataclass(frozen=True)
class Guest:
    source: Path  # the tree on this host, as it went into the image
    raws: dict[str, Path]  # fs type -> raw disk image (a bare filesystem)
    victim: Path


def rsync_differences(source: Path, copy: Path, *options: str) -> list[str]:
    """rsync's itemized differences between two trees (empty: identical)."""
    out = sh(
        "rsync", "-naHAXS", "--numeric-ids", "--itemize-changes", *options,
        f"{source}/", f"{copy}/",
    )  # fmt: skip
    return [line for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Guest:
    work = tmp_path_factory.mktemp("guest")
    victim = work / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"host file\n")
    source = work / "source"
    build_guest_tree(source / "tree", victim)
    os.utime(source, ns=(STAMP, STAMP))
    raws = {}
    for fs in ("ext4", "xfs"):
        raw = work / f"{fs}.raw"
        with open(raw, "wb") as f:
            f.truncate(48 * MiB)
        if fs == "ext4":
            sh("mkfs.ext4", "-q", "-F", "-I", "256", str(raw))
        else:
            sh("mkfs.xfs", "-q", "-f", str(raw), env=XFS_ENV)
        mnt = work / f"{fs}.mnt"
        mnt.mkdir()
        sh("mount", "-o", "loop", str(raw), str(mnt))
        try:
            sh("rsync", "-aHAXSU", "--numeric-ids", f"{source}/", f"{mnt}/")  # U: atimes too
            # xfs shows root its own copy of an ACL as trusted.SGI_ACL_* beside
            # system.posix_acl_*: not the guest's data (the restore leaves it out too)
            assert rsync_differences(source, mnt, "--filter=-x trusted.SGI_ACL_*") == []
        finally:
            sh("umount", str(mnt))
        raws[fs] = raw
    return Guest(source, raws, victim)


def _mounted(restore: Env, raw: Path) -> int:
    return _mount(restore, raw)[0]


def _mount(restore: Env, raw: Path) -> tuple[int, Path]:
    """A restore mount of the point backed up from ``raw``: its id and where its one
    filesystem is mounted on this host."""
    point = backup_chain(
        restore.catalog, restore.repo, [raw], now=restore.clock.now(), vm=raw.stem
    ).full_id
    view = restore.service.mount(point)
    assert [(f.name, f.state) for f in view.filesystems] == [("disk", "mounted")]
    return view.id, Path(str(view.filesystems[0].path))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree_of(path: Path) -> dict[str, tuple[int, int, int]]:
    """(mode, size, mtime_ns) of everything under ``path``, links not followed."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            info = os.lstat(Path(dirpath) / name)
            found[os.path.relpath(Path(dirpath) / name, path)] = (
                info.st_mode,
                info.st_size,
                info.st_mtime_ns,
            )
    return found


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_extract_gives_back_exactly_what_the_guest_had(env: Env, guest: Guest, fs: str) -> None:  # noqa: F811
    passwd = host_passwd_lines()
    victim_before = _tree_of(guest.victim)
    mount_id, mounted = _mount(env, guest.raws[fs])
    dest = env.tmp / "restored"
    result = env.service.extract(mount_id, ["disk/tree"], dest, specials=True)

    assert result.skipped == []
    # access times first (reading the files below changes them); rsync compares neither
    # atimes nor nanoseconds
    for name in ("home/ann/notes", "data/sparse", "etc/rel", "home"):
        restored = os.lstat(dest / "tree" / name)
        backed_up = os.lstat(mounted / "tree" / name)
        assert (restored.st_atime_ns, restored.st_mtime_ns) == (
            backed_up.st_atime_ns,
            backed_up.st_mtime_ns,
        ), name
    assert os.lstat(dest / "tree/home/ann/notes").st_mtime_ns == STAMP  # to the nanosecond
    assert rsync_differences(guest.source / "tree", dest / "tree") == []
    assert (result.files, result.hardlinks, result.specials) == (6, 1, 2)
    assert (result.directories, result.symlinks) == (11, 5)
    assert result.bytes == result.bytes_total
    # a folder the restore creates is root's alone: it holds setuid files and other
    # users' files; the result says so
    info = os.stat(dest)
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o700, 0)
    assert result.destination_created and "0700" in result.note
    # the 1 GiB file with 1 MiB of data is not 1 GiB on the appliance's disk
    sparse = os.stat(dest / "tree/data/sparse")
    assert sparse.st_size == GiB and sparse.st_blocks * 512 < 8 * MiB
    assert _sha(dest / "tree/data/sparse") == _sha(guest.source / "tree/data/sparse")
    # the links themselves
    assert os.readlink(dest / "tree/etc/passwd-link") == "/etc/passwd"
    assert os.readlink(dest / "tree/x/home") == str(guest.victim)
    # no link was written through: the appliance's and the host folder's files are as they were
    assert host_passwd_kept(passwd)
    assert _tree_of(guest.victim) == victim_before
    assert not list(dest.rglob(".sendense-*"))


def test_without_specials_they_are_listed_as_not_restored(env: Env, guest: Guest) -> None:  # noqa: F811
    mount_id = _mounted(env, guest.raws["ext4"])
    dest = env.tmp / "restored"
    result = env.service.extract(mount_id, ["disk/tree/run", "disk/tree/data"], dest)
    assert {path for path, _ in result.skipped} == SPECIALS
    reasons = dict(result.skipped)
    assert "a fifo" in reasons["run/fifo"] and "--specials" in reasons["run/fifo"]
    assert "a character device" in reasons["run/null"]
    assert result.specials == 0 and not (dest / "run/fifo").exists()
    differences = rsync_differences(guest.source / "tree/run", dest / "run")
    assert {line.split()[-1] for line in differences} == {"fifo", "null"}
    # each only missing ("c" created, "+" all new): nothing else differs
    assert sorted(line.split()[0] for line in differences) == ["cD+++++++++", "cS+++++++++"]
    assert rsync_differences(guest.source / "tree/data", dest / "data") == []


def test_owner_gives_everything_to_one_user_without_privileges(env: Env, guest: Guest) -> None:  # noqa: F811
    mount_id = _mounted(env, guest.raws["ext4"])
    dest = env.tmp / "for-nobody"
    result = env.service.extract(mount_id, ["disk/tree"], dest, specials=True, owner="nobody")
    ids = (NOBODY.pw_uid, NOBODY.pw_gid)
    assert result.owner == f"{ids[0]}:{ids[1]}" and "without setuid" in result.note
    # a device node given to a user would open the appliance's devices to them
    assert dict(result.skipped).keys() == {"tree/run/null"}
    info = os.stat(dest)
    assert ((info.st_uid, info.st_gid), stat.S_IMODE(info.st_mode)) == (ids, 0o700)
    for dirpath, dirnames, filenames in os.walk(dest / "tree"):
        for name in [*dirnames, *filenames]:
            item = os.lstat(Path(dirpath) / name)
            assert (item.st_uid, item.st_gid) == ids, name
            assert not item.st_mode & (stat.S_ISUID | stat.S_ISGID), name
    assert stat.S_IMODE(os.stat(dest / "tree/bin/su").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(dest / "tree/tmp").st_mode) == 0o1777  # sticky is no privilege
    assert "security.capability" not in os.listxattr(dest / "tree/bin/ping")
    assert os.getxattr(dest / "tree/home/ann/notes", "user.origin") == b"guest"
    assert os.readlink(dest / "tree/etc/localtime") == "/usr/share/zoneinfo/Etc/UTC"
    assert (dest / "tree/run/fifo").is_fifo()


def test_a_planted_link_in_an_existing_destination_is_not_written_through(
    env: Env,  # noqa: F811
    guest: Guest,
) -> None:
    """An existing destination whose names are links to elsewhere (at the top, inside,
    and one a restored link made earlier) gets no write through any of them."""
    mount_id = _mounted(env, guest.raws["ext4"])
    outside = env.tmp / "outside"
    (outside / "top").mkdir(parents=True)
    (outside / "inner").mkdir()
    (outside / "file").write_bytes(b"outside file\n")
    dest = env.tmp / "existing"
    dest.mkdir(mode=0o755)
    os.chmod(dest, 0o755)
    os.symlink(outside / "top", dest / "tree")  # at the top: the selection's own name
    (dest / "home").mkdir()
    os.symlink(outside / "inner", dest / "home" / "ann")  # inside: where a folder goes
    (dest / "data").mkdir()
    os.symlink(outside / "file", dest / "data" / "a")  # where a file goes
    passwd = host_passwd_lines()
    before = _tree_of(outside)

    result = env.service.extract(mount_id, ["disk/tree"], dest, specials=True)
    assert [p for p, _ in result.skipped] == ["tree"]
    assert "not written through" in dict(result.skipped)["tree"]
    assert not result.destination_created and "already existed" in result.note
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o755  # the operator's folder, as it was

    result = env.service.extract(mount_id, ["disk/tree/home"], dest, overwrite=True)
    assert [p for p, _ in result.skipped] == ["home/ann"]
    assert "not written through" in dict(result.skipped)["home/ann"]

    # overwrite replaces the planted link by the file; it does not write through it
    result = env.service.extract(mount_id, ["disk/tree/data"], dest, overwrite=True)
    assert result.skipped == []
    assert (dest / "data/a").read_bytes() == b"one inode, two names\n"
    assert not (dest / "data/a").is_symlink()
    assert os.path.samefile(dest / "data/a", dest / "data/b")

    # a link restored first, named like a folder restored after it: the folder is refused
    again = env.tmp / "again"
    result = env.service.extract(mount_id, ["disk/tree/x/home", "disk/tree/home"], again)
    assert os.readlink(again / "home") == str(guest.victim)
    assert [p for p, _ in result.skipped] == ["home"]

    assert _tree_of(outside) == before
    assert (outside / "file").read_bytes() == b"outside file\n"
    assert host_passwd_kept(passwd)
    assert list((guest.victim).iterdir()) == [guest.victim / "keep"]


# -- the CLI -------------------------------------------------------------------


@pytest.fixture
def cli_mount(tmp_path: Path, guest: Guest) -> Iterator[tuple[Path, str]]:
    """A mount of the ext4 guest made by `sendense restore mount` (state dir, mount id)."""
    from engine.catalog import Catalog
    from engine.clock import FixedClock
    from engine.config import sqlite_url

    state = tmp_path / "state"
    catalog = Catalog(sqlite_url(state / "catalog.db")).open()
    (tmp_path / "repo").mkdir()
    try:
        point = backup_chain(
            catalog, tmp_path / "repo", [guest.raws["ext4"]], now=FixedClock().now()
        ).full_id
    finally:
        catalog.dispose()
    mounted = sendense(state, "restore", "mount", str(point), "--json")
    assert mounted.returncode == 0, mounted.stderr
    mount_id = str(json.loads(mounted.stdout)["id"])
    try:
        yield state, mount_id
    finally:
        sendense(state, "restore", "unmount", mount_id)


def sendense(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def test_cli_extract_counts_and_exit_codes(
    tmp_path: Path, guest: Guest, cli_mount: tuple[Path, str]
) -> None:
    """--specials restores everything (exit 0, the counts in --json); without it the
    fifo and the device are listed and the command exits 1; --owner USER works."""
    state, mount_id = cli_mount
    full = sendense(
        state, "restore", "extract", mount_id, "disk/tree", "--to", str(tmp_path / "all"),
        "--specials", "--json",
    )  # fmt: skip
    assert full.returncode == 0, full.stderr
    shown = json.loads(full.stdout)
    counts = {k: shown[k] for k in ("files", "directories", "symlinks", "hardlinks", "specials")}
    assert counts == {"files": 6, "directories": 11, "symlinks": 5, "hardlinks": 1, "specials": 2}
    assert shown["not_restored"] == [] and shown["destination_created"] is True
    assert isinstance(shown["job_id"], int)
    assert rsync_differences(guest.source / "tree", tmp_path / "all" / "tree") == []

    partial = sendense(
        state, "restore", "extract", mount_id, "disk/tree/run", "--to", str(tmp_path / "some")
    )
    assert partial.returncode == 1
    assert "not restored run/fifo: a fifo" in partial.stdout
    assert "not restored run/null: a character device" in partial.stdout
    assert "0700" in partial.stdout  # the note about the folder it created
    assert "2 items asked for were not restored" in partial.stderr

    owned = sendense(
        state, "restore", "extract", mount_id, "disk/tree/bin", "--to", str(tmp_path / "mine"),
        "--owner", "nobody", "--json",
    )  # fmt: skip
    assert owned.returncode == 0, owned.stderr
    assert os.stat(tmp_path / "mine" / "bin" / "su").st_uid == NOBODY.pw_uid
    assert stat.S_IMODE(os.stat(tmp_path / "mine" / "bin" / "su").st_mode) == 0o755

    unknown = sendense(
        state, "restore", "extract", mount_id, "disk/tree", "--to", str(tmp_path / "no"),
        "--owner", "no-such-user-here",
    )  # fmt: skip
    assert unknown.returncode == 2 and "no user 'no-such-user-here'" in unknown.stderr
    assert not (tmp_path / "no").exists()


def test_a_file_too_large_for_the_destination_is_listed_and_the_rest_restored(
    env: Env,  # noqa: F811
) -> None:
    """An xfs guest may hold a sparse file larger than ext4 allows (16 TiB): that one
    item is listed as not restored, with no partial file left, and the rest comes back."""
    raw = env.tmp / "huge.raw"
    with open(raw, "wb") as f:
        f.truncate(48 * MiB)
    sh("mkfs.xfs", "-q", "-f", str(raw), env=XFS_ENV)
    mnt = env.tmp / "huge.mnt"
    mnt.mkdir()
    sh("mount", "-o", "loop", str(raw), str(mnt))
    try:
        (mnt / "x").mkdir()
        with open(mnt / "x/huge", "wb") as f:
            f.write(b"head")
            f.truncate(20 * 1024 * GiB)
        (mnt / "x/small").write_bytes(b"small\n")
    finally:
        sh("umount", str(mnt))
    mount_id = _mounted(env, raw)
    dest = env.tmp / "restored"  # on this host's ext4
    if os.statvfs(env.tmp).f_bsize != 4096:
        pytest.skip("the test's destination is not a 4 KiB-block filesystem (ext4's 16 TiB)")
    result = env.service.extract(mount_id, ["disk/x"], dest)
    assert result.skipped == [("x/huge", "too large for the destination's filesystem")]
    assert (dest / "x/small").read_bytes() == b"small\n"
    assert sorted(p.name for p in (dest / "x").iterdir()) == ["small"]
