"""What a restore mount finds inside a guest's disk besides plain partitions: the
logical volumes of an LVM physical volume, and Windows' hibernation left in NTFS.

A ``Region`` is one place of the disk that may hold a filesystem: the bare disk, a
partition, or a logical volume. ``lvm_regions`` turns a physical volume into the
regions of its logical volumes (engine.tools.lvm says how they are read without
activating the guest's volume group on the appliance); the restore service probes
and mounts every region the same way.

The guest's LVM metadata is the guest's: a volume whose extents lie outside its
physical volume, or that is not stored in whole extents, is refused with a
sentence instead of being mapped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.tools import loop, lvm
from engine.tools.base import ToolError, ToolMissing


@dataclass(frozen=True)
class Region:
    #: its name in the mount: ``disk``, ``p1``, ``vg0-home``
    name: str
    number: int | None
    #: bytes from the start of the disk (meaningless when ``mapped``)
    offset: int
    size: int
    #: a block device holding exactly this region, when one exists already
    node: str = ""
    part_type: str = ""
    #: ``lv vg0/home`` for a logical volume
    volume: str = ""
    #: ``node`` is a device-mapper device of ours, not a piece of the disk at ``offset``
    mapped: bool = False


def unsupported(region: Region, fs_type: str, detail: str) -> dict[str, Any]:
    """The filesystem entry of a region that is listed but not browsable."""
    return {
        "name": region.name,
        "number": region.number,
        "fs_type": fs_type,
        "size": region.size,
        "label": "",
        "volume": region.volume,
        "state": "unsupported",
        "path": None,
        "device": None,
        "detail": detail,
    }


def dm_prefix(base: Path) -> str:
    """The device-mapper name prefix of the restore mount in ``base`` (unique per
    directory, so two engines' ``m1`` never share names)."""
    tag = hashlib.sha256(os.path.realpath(base).encode()).hexdigest()[:12]
    return f"{lvm.DM_PREFIX}{tag}-"


_UNSAFE = re.compile(r"[^A-Za-z0-9+_.]")


def volume_name(vg: str, lv: str, used: set[str]) -> str:
    """``vg-lv`` as /dev/mapper spells it (a '-' inside a name doubled); any character
    LVM itself would refuse becomes '_'; a repeat gets a ``~2`` suffix."""

    def part(text: str) -> str:
        return "--".join(_UNSAFE.sub("_", piece) for piece in text.split("-")) or "_"

    name = f"{part(vg)}-{part(lv)}"
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}~{n}"
    used.add(candidate)
    return candidate


def lvm_regions(
    pv: Region, disk: Path, base: Path, used: set[str]
) -> tuple[list[Region], list[dict[str, Any]]]:
    """The logical volumes on the physical volume ``pv``: regions to mount, and
    entries of those that cannot be read (with the reason)."""
    device = pv.node or loop.attach(disk, read_only=True, offset=pv.offset, sizelimit=pv.size)
    try:
        found = lvm.volumes(device)
    except ToolMissing as exc:
        detail = f"LVM physical volume: {exc} here ({exc.hint})"
        return [], [unsupported(pv, "LVM2_member", detail)]
    except ToolError as exc:
        return [], [{**unsupported(pv, "LVM2_member", str(exc)), "state": "error"}]
    if not found:
        return [], [unsupported(pv, "LVM2_member", "LVM physical volume with no logical volume")]
    regions: list[Region] = []
    entries: list[dict[str, Any]] = []
    prefix = dm_prefix(base)
    for index, volume in enumerate(found, start=1):
        region = Region(
            name=volume_name(volume.vg, volume.name, used),
            number=None,
            offset=0,
            size=volume.size,
            volume=volume.label,
        )
        problem = _refusal(volume, pv.size)
        if problem:
            entries.append(unsupported(region, "unknown", problem))
        elif len(volume.pieces) == 1:
            regions.append(replace(region, offset=pv.offset + volume.pieces[0].offset))
        else:
            missing = lvm.dm_missing()
            if missing:
                detail = (
                    f"stored in {len(volume.pieces)} pieces on the disk: reading it needs "
                    f"device-mapper, and {missing}"
                )
                entries.append(unsupported(region, "unknown", detail))
                continue
            node = lvm.dm_create_linear(f"{prefix}{index}", device, volume.pieces)
            regions.append(replace(region, node=node, mapped=True))
    return regions, entries


def _refusal(volume: lvm.LogicalVolume, pv_size: int) -> str:
    """Why a logical volume is not read ("" when it can be)."""
    if volume.elsewhere:
        return "part of it lies on another disk of the VM (a volume group across disks)"
    if volume.segtype != "linear":
        return f"{volume.segtype} volume: only linear volumes can be read"
    outside = any(
        p.offset < 0 or p.size <= 0 or p.offset + p.size > pv_size or p.size % lvm.SECTOR
        for p in volume.pieces
    )
    if outside or sum(p.size for p in volume.pieces) != volume.size:
        return "its extents lie outside its physical volume: the LVM metadata is damaged"
    return ""


def remove_mappings(base: Path) -> list[str]:
    """Remove the device-mapper devices of the restore mount in ``base``; what failed."""
    problems: list[str] = []
    try:
        names = lvm.dm_names(dm_prefix(base))
    except ToolError as exc:
        return [str(exc)]
    for name in sorted(names, reverse=True):
        try:
            lvm.dm_remove(name)
        except ToolError as exc:
            problems.append(f"dmsetup remove {name}: {exc}")
    return problems


#: the first bytes of a hiberfil.sys holding a hibernated (or fast-started) Windows
_HIBERNATED = (b"hibr", b"wake")


def hibernation_note(mounted: Path) -> str:
    """A sentence when the NTFS volume mounted at ``mounted`` was backed up while
    Windows was hibernated (fast startup included), else ""."""
    with contextlib.suppress(OSError):
        fd = os.open(mounted / "hiberfil.sys", os.O_RDONLY | os.O_NOFOLLOW)
        try:
            head = os.read(fd, 4).lower()
        finally:
            os.close(fd)
        if head in _HIBERNATED:
            return (
                "Windows was hibernated (or fast-started) when this was backed up: files "
                "it had open may be older here; mounted read-only as it is"
            )
    return ""
