"""Download instead of restore: ``sendense restore extract MOUNT PATHS --tar FILE|-`` and
``--zip FILE`` on a real backup of a guest ext4 filesystem that holds what a Debian
guest holds: absolute and relative links (one to /etc/passwd, one far above the
filesystem), files of uid 1234/gid 5678, a setuid file, a sticky folder, a hard-link
pair, user.* xattrs, a POSIX ACL, a file capability, a 1 GiB sparse file with 1 MiB
of data, a fifo and a character device.

The tar is checked by GNU tar itself (its listing, and extracting it compared with
``rsync -naHAXS --numeric-ids`` against the guest's own filesystem: no difference);
the zip by Python's zipfile. As an attacker would: links are archived as links and
their targets never read (no byte of the appliance's /etc/passwd in any archive),
paths out of the mount are refused, a reader that hangs up gets a sentence, and no
file with backup content appears on the appliance outside the named output."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from engine.catalog import Catalog
from engine.clock import SYSTEM_CLOCK
from engine.config import default_settings, sqlite_url
from engine.events import EventBus
from engine.services.file_restore import FileRestoreService, teardown_dir
from engine.services.restore_archive import acl_text
from sendense_api.routes._archives import stream_archive
from sendense_tui.cli import main
from tests.engine.fsimages import (
    backup_chain,
    host_passwd_kept,
    host_passwd_lines,
    loops_on,
    mounts_under,
    sh,
)

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
GiB = 1024 * MiB
#: a line no file of the guest holds, from the appliance's own /etc/passwd
with open("/etc/passwd", "rb") as _f:
    HOST_SECRET = _f.read().splitlines()[0]
#: bytes only the guest's files hold: a search for them finds backup content
MARKER = hashlib.sha256(b"sendense archive marker").hexdigest().encode() * 4
U = 0xFFFFFFFF  # the id field of an ACL entry without one


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A system.posix_acl_* value (what setfacl writes): version 2, (tag, perm, id)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def populate_guest(top: Path) -> None:
    """What the guest holds, written with the real calls (chown, setxattr, setcap…),
    under a umask of 022 whatever an earlier test in this worker left (the CLI run
    in-process sets 077): the modes below are asserted as a guest's would be."""
    previous = os.umask(0o022)
    try:
        _populate(top)
    finally:
        os.umask(previous)


