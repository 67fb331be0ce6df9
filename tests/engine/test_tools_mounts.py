"""engine.tools.mounts against real mounts (tmpfs, loop-mounted ext4/xfs)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.tools import ToolTimeout, base, exporters, loop, mounts
from engine.tools.blockspec import ImageSpec
from engine.tools.mounts import MountError

pytestmark = pytest.mark.root


def test_parse_mountinfo_decodes_escapes() -> None:
    line = (
        "36 35 98:0 / /mnt/my\\040backups rw,noatime shared:1 - ext4 /dev/loop0 "
        "rw,errors=continue\n"
    )
    (m,) = mounts.parse_mountinfo(line)
    assert m.target == "/mnt/my backups"
    assert (m.source, m.fstype, m.mount_id, m.parent_id) == ("/dev/loop0", "ext4", 36, 35)
    assert m.options == ["rw", "noatime"]
    assert m.super_options == ["rw", "errors=continue"]
    assert not m.read_only


def test_mount_find_and_umount_loop_device(tmp_path: Path, loop_fs) -> None:  # type: ignore[no-untyped-def]
    fs = loop_fs("xfs", size_mb=32)
    target = tmp_path / "second view"
    target.mkdir()
    mounts.mount(fs.device, target, fstype="xfs", options=["noatime"])
    try:
        assert mounts.is_mountpoint(target)
        found = mounts.find_mount(target / "not" / "yet" / "there")
        assert found.target == str(target)
        assert found.source == fs.device
        assert found.fstype == "xfs"
        assert "noatime" in found.options and not found.read_only
        assert any(m.target == str(target) for m in mounts.list_mounts())
    finally:
        mounts.umount(target)
    assert not mounts.is_mountpoint(target)
    assert mounts.find_mount(target).target != str(target)


def test_umount_busy_says_a_process_uses_it(tmp_path: Path, tmpfs: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    mounts.mount("tmpfs", target, fstype="tmpfs", options=["size=1m"])
    try:
        with open(target / "held-open", "w"):
            with pytest.raises(MountError) as err:
                mounts.umount(target)
            assert str(err.value) == f"{target} is busy: a process still uses it"
            assert "lsof" in (err.value.hint or "")
        mounts.umount(target)
    finally:
        subprocess.run(["umount", "--lazy", str(target)], capture_output=True, check=False)
    assert not mounts.is_mountpoint(target)


def test_lazy_umount_detaches_while_busy(tmp_path: Path) -> None:
    target = tmp_path / "lazy"
    target.mkdir()
    mounts.mount("tmpfs", target, fstype="tmpfs", options=["size=1m"])
    with open(target / "held-open", "w"):
        mounts.umount(target, lazy=True)
        assert not mounts.is_mountpoint(target)


def test_mount_missing_device(tmp_path: Path) -> None:
    with pytest.raises(MountError, match="the device does not exist"):
        mounts.mount("/dev/loop-does-not-exist", tmp_path)


def test_mount_missing_target(tmp_path: Path) -> None:
    with pytest.raises(MountError) as err:
        mounts.mount("tmpfs", tmp_path / "nowhere", fstype="tmpfs")
    assert (
        str(err.value) == f"cannot mount tmpfs: the directory {tmp_path / 'nowhere'} does not exist"
    )


def test_mount_wrong_fstype(tmp_path: Path) -> None:
    image = tmp_path / "ext4.img"
    with open(image, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    target = tmp_path / "t"
    target.mkdir()
    try:
        with pytest.raises(MountError, match="wrong filesystem type, bad option or damaged"):
            mounts.mount(device, target, fstype="xfs")
        assert not mounts.is_mountpoint(target)
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def test_mount_already_mounted(loop_fs) -> None:  # type: ignore[no-untyped-def]
    fs = loop_fs("ext4", size_mb=16)
    with pytest.raises(MountError, match="already mounted"):
        mounts.mount(fs.device, fs.mountpoint)


def test_umount_not_mounted(tmp_path: Path) -> None:
    with pytest.raises(MountError, match="is not mounted"):
        mounts.umount(tmp_path)


def test_mount_secret_is_redacted(tmp_path: Path) -> None:
    with pytest.raises(MountError) as err:
        mounts.mount(
            "tmpfs",
            tmp_path / "missing",
            fstype="tmpfs",
            options=["size=1m", "password=hunter2"],
            secrets=["hunter2"],
        )
    assert "hunter2" not in str(err.value) + err.value.stderr


def test_mount_on_hung_storage_times_out_instead_of_hanging(tmp_path: Path) -> None:
    # A FUSE export whose server is frozen (SIGSTOP) stands in for a dead NFS server:
    # reading the superblock through the loop device blocks in the kernel, and the
    # killed mount stays in uninterruptible sleep. The call must still come back.
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    raw = tmp_path / "disk.raw"
    server = exporters.start_fuse_export(
        ImageSpec.file(image), raw, pidfile=tmp_path / "qsd.pid", log_file=tmp_path / "qsd.log"
    )
    target = tmp_path / "mnt"
    target.mkdir()
    os.kill(server.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        with pytest.raises(ToolTimeout, match="did not finish within 1 s") as err:
            mounts.mount(raw, target, fstype="ext4", options=["loop", "ro"], timeout=1)
        assert time.monotonic() - started < 1 + base.KILL_GRACE_SECONDS + 3
        assert "hung" in (err.value.hint or "")
    finally:
        os.kill(server.pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while base._abandoned and time.monotonic() < deadline:  # the stuck mount ends
            base._reap_abandoned()
            time.sleep(0.1)
        subprocess.run(["umount", str(target)], capture_output=True, check=False)
        for dev in loop.devices_for(raw):
            loop.detach(dev.device)
        server.stop()
        exporters.fuse_unmount(raw)
