"""A full's digest table, read back from the finished point (engine.services.changes.
table_of_image): read from the QCOW2 file itself where qemu-img's allocation map
places every byte of data in it as it is, through qemu-storage-daemon's read-only
view otherwise. Either way the table is the one the point's guest bytes give, block
for block, against a reference made independently (qemu-img convert to raw, then
each block hashed); a wrong table would make the next incremental miss a change."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.digests import BLOCK_SIZE, block_count, block_digest
from engine.services import changes
from engine.tools.blockspec import ImageSpec

MiB = 1024 * 1024


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def guest_writes(image: Path, *commands: str) -> None:
    args = ["qemu-io", "-f", "qcow2", str(image)]
    for command in commands:
        args += ["-c", command]
    subprocess.run(args, check=True, capture_output=True)


def reference_digests(image: Path, tmp_path: Path, size: int) -> list[bytes]:
    flat = tmp_path / "reference.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(image), str(flat))
    data = flat.read_bytes()
    assert len(data) == size
    return [
        block_digest(data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]) for i in range(block_count(size))
    ]


def full_from_raw(tmp_path: Path, size: int, *options: str) -> Path:
    """A full as a backup writes it: qemu-img convert of a raw disk (random data,
    a hole, random data again, a tail that is not a whole block)."""
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as f:
        f.write(os.urandom(size // 3))
        f.seek(2 * size // 3)
        f.write(os.urandom(size - 2 * size // 3))
    image = tmp_path / "full.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", *options, str(raw), str(image))
    return image


def written_out_of_order(tmp_path: Path, size: int) -> Path:
    """Clusters allocated in the file in another order than the guest's, zeroed
    clusters that are allocated, and a rewrite over earlier data."""
    image = tmp_path / "guest.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=65536", str(image), str(size))
    guest_writes(
        image,
        f"write -P 0x33 {size - 3 * MiB} {2 * MiB}",
        "write -P 0x11 0 1M",
        f"write -P 0x22 {size // 2 + 4096} 200k",
        "write -z 512k 256k",  # zero clusters inside allocated data
        "write -P 0x44 768k 100k",
        f"write -P 0x55 {size - 4096} 4096",
    )
    return image


SIZE = 9 * MiB + 7 * 512  # not a whole number of blocks

IMAGES: dict[str, Callable[[Path], Path]] = {
    "qemu-img convert (64K clusters)": lambda tmp: full_from_raw(tmp, SIZE),
    "512-byte clusters": lambda tmp: full_from_raw(tmp, SIZE, "-o", "cluster_size=512"),
    "2M clusters": lambda tmp: full_from_raw(tmp, SIZE, "-o", "cluster_size=2M"),
    "qcow2 v2 (compat 0.10)": lambda tmp: full_from_raw(tmp, SIZE, "-o", "compat=0.10"),
    "guest writes out of order": lambda tmp: written_out_of_order(tmp, SIZE),
}


@pytest.mark.parametrize("make", IMAGES.values(), ids=IMAGES.keys())
def test_a_full_held_as_it_is_is_read_from_its_own_file(
    tmp_path: Path, make: Callable[[Path], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make(tmp_path)

    def no_view(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("read through the FUSE view, not the file")

    monkeypatch.setattr(changes, "BlockSession", no_view)
    table = changes.table_of_image(ImageSpec.file(image), SIZE)
    expected = reference_digests(image, tmp_path, SIZE)
    assert [table.get(i) for i in range(table.count)] == expected


def test_a_compressed_full_is_read_through_the_view(tmp_path: Path) -> None:
    """No map offset for a compressed cluster: the file holds no guest bytes as they
    are, and the view (qemu) reads them."""
    image = full_from_raw(tmp_path, SIZE, "-c")
    spec = ImageSpec.file(image)
    assert changes._file_layout(spec, changes.qemu_img.map_image(spec), SIZE) is None
    table = changes.table_of_image(spec, SIZE)
    assert [table.get(i) for i in range(table.count)] == reference_digests(image, tmp_path, SIZE)


def test_a_point_on_a_backing_file_is_read_through_the_view(tmp_path: Path) -> None:
    base = full_from_raw(tmp_path, SIZE)
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    guest_writes(top, "write -P 0x66 1M 64k")
    spec = ImageSpec.file(top, backing=ImageSpec.file(base))
    assert changes._file_layout(spec, changes.qemu_img.map_image(spec), SIZE) is None
    table = changes.table_of_image(spec, SIZE)
    assert [table.get(i) for i in range(table.count)] == reference_digests(top, tmp_path, SIZE)


def test_a_map_that_does_not_cover_the_disk_or_points_outside_the_file_is_not_used(
    tmp_path: Path,
) -> None:
    image = full_from_raw(tmp_path, SIZE)
    spec = ImageSpec.file(image)
    extents = changes.qemu_img.map_image(spec)
    assert changes._file_layout(spec, extents, SIZE) is not None
    assert changes._file_layout(spec, extents[:-1], SIZE) is None  # a gap at the end
    data = next(e for e in extents if e.data and not e.zero)
    beyond = image.stat().st_size
    moved = [
        changes.qemu_img.MapExtent(e.start, e.length, e.depth, e.present, e.zero, e.data, beyond)
        if e is data
        else e
        for e in extents
    ]
    assert changes._file_layout(spec, moved, SIZE) is None