def _populate(top: Path) -> None:
    tree = top / "tree"
    (tree / "etc" / "ssl").mkdir(parents=True)
    (tree / "etc" / "hostname").write_bytes(b"web01\n" + MARKER)
    os.symlink("/etc/passwd", tree / "etc" / "passwd-link")
    os.symlink("../../../../../../..", tree / "etc" / "ssl" / "up")
    os.symlink("../hostname", tree / "etc" / "ssl" / "rel")
    (tree / "home").mkdir()
    (tree / "home" / "owned").write_bytes(b"mine\n")
    os.chown(tree / "home" / "owned", 1234, 5678)
    os.chown(tree / "home", 1234, 5678)
    (tree / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(tree / "suid", 0o4755)
    (tree / "sgid-dir").mkdir()
    os.chmod(tree / "sgid-dir", 0o2770)
    (tree / "sticky").mkdir()
    os.chmod(tree / "sticky", 0o1777)
    (tree / "hard1").write_bytes(b"one inode, two names\n")
    os.link(tree / "hard1", tree / "etc" / "hard2")
    (tree / "xattr").write_bytes(b"x")
    os.setxattr(tree / "xattr", "user.note", b"hello")
    os.setxattr(tree / "xattr", "user.binary", b"\x00\xff\x01")
    (tree / "acl").write_bytes(b"a")
    os.setxattr(
        tree / "acl",
        "system.posix_acl_access",
        acl((1, 6, U), (2, 4, 1234), (4, 4, U), (0x10, 4, U), (0x20, 4, U)),
    )
    (tree / "acldir").mkdir()
    os.setxattr(
        tree / "acldir",
        "system.posix_acl_default",
        acl((1, 7, U), (2, 5, 1234), (4, 5, U), (0x10, 5, U), (0x20, 5, U)),
    )
    (tree / "cap").write_bytes(b"c")
    sh("setcap", "cap_net_raw+ep", str(tree / "cap"))
    with open(tree / "sparse", "wb") as f:
        f.truncate(GiB)
        f.seek(300 * MiB)
        f.write(os.urandom(MiB))
    os.mkfifo(tree / "fifo")
    os.mknod(tree / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.utime(tree / "home" / "owned", ns=(1_600_000_000_123456789, 1_700_000_000_987654321))


@dataclass
class Guest:
    service: FileRestoreService
    mount_id: int
    state: Path
    #: the guest's filesystem itself, mounted read-only: what rsync compares against
    source: Path
    tmp: Path


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    tmp = tmp_path_factory.mktemp("archive")
    raw = tmp / "guest.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
    sh("mkfs.ext4", "-q", "-F", str(raw))
    source = tmp / "source"
    source.mkdir()
    sh("mount", "-o", "loop", str(raw), str(source))
    try:
        populate_guest(source)
    finally:
        sh("umount", str(source))
    state = tmp / "state"
    catalog = Catalog(sqlite_url(state / "catalog.db")).open()
    (tmp / "repo").mkdir()
    clock = SYSTEM_CLOCK  # the CLI processes reap a mount whose expiry passed by their clock
    point = backup_chain(catalog, tmp / "repo", [raw], now=clock.now()).full_id
    service = FileRestoreService(
        catalog, EventBus(None, clock), default_settings(state), clock=clock
    )
    # detached: the CLI processes of the tests use it as a mount made by `restore mount`
    view = service.mount(point, ttl=timedelta(days=2), detached=True)
    sh("mount", "-o", "ro,loop,noload", str(raw), str(source))
    try:
        yield Guest(service, view.id, state, source, tmp)
    finally:
        sh("umount", str(source))
        try:
            service.unmount(view.id)
        finally:
            for base in (state / "restore").iterdir() if (state / "restore").is_dir() else ():
                teardown_dir(base, None)
            catalog.dispose()
        assert mounts_under(tmp) == [] and loops_on(tmp) == []


def sendense(
    guest: Guest, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[bytes]:
    """The real command in its own process (stdout is bytes: the archive)."""
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(guest.state), *args],
        capture_output=True,
        timeout=300,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def gnu_tar(*args: str) -> str:
    return sh("tar", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner", *args)


def tar_listing(archive: Path) -> dict[str, str]:
    """name -> its line in ``tar -tvf`` (GNU tar's own reading of the archive)."""
    lines = gnu_tar("-tvf", str(archive)).splitlines()
    found: dict[str, str] = {}
    for line in lines:
        match = re.search(r" (tree/\S*?)/?(?: -> | link to |$)", line)
        assert match, line
        found[match.group(1)] = line
    return found


def test_tar_to_stdout_is_what_gnu_tar_and_rsync_see(guest: Guest) -> None:
    passwd = host_passwd_lines()
    done = sendense(guest, "restore", "extract", str(guest.mount_id), "disk/tree", "--tar", "-")
    assert done.returncode == 0, done.stderr
    assert b"archived 8 files, 7 folders, 3 links, 1 hard link, 2 special files" in done.stderr
    assert b"Traceback" not in done.stderr
    assert b"archived " not in done.stdout[-64 * 1024 :]  # the summary is not in the stream
    assert HOST_SECRET not in done.stdout  # /etc/passwd was archived as a link, not read
    assert len(done.stdout) < 4 * MiB  # the 1 GiB sparse file: its 1 MiB of data only
    archive = guest.tmp / "stdout.tar"
    archive.write_bytes(done.stdout)

    listing = tar_listing(archive)
    assert " 1234/5678 " in listing["tree/home/owned"] and " 1234/5678 " in listing["tree/home"]
    assert listing["tree/suid"].startswith("-rwsr-xr-x ")
    assert listing["tree/sgid-dir"].startswith("drwxrws--- ")
    assert listing["tree/sticky"].startswith("drwxrwxrwt ")
    assert listing["tree/etc/passwd-link"].endswith(" -> /etc/passwd")
    assert listing["tree/etc/ssl/up"].endswith(" -> ../../../../../../..")
    assert listing["tree/etc/ssl/rel"].endswith(" -> ../hostname")
    # the second name of the pair is a hard-link entry pointing at the first
    assert listing["tree/hard1"].endswith(" link to tree/etc/hard2")
    assert listing["tree/acl"].startswith("-rw-r--r--+ ")
    assert listing["tree/acldir"].startswith("drwxr-xr-x+ ")
    assert listing["tree/fifo"].startswith("p") and listing["tree/null"].startswith("c")
    assert " 1073741824 " in listing["tree/sparse"]

    out = guest.tmp / "from-stdout"
    out.mkdir()
    gnu_tar("-xpf", str(archive), "-C", str(out))
    differences = sh(
        "rsync", "-naHAXS", "--numeric-ids", "-i", f"{guest.source}/tree/", f"{out}/tree/"
    )
    assert differences == ""
    assert (out / "tree" / "home" / "owned").stat().st_mtime_ns == 1_700_000_000_987654321
    assert os.getxattr(out / "tree" / "cap", "security.capability") == os.getxattr(
        guest.source / "tree" / "cap", "security.capability"
    )
    sparse = (out / "tree" / "sparse").stat()
    assert sparse.st_size == GiB and sparse.st_blocks * 512 < 8 * MiB
    assert host_passwd_kept(passwd)
    shutil.rmtree(out)


def test_zstd_file_and_the_api_stream_hold_the_same_archive(guest: Guest) -> None:
    target = guest.tmp / "etc.tar.zst"
    done = sendense(
        guest, "restore", "extract", str(guest.mount_id), "disk/tree", "--tar", str(target)
    )
    assert done.returncode == 0, done.stderr
    assert b"as tar.zst into " + str(target).encode() in done.stdout
    assert target.stat().st_mode & 0o777 == 0o600  # it holds backed-up files: root only
    plain = guest.tmp / "etc-from-zst.tar"
    plain.write_bytes(sh_bytes("zstd", "-dc", str(target)))
    with tarfile.open(plain) as cli_tar:
        cli_names = cli_tar.getnames()
    assert "tree/etc/passwd-link" in cli_names and "tree/sparse" in cli_names
    assert "tree/hard1" in tar_listing(plain)  # GNU tar reads the decompressed stream

    again = sendense(
        guest, "restore", "extract", str(guest.mount_id), "disk/tree", "--tar", str(target)
    )
    assert again.returncode == 2 and b"already exists" in again.stderr

    # what the HTTP API streams for the same folder (its route's writer, same engine)
    def write(sink: object) -> object:
        return guest.service.archive(guest.mount_id, ["disk/tree"], sink, kind="tar")  # type: ignore[arg-type]

    streamed = b"".join(stream_archive("tar", write))  # type: ignore[arg-type]
    with tarfile.open(fileobj=io.BytesIO(streamed)) as api_tar:
        assert api_tar.getnames() == cli_names
        owned = api_tar.getmember("tree/home/owned")
        assert (owned.uid, owned.gid) == (1234, 5678)


def sh_bytes(*args: str) -> bytes:
    return subprocess.run(list(args), capture_output=True, timeout=120, check=True).stdout


def test_zip_keeps_links_and_lists_what_it_cannot_carry(guest: Guest) -> None:
    target = guest.tmp / "for-windows.zip"
    paths = ["disk/tree/etc", "disk/tree/home", "disk/tree/xattr", "disk/tree/fifo"]
    done = sendense(
        guest, "restore", "extract", str(guest.mount_id), *paths, "--zip", str(target), "--json"
    )
    # a fifo was asked for and zip cannot hold it: not everything was archived
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["skipped"] == [
        {"path": "fifo", "reason": "a fifo: zip cannot hold one (a tar archive can)"}
    ]
    lost = {item["path"]: item["what"] for item in result["not_carried"]}
    assert "user.binary, user.note" in lost["xattr"]
    assert "1 item asked for was not archived" in done.stderr.decode()
    with zipfile.ZipFile(target) as archive:
        assert archive.testzip() is None
        infos = {i.filename: i for i in archive.infolist()}
        link = infos["etc/passwd-link"]
        assert (link.external_attr >> 16) & 0o170000 == 0o120000
        assert archive.read(link) == b"/etc/passwd"
        assert archive.read("etc/ssl/up") == b"../../../../../../.."
        assert archive.read("etc/hostname").startswith(b"web01\n")
        assert infos["home/owned"].date_time == (2023, 11, 14, 22, 13, 20)
        assert b"\x75\x78" in infos["home/owned"].extra  # the Info-ZIP owner field
        assert HOST_SECRET not in target.read_bytes()


def test_a_reader_that_hangs_up_gets_a_sentence(guest: Guest) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(guest.state),
         "restore", "extract", str(guest.mount_id), "disk/tree", "--tar", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(1024)) == 1024
    proc.stdout.close()  # what `| head -c 1024` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "stopped before its end" in err
    assert "Traceback" not in err and "Exception ignored" not in err


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("disk/tree/../../..", "'..'"),
        ("/etc/passwd", "no filesystem 'etc'"),
        ("disk/tree/etc/ssl/up/etc/passwd", "symbolic link"),
        ("disk/tree/missing", "does not exist"),
    ],
)
def test_paths_out_of_the_mount_are_refused(
    guest: Guest, path: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = guest.tmp / "refused.tar"
    state = str(guest.state)
    code = main(
        [
            "--state-dir",
            state,
            "restore",
            "extract",
            str(guest.mount_id),
            path,
            "--tar",
            str(target),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err and "Traceback" not in err
    assert not target.exists()


def _files_holding(marker: bytes, top: Path, since: float, *, deep: bool = True) -> list[str]:
    """Regular files under ``top`` changed since ``since`` holding ``marker``, on the
    top's own filesystem (the restore mount's FUSE disk and filesystems inside the
    state directory are not files the archive made)."""
    device = os.lstat(top).st_dev
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [
            d for d in dirnames if deep and os.lstat(os.path.join(dirpath, d)).st_dev == device
        ]
        for name in filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if info.st_dev != device or not stat.S_ISREG(info.st_mode) or info.st_mtime < since:
                continue
            with open(path, "rb") as f:
                if marker in f.read(64 * MiB):
                    found.append(path)
    return found


def test_no_backup_content_lands_on_the_appliance_but_the_output(guest: Guest) -> None:
    """The command runs with its own working folder, HOME and TMPDIR (where anything a
    library spools would go): after a file and a stream download, the backed-up bytes
    are in the named output and nowhere else there, in the state directory, or at the
    top of /tmp and /var/tmp."""
    since = time.time() - 1
    appliance = guest.tmp / "appliance"
    for sub in ("cwd", "home", "tmp"):
        (appliance / sub).mkdir(parents=True)
    env = {**os.environ, "HOME": str(appliance / "home"), "TMPDIR": str(appliance / "tmp")}
    target = guest.tmp / "only-here.tar"
    mount = str(guest.mount_id)
    done = sendense(
        guest, "restore", "extract", mount, "disk/tree/etc", "--tar", str(target),
        env=env, cwd=appliance / "cwd",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    streamed = sendense(
        guest, "restore", "extract", mount, "disk/tree/etc", "--tar", "-",
        env=env, cwd=appliance / "cwd",
    )  # fmt: skip
    assert MARKER in streamed.stdout and MARKER in target.read_bytes()
    holding = _files_holding(MARKER, guest.state, since) + _files_holding(MARKER, appliance, since)
    for shared in (Path("/tmp"), Path("/var/tmp")):
        holding += _files_holding(MARKER, shared, since, deep=False)
    assert holding == []
    # and the search does find backed-up bytes where they are
    assert str(target) in _files_holding(MARKER, guest.tmp, since, deep=False)


def test_acl_text_is_what_gnu_tar_stores() -> None:
    raw = acl((1, 6, U), (2, 4, 1234), (4, 4, U), (8, 5, 42), (0x10, 5, U), (0x20, 0, U))
    assert acl_text(raw) == (
        "user::rw-\nuser:1234:r--\ngroup::r--\ngroup:42:r-x\nmask::r-x\nother::---\n"
    )
    assert acl_text(b"\x02\x00\x00\x00\x99") is None  # not an ACL: kept as the raw xattr only


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--zip", "-"], "a zip archive is written into a file"),
        (["--zip", "/nowhere/x.zip", "--zstd"], "--zstd compresses a tar archive"),
        (["--tar", "x.tar", "--to", "/srv"], "not allowed with argument"),
        (["--tar", "x.tar", "--owner", "ann"], "--owner applies to a restore into a folder"),
        (["--zip", "x.zip", "--specials"], "--specials applies to a restore into a folder"),
    ],
)
def test_archive_options_that_cannot_work_are_refused(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) if "--to" in args else contextlib.nullcontext():
        code = main(["--state-dir", str(tmp_path), "restore", "extract", "1", "p1/etc", *args])
        assert code == 2
    assert says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before anything was opened or made
