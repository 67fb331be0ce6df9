"""Self-describing repositories: a small manifest next to every restore point.

The catalog is never the only record of a backup. Every point file in a chain
directory has a sidecar manifest named after it::

    chains/web01/sda/20261124T090000Z/0000-full-20261124T090000Z.qcow2
    chains/web01/sda/20261124T090000Z/0000-full-20261124T090000Z.qcow2.json
    chains/web01/sda/20261124T090000Z/0001-inc-20261125T090000Z.qcow2
    chains/web01/sda/20261124T090000Z/0001-inc-20261125T090000Z.qcow2.json

It holds what the catalog row holds (format version, VM, disk, file, kind,
position, parent file, point time, created, virtual size, file size, allocated
bytes, sha256, compression, the source as recorded, the lock expiry and, on a
copy, the repository it was copied from), so ``sendense repo import`` can rebuild
the catalog from the files after the catalog was lost, on a new appliance, or
when a disk was moved.

Why one manifest per point, not one per chain directory:

- It is written with its point and never rewritten because another point landed:
  two writers (a backup and a copy into another repository, or two appliances)
  never read-modify-write one shared file, and a crash can only leave one point's
  manifest behind, never a chain manifest that lies about other points.
- A copy takes its point's manifest along (``copy_of`` names the repository it came
  from), so a copy repository describes itself exactly like its source.
- Locks: Sendense sets ``chattr +i`` on point files, never on a chain directory (a
  flagged directory would refuse the next incremental and its manifest). The
  manifest itself is NOT flagged: it must take a lock's extension
  (``record_lock``, called by the lock service when a lock is set or extended;
  an expiry only ever moves later). The flag on the point is the lock; the
  manifest is the record an import uses to recreate the lock row with the same
  expiry. A chain directory found flagged by hand is reported by the write, which
  then fails like any other write into it.

Writes go through ``engine.fsutil`` (temporary name, fsync, rename, fsync of the
directory), mode 0600. Points are written in this order: the point file takes
its name, its manifest is written, the directory is flushed, the catalog row is
written. A crash leaves at worst a point with no row (``chain check`` names it
and ``chain check --fix`` imports it) or a point without a manifest (the import
falls back to the file's header and name, and says so).

Everything read back from a repository is untrusted input (a repository may come
from anywhere): manifests are size-limited, strictly typed and must agree with
their file names; qcow2 headers are parsed here in Python, so deciding whether a
point is acceptable never makes qemu open a backing or data file named in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import struct
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.catalog.models import Backup, Chain
from engine.digests import SUFFIX as DIGESTS_SUFFIX
from engine.digests import table_path
from engine.errors import SendenseError
from engine.fsutil import durable_output

#: the manifest of ``NAME`` is ``NAME + SUFFIX``
SUFFIX = ".json"
#: bumped when a field changes meaning; a newer format is reported, not guessed at
FORMAT = 1
#: a manifest is a few hundred bytes; anything bigger is not one
MAX_MANIFEST_BYTES = 64 * 1024
#: chains live under this directory of a repository
CHAINS_DIR = "chains"
KINDS = ("full", "incremental")
COMPRESSIONS = (None, "zstd", "zlib")

#: a point file as the backup service and consolidation name it
POINT_NAME = re.compile(r"^(\d{4,6})-(full|inc)-(\d{8}T\d{6}Z)\.qcow2$")
#: VM, disk and chain directory names (what the backup service accepts)
PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_INT = 2**63 - 1


class ManifestError(SendenseError):
    """A manifest is missing, unreadable or not what a manifest must be."""


class ManifestMissing(ManifestError):
    """A point has no manifest (written before manifests existed, or lost)."""


def _manifest_time(value: object, key: str, *, where: str, null: bool) -> datetime | None:
    """A manifest's time field: ISO 8601 with a time zone, in UTC (None where allowed)."""
    if value is None and null:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ManifestError(f"{where}: field {key!r} is not a time with a time zone")
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class PointManifest:
    """What a repository records about one point file, next to it."""

    vm: str
    disk: str
    file: str
    kind: str
    position: int
    parent: str | None
    point_time: datetime
    created: datetime
    virtual_size: int
    file_size: int
    allocated_bytes: int
    sha256: str | None
    compression: str | None = None
    source: str | None = None
    lock_expires: datetime | None = None
    #: on a copy: the name of the repository the original was in
    copy_of: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": FORMAT, **asdict(self)}
        for key in ("point_time", "created", "lock_expires"):
            value = data[key]
            data[key] = value.astimezone(UTC).isoformat() if value is not None else None
        return data

    def to_bytes(self) -> bytes:
        return (json.dumps(self.as_dict(), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, data: Any, *, where: str) -> PointManifest:
        """A manifest from parsed JSON; every field is checked (ManifestError says which)."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where} is not a JSON object")
        version = data.get("format")
        if version != FORMAT:
            raise ManifestError(
                f"{where} has format {version!r}; this Sendense reads format {FORMAT}",
                hint="import it with the Sendense version that wrote it",
            )

        def text(key: str, pattern: re.Pattern[str] | None = None, *, null: bool = False) -> Any:
            value = data.get(key)
            if value is None and null:
                return None
            if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
                raise ManifestError(f"{where}: field {key!r} is missing or not valid")
            return value

        def number(key: str) -> int:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
                raise ManifestError(f"{where}: field {key!r} is not a byte count")
            return value

        def when(key: str, *, null: bool = False) -> Any:
            return _manifest_time(data.get(key), key, where=where, null=null)

        kind = data.get("kind")
        if kind not in KINDS:
            raise ManifestError(f"{where}: kind {kind!r} is neither full nor incremental")
        compression = data.get("compression")
        if compression not in COMPRESSIONS:
            raise ManifestError(f"{where}: compression {compression!r} is unknown")
        position = number("position")
        source = data.get("source")
        if source is not None and (not isinstance(source, str) or len(source) > 1024):
            raise ManifestError(f"{where}: field 'source' is not valid")
        parent = text("parent", POINT_NAME, null=True)
        if (kind == "full") != (parent is None):
            raise ManifestError(f"{where}: a {kind} point with parent {parent!r}")
        return cls(
            vm=text("vm", PART_NAME),
            disk=text("disk", PART_NAME),
            file=text("file", POINT_NAME),
            kind=kind,
            position=position,
            parent=parent,
            point_time=when("point_time"),
            created=when("created"),
            virtual_size=number("virtual_size"),
            file_size=number("file_size"),
            allocated_bytes=number("allocated_bytes"),
            sha256=text("sha256", _SHA256, null=True),
            compression=compression,
            source=source,
            lock_expires=when("lock_expires", null=True),
            copy_of=text("copy_of", PART_NAME, null=True),
        )


def manifest_path(point: Path) -> Path:
    return point.with_name(point.name + SUFFIX)


#: files that belong to a point and lie beside it: its manifest, its digest table
SIDE_SUFFIXES = (SUFFIX, DIGESTS_SUFFIX)


def is_manifest_name(name: str) -> bool:
    """``NAME.qcow2.json`` or ``NAME.qcow2.digests`` (a point's manifest or digest
    table: engine.digests), where NAME.qcow2 is a point file name."""
    return any(
        name.endswith(suffix) and bool(POINT_NAME.match(name[: -len(suffix)]))
        for suffix in SIDE_SUFFIXES
    )


def point_name_of(manifest_name: str) -> str:
    for suffix in SIDE_SUFFIXES:
        if manifest_name.endswith(suffix):
            return manifest_name[: -len(suffix)]
    return manifest_name


def point_manifest(
    backup: Backup, chain: Chain, *, parent: str | None, **changes: Any
) -> PointManifest:
    """The manifest of a catalog row; ``parent`` is the parent's file name (None for a
    full) and ``changes`` override fields (e.g. a new checksum after a rebase)."""
    manifest = PointManifest(
        vm=chain.vm_name,
        disk=chain.disk_name,
        file=Path(backup.path).name,
        kind=backup.kind,
        position=backup.position,
        parent=parent,
        point_time=backup.point_time,
        created=backup.created_at,
        virtual_size=backup.virtual_size,
        file_size=backup.file_size,
        allocated_bytes=backup.allocated_bytes,
        sha256=backup.checksum,
        compression=backup.compression,
        source=backup.source,
    )
    return replace(manifest, **changes)


def write_manifest(point: Path, manifest: PointManifest) -> None:
    """Write (or replace) ``point``'s manifest durably: temporary name, fsync, rename,
    fsync of the directory. Raises OSError (ENOSPC, EPERM on a flagged directory...)."""
    if manifest.file != point.name:
        raise ValueError(f"manifest of {manifest.file} written next to {point.name}")
    data = manifest.to_bytes()
    with durable_output(manifest_path(point)) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def read_manifest(point: Path) -> PointManifest:
    """``point``'s manifest; ManifestError when it is missing, too big, not JSON, or
    describes another file."""
    path = manifest_path(point)
    where = f"manifest {path.name}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ManifestMissing(f"{point.name} has no manifest") from None
    except OSError as exc:
        raise ManifestError(f"{where} cannot be read: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ManifestError(f"{where} is not a regular file")
        raw = os.read(fd, MAX_MANIFEST_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ManifestError(f"{where} is not valid JSON") from None
    manifest = PointManifest.from_dict(data, where=where)
    if manifest.file != point.name:
        raise ManifestError(f"{where} describes {manifest.file!r}, not {point.name}")
    return manifest


def try_read_manifest(point: Path) -> PointManifest | None:
    try:
        return read_manifest(point)
    except ManifestError:
        return None


def remove_manifest(point: Path) -> None:
    """Remove ``point``'s manifest and digest table (the caller flushes the directory)."""
    for side in (manifest_path(point), table_path(point)):
        with contextlib.suppress(FileNotFoundError):
            side.unlink()


