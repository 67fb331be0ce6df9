"""engine.tools.loop against real loop devices."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.tools import loop
from engine.tools.loop import LoopError
from tests.plugins.loopfs import MiB

pytestmark = pytest.mark.root


@pytest.fixture
def ext4_image(tmp_path: Path) -> Path:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-L", "backups", str(image)], check=True)
    return image


@pytest.fixture
def attached() -> Iterator[list[str]]:
    devices: list[str] = []
    yield devices
    for d in devices:
        subprocess.run(["losetup", "-d", d], capture_output=True, check=False)


def test_attach_list_detach(ext4_image: Path, attached: list[str]) -> None:
    device = loop.attach(ext4_image)
    attached.append(device)
    assert device.startswith("/dev/loop")

    (found,) = loop.devices_for(ext4_image)
    assert found.device == device
    assert found.backing_file == str(ext4_image)
    assert found.read_only
    assert (found.offset, found.sizelimit) == (0, 0)
    assert device in [d.device for d in loop.list_devices()]

    info = loop.blkid(device)
    assert info["TYPE"] == "ext4"
    assert info["LABEL"] == "backups"

    loop.detach(device)
    assert loop.devices_for(ext4_image) == []


def test_attach_read_write_with_offset(ext4_image: Path, attached: list[str]) -> None:
    device = loop.attach(ext4_image, read_only=False, offset=MiB, sizelimit=4 * MiB)
    attached.append(device)
    (found,) = loop.devices_for(ext4_image)
    assert not found.read_only
    assert (found.offset, found.sizelimit) == (MiB, 4 * MiB)
    assert loop.blkid(device) == {}  # no superblock at that offset


def test_deleted_backing_file_is_flagged(ext4_image: Path, attached: list[str]) -> None:
    device = loop.attach(ext4_image)
    attached.append(device)
    ext4_image.unlink()
    (found,) = [d for d in loop.list_devices() if d.device == device]
    assert found.deleted
    assert found.backing_file == str(ext4_image)


def test_partx_on_partitioned_image(tmp_path: Path, attached: list[str]) -> None:
    image = tmp_path / "parted.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(
        ["sfdisk", "-q", str(image)], input="label: dos\n,8M,L\n,,L\n", text=True, check=True
    )
    device = loop.attach(image)
    attached.append(device)
    name = Path(device).name
    parts = loop.partx_add(device)
    assert parts == [f"/dev/{name}p1", f"/dev/{name}p2"]
    assert all(Path(p).is_block_device() for p in parts)
    assert loop.partitions(device) == parts
    loop.detach(device)
    assert loop.partitions(device) == []  # nothing stale left for the next user


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(LoopError, match=r"cannot attach .*nope\.img .*: it does not exist"):
        loop.attach(tmp_path / "nope.img")
    with pytest.raises(LoopError, match="not attached"):
        loop.detach("/dev/loop250")
