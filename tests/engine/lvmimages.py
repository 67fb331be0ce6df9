"""Build a disk image holding an LVM volume group, without device-mapper.

``lvcreate`` needs device-mapper (it activates and zeroes the new volume), which a
test machine may lack; the volume group's metadata is written instead: ``pvcreate``
and ``vgcreate`` on a loop device of the partition, then logical volumes added to
the metadata text and written back with ``vgcfgrestore``. Each volume's filesystem
image is copied to its extents. Every LVM command here runs with a config that
accepts only that loop device and keeps no backup/archive, so the host's LVM (its
devices, its /etc/lvm) is neither read for volumes nor written.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.engine.fsimages import Content, MiB, Part, _copy_into, make_fs, sh


@dataclass
class Volume:
    name: str
    part: Part
    #: the volume's pieces on the PV as (first extent, extent count); default one piece
    pieces: list[tuple[int, int]] = field(default_factory=list)


def lvm_config(device: str) -> str:
    accept = f'[ "a|^{device}$|", "r|.*|" ]'
    return (
        f"devices {{ filter = {accept} global_filter = {accept} use_devicesfile = 0 "
        'obtain_device_list_from_udev = 0 hints = "none" } '
        "backup { backup = 0 archive = 0 } activation { udev_sync = 0 udev_rules = 0 }"
    )


def _lvm_id(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).hexdigest()
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    chars = [alphabet[int(digest[i : i + 2], 16) % len(alphabet)] for i in range(0, 64, 2)]
    text = "".join(chars)
    cuts = [6, 4, 4, 4, 4, 4, 6]
    out, pos = [], 0
    for n in cuts:
        out.append(text[pos : pos + n])
        pos += n
    return "-".join(out)


def _lv_block(vg: str, volume: Volume) -> str:
    segments = []
    logical = 0
    for index, (first, count) in enumerate(volume.pieces, start=1):
        segments.append(
            f"segment{index} {{\nstart_extent = {logical}\nextent_count = {count}\n"
            f'type = "striped"\nstripe_count = 1\nstripes = ["pv0", {first}]\n}}\n'
        )
        logical += count
    return (
        f"{volume.name} {{\n"
        f'id = "{_lvm_id(vg + volume.name)}"\n'
        'status = ["READ", "WRITE", "VISIBLE"]\nflags = []\n'
        f"segment_count = {len(volume.pieces)}\n" + "".join(segments) + "}\n"
    )


def build_lvm_disk(path: Path, vg: str, volumes: list[Volume], *, size_mb: int = 0) -> Path:
    """A GPT disk with one LVM partition (1 MiB extents) holding ``volumes``."""
    next_extent = 0
    for volume in volumes:
        if not volume.pieces:
            volume.pieces = [(next_extent, volume.part.size_mb)]
        next_extent = max(next_extent, *(a + n for a, n in volume.pieces))
    part_mb = size_mb or next_extent + 4
    with open(path, "wb") as f:
        f.truncate((part_mb + 2) * MiB)
    sh("sfdisk", "-q", str(path), input_text=f"label: gpt\n,{part_mb}M,V\n")
    device = sh(
        "losetup", "--find", "--show", "--offset", str(MiB),
        "--sizelimit", str(part_mb * MiB), str(path),
    ).strip()  # fmt: skip
    try:
        cfg = lvm_config(device)
        sh("pvcreate", "-q", "--config", cfg, device)
        sh("vgcreate", "-q", "--config", cfg, "-s", "1M", vg, device)
        meta = path.with_suffix(".lvm")
        sh("vgcfgbackup", "-q", "--config", cfg, "-f", str(meta), vg)
        text = meta.read_text()
        pe_start = int(re.search(r"pe_start = (\d+)", text).group(1)) * 512  # type: ignore[union-attr]
        blocks = "".join(_lv_block(vg, v) for v in volumes)
        cut = text.rindex("}")  # the end of the volume group's section
        meta.write_text(text[:cut] + "logical_volumes {\n" + blocks + "}\n" + text[cut:])
        sh("vgcfgrestore", "-q", "--config", cfg, "-f", str(meta), vg)
        meta.unlink()
    finally:
        sh("losetup", "--detach", device)
    workdir = Path(tempfile.mkdtemp(dir=path.parent, prefix="lvm-"))
    for volume in volumes:
        image = workdir / f"{volume.name}.img"
        make_fs(image, volume.part, workdir)
        with open(image, "rb") as src:
            for first, count in volume.pieces:
                piece = workdir / "piece"
                piece.write_bytes(src.read(count * MiB))
                _copy_into(piece, path, MiB + pe_start + first * MiB)
                piece.unlink()
    return path


__all__ = ["Content", "Volume", "build_lvm_disk", "lvm_config"]
