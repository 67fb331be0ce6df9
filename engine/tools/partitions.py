"""Partition tables and filesystem probes of a disk image or device.

``sfdisk --json`` reads the table (GPT or MBR); ``blkid -p`` (probe, no cache)
says what is in a region, with ``--offset`` so a partition can be probed
without a partition node.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from engine.tools.base import ToolError, run

PathLike = str | Path

TIMEOUT = 30.0

#: MBR types of extended-partition containers: they hold partitions, not a filesystem
EXTENDED_TYPES = {"5", "f", "85"}


class PartitionError(ToolError):
    """The partition table or filesystem of a disk could not be read."""


@dataclass(frozen=True)
class Partition:
    number: int
    #: bytes from the start of the disk
    offset: int
    size: int
    type: str
    label: str = ""


@dataclass(frozen=True)
class PartitionTable:
    label: str  # gpt | dos
    sector_size: int
    partitions: tuple[Partition, ...]


def read_table(device: PathLike) -> PartitionTable | None:
    """The partition table of ``device``, or None when it has none (a bare filesystem)."""
    done = run(["sfdisk", "--json", str(device)], timeout=TIMEOUT, check=False)
    if done.returncode != 0:
        if "does not contain a recognized partition table" in done.stderr or not done.stderr:
            return None
        raise PartitionError(
            f"cannot read the partition table of {device}: {done.stderr.strip().splitlines()[-1]}",
            program="sfdisk",
            returncode=done.returncode,
            stderr=done.stderr,
            hint="the disk image may be damaged",
        )
    try:
        table = json.loads(done.stdout)["partitiontable"]
    except (ValueError, KeyError):
        return None
    sector = int(table.get("sectorsize", 512))
    parts = []
    for index, entry in enumerate(table.get("partitions", []), start=1):
        match = re.search(r"(\d+)$", str(entry.get("node", "")))
        number = int(match.group(1)) if match else index
        kind = str(entry.get("type", "")).lower()
        if kind in EXTENDED_TYPES:
            continue
        parts.append(
            Partition(
                number=number,
                offset=int(entry["start"]) * sector,
                size=int(entry["size"]) * sector,
                type=kind,
                label=str(entry.get("name", "")),
            )
        )
    return PartitionTable(str(table.get("label", "")), sector, tuple(parts))


def probe(device: PathLike, *, offset: int = 0, size: int | None = None) -> dict[str, str]:
    """blkid's view of a region (TYPE, UUID, LABEL, PTTYPE…); empty when unrecognised."""
    args = ["blkid", "-p", "-o", "export"]
    if offset:
        args += ["--offset", str(offset)]
    if size is not None:
        args += ["--size", str(size)]
    args.append(str(device))
    done = run(args, timeout=TIMEOUT, check=False)
    if done.returncode not in (0, 2):
        raise PartitionError(
            f"cannot probe {device}: {done.stderr.strip() or f'exit code {done.returncode}'}",
            program="blkid",
            returncode=done.returncode,
            stderr=done.stderr,
        )
    result: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key] = value
    return result


def kernel_filesystems() -> set[str]:
    """Filesystem types the running kernel can mount now (from /proc/filesystems)."""
    try:
        text = Path("/proc/filesystems").read_text()
    except OSError:
        return set()
    return {line.split()[-1] for line in text.splitlines() if line.strip()}