def record_lock(point: Path, expires: datetime) -> bool:
    """Record a lock's expiry in ``point``'s manifest; an expiry only moves later.
    False when the point has no readable manifest (nothing to record in)."""
    current = try_read_manifest(point)
    if current is None:
        return False
    if current.lock_expires is not None and current.lock_expires >= expires:
        return True
    write_manifest(point, replace(current, lock_expires=expires.astimezone(UTC)))
    return True


# -- point file names and qcow2 headers ------------------------------------------------


@dataclass(frozen=True)
class PointName:
    position: int
    kind: str
    point_time: datetime


def parse_point_name(name: str) -> PointName | None:
    """``0003-inc-20261124T090000Z.qcow2`` -> position 3, incremental, that time."""
    match = POINT_NAME.match(name)
    if match is None:
        return None
    try:
        when = datetime.strptime(match.group(3), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    kind = "full" if match.group(2) == "full" else "incremental"
    return PointName(int(match.group(1)), kind, when)


QCOW2_MAGIC = b"QFI\xfb"
_INCOMPAT_DIRTY = 1 << 0
_INCOMPAT_CORRUPT = 1 << 1
_INCOMPAT_DATA_FILE = 1 << 2
_EXT_END = 0x00000000
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_DATA_FILE = 0x44415441
_EXT_CRYPTO = 0x0537BE77
_MAX_BACKING_NAME = 1023
#: the header and its extensions live in the first cluster; this much of it is read
_HEADER_READ = 64 * 1024


@dataclass(frozen=True)
class Qcow2Header:
    version: int
    virtual_size: int
    backing_file: str | None
    backing_format: str | None
    encrypted: bool
    data_file: str | None
    corrupt: bool
    dirty: bool

    def refusal(self, expected_parent: str | None) -> str | None:
        """Why this header is not acceptable for a point whose parent is
        ``expected_parent`` (a plain file name in the same directory); None if it is."""
        if self.encrypted:
            return "its header says it is encrypted"
        if self.data_file is not None:
            return f"its header names an external data file ({self.data_file!r})"
        if self.backing_file != expected_parent:
            return (
                f"its header names {self.backing_file!r} as its backing file, "
                f"expected {expected_parent or 'none (a full)'}"
            )
        if self.backing_file is not None and self.backing_format not in (None, "qcow2"):
            return f"its header reads its backing file as {self.backing_format!r}, not qcow2"
        if self.corrupt:
            return "its header carries qemu's corrupt flag"
        return None


def _header_extensions(head: bytes, offset: int) -> tuple[str | None, str | None, bool]:
    """(backing format, data file, whether a crypto extension is there) from the
    header extensions that start at ``offset``."""
    backing_format = None
    data_file = None
    crypto = False
    while offset + 8 <= len(head):
        ext_type, ext_len = struct.unpack_from(">II", head, offset)
        if ext_type == _EXT_END:
            break
        body = head[offset + 8 : offset + 8 + ext_len]
        if ext_type == _EXT_BACKING_FORMAT:
            backing_format = body.decode("utf-8", "replace")
        elif ext_type == _EXT_DATA_FILE:
            data_file = body.decode("utf-8", "replace")
        elif ext_type == _EXT_CRYPTO:
            crypto = True
        offset += 8 + (ext_len + 7) // 8 * 8
    return backing_format, data_file, crypto


def read_qcow2_header(path: Path) -> Qcow2Header:
    """The fields of a QCOW2 header that decide what qemu would open, read in Python
    (qemu never sees the file). ManifestError when it is not a QCOW2 image."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ManifestError(f"{path.name} cannot be read: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ManifestError(f"{path.name} is not a regular file")
        head = os.pread(fd, _HEADER_READ, 0)
        if len(head) < 72 or head[:4] != QCOW2_MAGIC:
            raise ManifestError(f"{path.name} is not a QCOW2 image")
        version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
        (virtual_size,) = struct.unpack_from(">Q", head, 24)
        (crypt_method,) = struct.unpack_from(">I", head, 32)
        if version not in (2, 3):
            raise ManifestError(f"{path.name} has QCOW2 version {version}")
        incompatible, header_length = 0, 72
        if version == 3:
            if len(head) < 104:
                raise ManifestError(f"{path.name} has a truncated QCOW2 header")
            (incompatible,) = struct.unpack_from(">Q", head, 72)
            (header_length,) = struct.unpack_from(">I", head, 100)
            if not 104 <= header_length <= len(head) - 8:
                raise ManifestError(f"{path.name} has a QCOW2 header of {header_length} bytes")
        backing: str | None = None
        if backing_offset:
            if backing_size > _MAX_BACKING_NAME:
                raise ManifestError(f"{path.name} names a backing file longer than qemu allows")
            raw = os.pread(fd, backing_size, backing_offset)
            backing = raw.decode("utf-8", "replace")
        backing_format, data_file, crypto = _header_extensions(head, header_length)
        if crypto:
            crypt_method = crypt_method or 2
        if incompatible & _INCOMPAT_DATA_FILE and data_file is None:
            data_file = "(unnamed)"
    finally:
        os.close(fd)
    return Qcow2Header(
        version=version,
        virtual_size=virtual_size,
        backing_file=backing,
        backing_format=backing_format,
        encrypted=crypt_method != 0,
        data_file=data_file,
        corrupt=bool(incompatible & _INCOMPAT_CORRUPT),
        dirty=bool(incompatible & _INCOMPAT_DIRTY),
    )


# -- walking a repository ----------------------------------------------------------------


@dataclass(frozen=True)
class SkippedEntry:
    path: str
    reason: str


def _not_a_chain_part(path: Path) -> str | None:
    """Why ``path`` is not a directory of the chains tree Sendense wrote (None: it is)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if stat.S_ISLNK(mode):
        return "is a symbolic link: never followed"
    if not stat.S_ISDIR(mode):
        return "is not a directory"
    if not PART_NAME.match(path.name):
        return "has a name Sendense never writes"
    return None


def chain_directories(root: Path) -> tuple[list[str], list[SkippedEntry]]:
    """Chain directories of a repository (``chains/VM/DISK/DIR``, relative to ``root``,
    sorted), and what under ``chains/`` was left alone and why. Symbolic links are
    never followed; names must be what the backup service writes."""
    found: list[str] = []
    skipped: list[SkippedEntry] = []
    base = root / CHAINS_DIR

    def entries(directory: Path, rel: str) -> list[tuple[str, str]]:
        out = []
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    out.append((entry.name, f"{rel}/{entry.name}"))
        except OSError as exc:
            skipped.append(SkippedEntry(rel, f"cannot be listed: {exc.strerror}"))
        return sorted(out)

    def directory_ok(path: Path, rel: str) -> bool:
        problem = _not_a_chain_part(path)
        if problem is not None:
            skipped.append(SkippedEntry(rel, problem))
        return problem is None

    if not base.is_dir() or base.is_symlink():
        return found, skipped
    for vm, vm_rel in entries(base, CHAINS_DIR):
        if not directory_ok(base / vm, vm_rel):
            continue
        for disk, disk_rel in entries(base / vm, vm_rel):
            if not directory_ok(base / vm / disk, disk_rel):
                continue
            for chain, chain_rel in entries(base / vm / disk, disk_rel):
                if directory_ok(base / vm / disk / chain, chain_rel):
                    found.append(chain_rel)
    return found, skipped


def vm_and_disk(directory: str) -> tuple[str, str]:
    """``chains/VM/DISK/DIR`` -> (VM, DISK)."""
    parts = directory.split("/")
    return parts[1], parts[2]
