"""File-level restore of Windows guests (NTFS through ntfs-3g) and of LVM volumes
inside a guest's disk, on real images: mkntfs, pvcreate/vgcreate/vgcfgrestore,
QCOW2 points, qemu-storage-daemon's FUSE export, read-only loop devices.

The guest's volume group is never activated on this machine: a volume in one piece
is an offset loop device, a volume in several pieces a device-mapper table of ours
(those tests skip, saying why, where the kernel has no device-mapper)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.catalog import Catalog
from engine.clock import FixedClock
from engine.config import default_settings, sqlite_url
from engine.events import EventBus
from engine.services.file_restore import FileRestoreError, FileRestoreService, teardown_dir
from engine.services.guest_volumes import dm_prefix, volume_name
from engine.tools import lvm
from engine.tools.mounts import NTFS_XATTRS
from tests.engine.fsimages import (
    MTIME,
    Content,
    MiB,
    Part,
    _copy_into,
    backup_chain,
    build_disk,
    loops_on,
    mounts_under,
    processes_mentioning,
    sh,
)
from tests.engine.lvmimages import Volume, build_lvm_disk

pytestmark = pytest.mark.root

UNICODE_NAME = "Résumé Ünïcødé ✓ 日本.txt"
NTFS_FILES = {
    f"Users/Ann/Documents/{UNICODE_NAME}": b"bonjour\n" * 100,
    "Users/Ann/Documents/Deep/er/notes.txt": b"nested\n",
    "Windows/System32/drivers/etc/hosts": b"127.0.0.1 localhost\r\n",
}
KNOWN_MTIME = MTIME + 12_345
ZONE = b"[ZoneTransfer]\r\nZoneId=3\r\n"

needs_ntfs = pytest.mark.skipif(
    shutil.which("ntfs-3g") is None or shutil.which("mkntfs") is None,
    reason="ntfs-3g is not installed (scripts/install-system-packages.sh installs it)",
)


def _dm_reason() -> str | None:
    if shutil.which("dmsetup") is None:
        return "dmsetup is not installed"
    return lvm.dm_missing()


GuestEnv = tuple[Catalog, FileRestoreService, FixedClock, Path]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[GuestEnv]:
    catalog = Catalog(sqlite_url(tmp_path / "catalog.db")).open()
    clock = FixedClock()
    service = _service(catalog, clock, tmp_path)
    (tmp_path / "repo").mkdir()
    try:
        yield catalog, service, clock, tmp_path
    finally:
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


def _service(catalog: Catalog, clock: FixedClock, tmp: Path) -> FileRestoreService:
    settings = default_settings(tmp / "state")
    return FileRestoreService(catalog, EventBus(None, clock), settings, clock=clock)


# -- NTFS ------------------------------------------------------------------------------


def _ntfs_image(path: Path, size_mb: int, files: dict[str, bytes], hiberfil: bytes = b"") -> None:
    """An NTFS filesystem image made by mkntfs and written through ntfs-3g."""
    with open(path, "wb") as f:
        f.truncate(size_mb * MiB)
    sh("mkntfs", "-q", "-F", "-Q", "-L", "WinData", str(path))
    mnt = Path(tempfile.mkdtemp(dir=path.parent, prefix="ntfs-"))
    sh("ntfs-3g", "-o", "streams_interface=xattr", str(path), str(mnt))
    try:
        for rel, data in files.items():
            target = mnt / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            # an alternate data stream, as Windows marks a downloaded file
            os.setxattr(target, "user.Zone.Identifier", ZONE)
            os.utime(target, (KNOWN_MTIME, KNOWN_MTIME))
        if hiberfil:
            (mnt / "hiberfil.sys").write_bytes(hiberfil)
    finally:
        sh("umount", str(mnt))
    mnt.rmdir()


def _ntfs_disk(tmp: Path, name: str, hiberfil: bytes = b"") -> Path:
    """A GPT disk: an ext4 boot-like partition, then the NTFS volume."""
    disk = build_disk(
        tmp / f"{name}.raw", [Part("ext4", 8, {"boot.txt": b"boot\n"}), Part(None, 24)]
    )
    image = tmp / f"{name}.ntfs"
    _ntfs_image(image, 24, NTFS_FILES, hiberfil)
    _copy_into(image, disk, MiB + 8 * MiB)
    image.unlink()
    sh("sfdisk", "-q", "--part-type", str(disk), "2", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")
    return disk


@needs_ntfs
def test_ntfs_volume_browses_and_extracts_with_names_times_and_acl(env: GuestEnv) -> None:
    catalog, service, clock, tmp = env
    disk = _ntfs_disk(tmp, "win")
    point = backup_chain(catalog, tmp / "repo", [disk], now=clock.now(), vm="win01").full_id
    view = service.mount(point)
    by_name = {f.name: f for f in view.filesystems}
    assert by_name["p2"].fs_type == "ntfs" and by_name["p2"].state == "mounted"
    assert by_name["p2"].label == "WinData" and by_name["p2"].detail == ""
    mounted = Path(by_name["p2"].path or "")
    # read-only through ntfs-3g (FUSE), nothing of it executable or world-writable
    info = next(m for m in _mountinfo() if m[0] == str(mounted))
    assert info[1] == "fuseblk" and "ro" in info[2].split(",")
    top = {e.name: e for e in service.ls(view.id)}
    assert top["p2"].detail == "ntfs"

    docs = {e.name: e for e in service.ls(view.id, "p2/Users/Ann/Documents")}
    assert set(docs) == {UNICODE_NAME, "Deep"}
    assert docs[UNICODE_NAME].kind == "file" and docs[UNICODE_NAME].size == 800
    mtime = docs[UNICODE_NAME].mtime
    assert mtime is not None and mtime.timestamp() == KNOWN_MTIME
    inside = mounted / "Users/Ann/Documents" / UNICODE_NAME
    assert os.stat(inside).st_mode & 0o7777 == 0o644
    # the security descriptor and DOS attributes are there, by name, for archives
    for name in NTFS_XATTRS:
        assert os.getxattr(inside, name), name
    # alternate data streams are plain user.* xattrs (what extraction copies)
    assert os.listxattr(inside) == ["user.Zone.Identifier"]
    assert os.getxattr(inside, "user.Zone.Identifier") == ZONE
    acl = os.getxattr(inside, "system.ntfs_acl")
    assert acl[0] == 1  # a self-relative SECURITY_DESCRIPTOR, revision 1

    out = tmp / "out"
    result = service.extract(view.id, ["p2/Users/Ann/Documents"], out)
    assert result.files == 2 and result.skipped == []
    got = out / "Documents" / UNICODE_NAME
    assert got.read_bytes() == NTFS_FILES[f"Users/Ann/Documents/{UNICODE_NAME}"]
    assert os.stat(got).st_mtime == KNOWN_MTIME
    assert (out / "Documents/Deep/er/notes.txt").read_bytes() == b"nested\n"
    # an archive carries what a folder on the appliance cannot: the NTFS ACL and
    # attributes ntfs-3g holds without listing them, as pax xattr records
    stream = io.BytesIO()
    service.archive(view.id, ["p2/Users/Ann/Documents"], stream, kind="tar")
    stream.seek(0)
    with tarfile.open(fileobj=stream) as tar:
        member = tar.getmember(f"Documents/{UNICODE_NAME}")
        assert tar.extractfile(member).read() == got.read_bytes()  # type: ignore[union-attr]
    headers = member.pax_headers
    assert headers["SCHILY.xattr.user.Zone.Identifier"].encode("utf-8", "surrogateescape") == ZONE
    for name in NTFS_XATTRS:
        assert f"SCHILY.xattr.{name}" in headers, name
    service.unmount(view.id)
    assert mounts_under(tmp / "state") == [] and loops_on(tmp / "state") == []


@needs_ntfs
def test_hibernated_windows_mounts_read_only_and_says_so(env: GuestEnv) -> None:
    catalog, service, clock, tmp = env
    disk = _ntfs_disk(tmp, "hib", hiberfil=b"HIBR" + bytes(8192))
    point = backup_chain(catalog, tmp / "repo", [disk], now=clock.now(), vm="hib01").full_id
    qcow = _sha(tmp / "repo" / "hib01" / "sda" / "0000.qcow2")
    view = service.mount(point)
    fs = view.filesystem("p2")
    assert fs.state == "mounted" and "hibernated" in fs.detail and "read-only" in fs.detail
    assert "hibernated" in {e.name: e for e in service.ls(view.id)}["p2"].detail
    assert [e.name for e in service.ls(view.id, "p2/Windows/System32/drivers/etc")] == ["hosts"]
    service.unmount(view.id)
    # nothing removed the hibernation file nor replayed anything: the point is as it was
    assert _sha(tmp / "repo" / "hib01" / "sda" / "0000.qcow2") == qcow


@needs_ntfs
def test_damaged_ntfs_is_listed_with_its_reason_and_the_rest_mounts(env: GuestEnv) -> None:
    catalog, service, clock, tmp = env
    disk = _ntfs_disk(tmp, "bad")
    # the damaged artefact: the $MFT's mirror no longer matches the $MFT (blkid, which
    # reads the $MFT only, still says ntfs; ntfs-3g checks the mirror and refuses)
    boot = disk.read_bytes()[9 * MiB : 9 * MiB + 512]
    cluster = int.from_bytes(boot[0x0B:0x0D], "little") * boot[0x0D]
    mirror = int.from_bytes(boot[0x38:0x40], "little") * cluster
    with open(disk, "r+b") as f:
        f.seek(9 * MiB + mirror)
        f.write(b"FILE" + os.urandom(1020))
    point = backup_chain(catalog, tmp / "repo", [disk], now=clock.now(), vm="bad01").full_id
    view = service.mount(point)
    fs = view.filesystem("p2")
    assert (fs.state, fs.fs_type) == ("error", "ntfs"), fs.detail
    assert "cannot read the NTFS volume" in fs.detail and "it is damaged (Record 0" in fs.detail
    assert view.filesystem("p1").state == "mounted"
    with pytest.raises(FileRestoreError, match="not browsable"):
        service.ls(view.id, "p2")


def _sha(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _mountinfo() -> list[tuple[str, str, str]]:
    rows = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            rows.append((parts[4], parts[sep + 1], parts[5]))
    return rows


# -- LVM -------------------------------------------------------------------------------

HOME: dict[str, Content] = {"ann/notes.txt": b"ann's notes\n", "ann/.profile": b"PATH=/bin\n"}
SRV: dict[str, Content] = {"www/index.html": b"<h1>served</h1>\n", "www/img/logo.svg": b"<svg/>"}


def _host_lvm_state() -> tuple[str, str]:
    """The host's own view: its volume groups and its device-mapper devices."""
    vgs = subprocess.run(
        ["vgs", "--noheadings", "-o", "vg_name,lv_count,vg_attr"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    dm = "" if _dm_reason() else sh("dmsetup", "ls")
    return vgs, dm


def _host_lv_attrs(vg: str) -> str:
    """The 5th lv_attr letter (state: 'a' when active) of ``vg``'s volumes as the
    host's LVM sees them."""
    out = subprocess.run(
        ["lvs", "--noheadings", "-o", "lv_attr", vg],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    return "".join(line.strip()[4] for line in out.splitlines() if len(line.strip()) > 4)


@pytest.fixture(scope="module")
def lvm_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("lvm")
    return build_lvm_disk(
        work / "lvm.raw",
        "vg0",
        [Volume("home", Part("ext4", 12, HOME)), Volume("srv", Part("xfs", 30, SRV))],
    )


def test_lvm_volumes_in_one_piece_browse_like_partitions(env: GuestEnv, lvm_disk: Path) -> None:
    catalog, service, clock, tmp = env
    host_before = _host_lvm_state()
    point = backup_chain(catalog, tmp / "repo", [lvm_disk], now=clock.now(), vm="lin01").full_id
    view = service.mount(point)
    described = {f.name: (f.description, f.state) for f in view.filesystems}
    assert described == {
        "vg0-home": ("lv vg0/home (ext4)", "mounted"),
        "vg0-srv": ("lv vg0/srv (xfs)", "mounted"),
    }
    top = {e.name: e.detail for e in service.ls(view.id)}
    assert top == {"vg0-home": "lv vg0/home (ext4)", "vg0-srv": "lv vg0/srv (xfs)"}
    assert [e.name for e in service.ls(view.id, "vg0-srv/www")] == ["img", "index.html"]
    out = tmp / "out"
    result = service.extract(view.id, ["vg0-home/ann", "vg0-srv/www"], out)
    assert result.skipped == [] and result.files == 4
    for rel, data in HOME.items():
        assert (out / rel).read_bytes() == data
        assert os.stat(out / rel).st_mtime == MTIME
    for rel, data in SRV.items():
        assert (out / rel).read_bytes() == data
    # the guest's VG was read, never activated: no device-mapper device appeared, and
    # none of its volumes is active for the host's LVM
    assert _host_lvm_state()[1] == host_before[1]
    assert "a" not in _host_lv_attrs("vg0")
    service.unmount(view.id)
    assert _host_lvm_state() == host_before
    assert mounts_under(tmp / "state") == [] and loops_on(tmp / "state") == []


def test_guest_vg_named_like_a_host_vg_reads_without_clashing(
    env: GuestEnv, tmp_path: Path
) -> None:
    """Two disks whose VGs share a name (the appliance's own would be the same
    case): each mount reads its own, through its own device only."""
    catalog, service, clock, tmp = env
    a = build_lvm_disk(tmp / "a.raw", "vgsys", [Volume("root", Part("ext4", 8, {"who": b"a\n"}))])
    b = build_lvm_disk(tmp / "b.raw", "vgsys", [Volume("root", Part("ext4", 8, {"who": b"b\n"}))])
    first = backup_chain(catalog, tmp / "repo", [a], now=clock.now(), vm="a").full_id
    second = backup_chain(catalog, tmp / "repo", [b], now=clock.now(), vm="b").full_id
    va, vb = service.mount(first), service.mount(second)
    assert (Path(va.filesystem("vgsys-root").path or "") / "who").read_bytes() == b"a\n"
    assert (Path(vb.filesystem("vgsys-root").path or "") / "who").read_bytes() == b"b\n"


def test_hostile_lvm_metadata_is_refused_with_a_sentence(env: GuestEnv) -> None:
    """A volume whose extents lie past the end of its physical volume's partition (a
    guest that edited its metadata, or a shrunk partition) is listed with the reason,
    never mapped onto the bytes beyond (here: another partition's secrets)."""
    catalog, service, clock, tmp = env
    disk = build_lvm_disk(
        tmp / "evil.raw",
        "vg0",
        [
            Volume("ok", Part("ext4", 8, {"a": b"a\n"})),
            Volume("beyond", Part("ext4", 8, {"secret": b"not the PV's\n"}), pieces=[(30, 8)]),
        ],
        size_mb=40,
    )
    # the partition now ends at 24 MiB: "beyond"'s extents lie outside it
    sh("sfdisk", "-q", "-N", "1", str(disk), input_text=",24M\n")
    point = backup_chain(catalog, tmp / "repo", [disk], now=clock.now(), vm="evil").full_id
    view = service.mount(point)
    assert view.filesystem("vg0-ok").state == "mounted"
    beyond = view.filesystem("vg0-beyond")
    assert beyond.state == "unsupported" and beyond.path is None and beyond.device is None
    assert beyond.detail == (
        "its extents lie outside its physical volume: the LVM metadata is damaged"
    )


def test_volume_names_cannot_escape_or_collide() -> None:
    used: set[str] = set()
    assert volume_name("vg-a", "lv", used) == "vg--a-lv"
    assert volume_name("vg", "a-lv", used) == "vg-a--lv"
    assert volume_name("vg-a", "lv", used) == "vg--a-lv~2"
    assert volume_name("../..", "/etc", used) == ".._..-_etc"
    assert "/" not in volume_name("a/b", "c\x00d", used)


@pytest.mark.skipif(_dm_reason() is not None, reason=f"device-mapper: {_dm_reason()}")
def test_lvm_volume_in_pieces_maps_read_only_and_unmaps(env: GuestEnv, tmp_path: Path) -> None:
    catalog, service, clock, tmp = env
    host_before = _host_lvm_state()
    disk = build_lvm_disk(
        tmp / "pieces.raw",
        "vg0",
        [
            Volume("home", Part("ext4", 12, HOME)),
            Volume("srv", Part("xfs", 30, SRV), pieces=[(20, 10), (12, 8), (40, 12)]),
        ],
    )
    point = backup_chain(catalog, tmp / "repo", [disk], now=clock.now(), vm="p").full_id
    view = service.mount(point)
    srv = view.filesystem("vg0-srv")
    assert srv.state == "mounted" and (srv.device or "").startswith("/dev/mapper/sendense-")
    ours = lvm.dm_names(dm_prefix(Path(view.base_dir)))
    assert len(ours) == 1
    attr = sh("dmsetup", "info", "-c", "--noheadings", "-o", "attr", ours[0]).strip()
    assert "r" in attr[1:] and "w" not in attr  # L--r: live, read-only
    out = tmp / "out"
    service.extract(view.id, ["vg0-srv/www"], out)
    assert (out / "www/index.html").read_bytes() == SRV["www/index.html"]
    service.unmount(view.id)
    assert lvm.dm_names(dm_prefix(Path(view.base_dir))) == []
    assert _host_lvm_state() == host_before


@pytest.mark.skipif(_dm_reason() is None, reason="this machine has device-mapper")
def test_lvm_volume_in_pieces_without_device_mapper_says_why(env: GuestEnv, tmp_path: Path) -> None:
    catalog, service, clock, tmp = env
    disk = build_lvm_disk(
        tmp / "pieces.raw",
        "vg0",
        [
            Volume("home", Part("ext4", 12, HOME)),
            Volume("srv", Part("xfs", 30, SRV), pieces=[(20, 10), (12, 8), (40, 12)]),
        ],
    )
    point = backup_chain(catalog, tmp / "repo", [disk], now=clock.now(), vm="p").full_id
    view = service.mount(point)
    assert view.filesystem("vg0-home").state == "mounted"
    srv = view.filesystem("vg0-srv")
    assert srv.state == "unsupported" and srv.volume == "lv vg0/srv"
    assert "stored in 3 pieces" in srv.detail and "device-mapper" in srv.detail


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from engine.catalog import Catalog
    from engine.clock import FixedClock
    from engine.config import default_settings, sqlite_url
    from engine.events import EventBus
    from engine.services.file_restore import FileRestoreService

    tmp = Path(sys.argv[1])
    catalog = Catalog(sqlite_url(tmp / "catalog.db")).open()
    clock = FixedClock()
    service = FileRestoreService(
        catalog, EventBus(None, clock), default_settings(tmp / "state"), clock=clock
    )
    view = service.mount(int(sys.argv[2]))
    print(view.id, flush=True)
    time.sleep(600)
    """
)


def test_sigkilled_engine_holding_lvm_mounts_is_cleaned_at_next_start(
    env: GuestEnv,
    lvm_disk: Path,
) -> None:
    catalog, _, clock, tmp = env
    host_before = _host_lvm_state()
    disk = lvm_disk
    pieces = _dm_reason() is None
    if pieces:  # where device-mapper exists, the killed engine also held a mapping
        disk = build_lvm_disk(
            tmp / "pieces.raw",
            "vg0",
            [Volume("srv", Part("xfs", 30, SRV), pieces=[(20, 10), (0, 20)])],
        )
    point = backup_chain(catalog, tmp / "repo", [disk], now=clock.now(), vm="k").full_id
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp), str(point)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert worker.stdout is not None
        mount_id = int(worker.stdout.readline())
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    base = tmp / "state" / "restore" / f"m{mount_id}"
    assert mounts_under(base) != []
    if pieces:
        assert lvm.dm_names(dm_prefix(base)) != []
    fresh = _service(catalog, clock, tmp)
    try:
        assert fresh.cleanup_leftovers() != []
        assert mounts_under(tmp / "state") == [] and loops_on(tmp / "state") == []
        assert lvm.dm_names(dm_prefix(base)) == []
        assert processes_mentioning(str(tmp / "state")) == []
        assert _host_lvm_state() == host_before
    finally:
        fresh.close()


def test_ntfs_without_ntfs3g_says_which_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.services import file_restore
    from engine.tools import mounts
    from engine.tools.base import ToolMissing

    monkeypatch.setenv("PATH", str(tmp_path))  # ntfs-3g lives in /usr/bin, not in sbin
    assert file_restore._not_mountable("ntfs") == (
        "NTFS: ntfs-3g is not installed here (apt-get install ntfs-3g)"
    )
    with pytest.raises(ToolMissing, match="ntfs-3g is not installed") as caught:
        mounts.mount_ntfs("/dev/null", tmp_path)
    assert caught.value.hint == "install it: apt-get install ntfs-3g"


def test_damaged_lvm_metadata_is_reported_and_nothing_stays_mapped(env: GuestEnv) -> None:
    catalog, service, clock, tmp = env
    disk = build_lvm_disk(tmp / "damaged.raw", "vg0", [Volume("a", Part("ext4", 8, {"a": b"a"}))])
    with open(disk, "r+b") as f:  # the PV label stays; the metadata text after it is noise
        f.seek(MiB + 4096)
        f.write(os.urandom(64 * 1024))
    point = backup_chain(catalog, tmp / "repo", [disk], now=clock.now(), vm="dmg").full_id
    with pytest.raises(FileRestoreError) as caught:
        service.mount(point)
    message = caught.value.message
    assert message.startswith("no filesystem on restore point")
    assert "p1: cannot read the LVM metadata on /dev/loop" in message
    assert "its metadata is damaged (bad metadata header" in message
    assert mounts_under(tmp / "state") == [] and loops_on(tmp / "state") == []
