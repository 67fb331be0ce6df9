"""What file-level restore shows: a restore mount and its filesystems, an entry of a
listing, a source chosen to be read out, the result of an extraction."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from engine.catalog.restore import PointLocation
from engine.errors import SendenseError
from engine.shapes import COUNT_FIELDS
from engine.units import human_bytes, plural


class FileRestoreError(SendenseError):
    """A restore point cannot be mounted, browsed or extracted."""


@dataclass(frozen=True)
class FilesystemView:
    name: str
    number: int | None
    fs_type: str
    #: mounted | unsupported | error
    state: str
    path: str | None = None
    device: str | None = None
    size: int = 0
    label: str = ""
    detail: str = ""
    #: the logical volume it is on (``lv vg0/home``), "" for a partition or bare disk
    volume: str = ""

    @property
    def description(self) -> str:
        """How a listing names it: ``ext4``, ``lv vg0/home (xfs)``."""
        return f"{self.volume} ({self.fs_type})" if self.volume else self.fs_type


@dataclass(frozen=True)
class MountView:
    id: int
    backup_id: int
    state: str
    base_dir: str
    filesystems: tuple[FilesystemView, ...]
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    point: PointLocation | None = None
    #: True when mount() found the point already mounted and reused it
    reused: bool = False
    #: the qemu-storage-daemon behind a real mount (None only for rows seeded by hand)
    exporter_pid: int | None = None
    #: how the point was read when that is not the plain way (a verified copy, or a
    #: bad point forced and unverified); set by mount() only
    note: str | None = None

    def remaining(self, now: datetime) -> timedelta:
        return max(timedelta(0), self.expires_at - now)

    def filesystem(self, name: str) -> FilesystemView:
        for fs in self.filesystems:
            if fs.name == name:
                return fs
        names = ", ".join(f.name for f in self.filesystems) or "none"
        raise FileRestoreError(
            f"restore mount {self.id} has no filesystem {name!r}",
            hint=f"paths start with a filesystem name: {names}",
        )


@dataclass(frozen=True)
class Entry:
    name: str
    #: the path to give back to ls/extract: "<filesystem>/dir/name"
    path: str
    #: dir | file | symlink | other | filesystem (an unmountable partition at the top)
    kind: str
    size: int
    mtime: datetime | None
    mode: int = 0
    link_target: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class Source:
    """A file or folder of a mounted point chosen to be read out (``source``)."""

    #: where it is on this host (below the filesystem's mount)
    path: Path
    #: its path in the mount: (filesystem, dir, ..., name)
    parts: tuple[str, ...]
    #: the filesystem's device: reading never crosses onto another one
    device: int
    info: os.stat_result

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.info.st_mode)


@dataclass(kw_only=True)
class RestoredCounts:
    """What a folder restore or an archive carried: the counts both report, and the
    one sentence (``counts_phrase``) every front end prints for them."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    #: further names of a file carried once (a hard link, as in the backup)
    hardlinks: int = 0
    #: fifos, device nodes (and, restoring into a folder, sockets) carried
    specials: int = 0
    #: file data carried (holes of sparse files not counted)
    bytes: int = 0

    def counts_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in COUNT_FIELDS}


def counts_phrase(counts: RestoredCounts | Mapping[str, Any]) -> str:
    """ "3 files, 1 folder, 2 links, 1 hard link, 12.0 KiB": hard links and special
    files only when there are some. Takes the result or its JSON form (a finished
    job's result, an API response), so the CLI, the console and job events word a
    restore alike."""
    data = counts.counts_dict() if isinstance(counts, RestoredCounts) else counts
    parts = [
        plural(int(data.get("files", 0)), "file"),
        plural(int(data.get("directories", 0)), "folder"),
        plural(int(data.get("symlinks", 0)), "link"),
    ]
    if data.get("hardlinks"):
        parts.append(plural(int(data["hardlinks"]), "hard link"))
    if data.get("specials"):
        parts.append(plural(int(data["specials"]), "special file"))
    return f"{', '.join(parts)}, {human_bytes(int(data.get('bytes', 0)))}"


@dataclass(kw_only=True)
class ExtractResult(RestoredCounts):
    """What an extraction restored, and every item it did not restore with why."""

    destination: str
    bytes_total: int = 0
    #: True when the extraction created the destination folder (root-only, 0700)
    destination_created: bool = False
    #: the user:group everything was given to (``owner``), else None: owners as in the backup
    owner: str | None = None
    #: what the operator should know about the destination (who may enter it)
    note: str = ""
    #: (path under the destination, why it was not restored, or not completely)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "destination_created": self.destination_created,
            "owner": self.owner,
            "note": self.note,
            **self.counts_dict(),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


ProgressCallback = Callable[[int, int, str], None]
