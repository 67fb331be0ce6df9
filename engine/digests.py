"""Digest tables: what every 64 KiB block of a restore point held, so the next
incremental can find what changed by reading the source once and never the
previous point.

A table lies next to its point (``NAME.qcow2.digests``) and holds one xxh3-128
digest per block of the disk, block ``i`` covering bytes ``[i*64 KiB, (i+1)*64 KiB)``
(the last block may be shorter). Blocks that read as zeros carry
:data:`ZERO_DIGEST` of their own length, so holes are compared without being read.

xxh3 is not a cryptographic hash; it is used to tell *whether a block changed*,
the way rsync and Proxmox's dirty tracking do, at memory speed. A guest that
crafts a block colliding with its own previous content only keeps its own old
data in its own backup; the point's sha256 and verify still protect what was
written. The table's own integrity is a sha256 over its bytes, recorded in the
catalog and in the point's manifest: a table that is missing, truncated,
damaged or edited is refused as a whole (:class:`DigestTableError`), and the
backup falls back to the whole-disk compare with the reason said out loud.

File layout (little endian): magic ``SDDIGST1``, u32 version, u32 block size,
u64 disk size, u64 block count, then ``count`` digests of 16 bytes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import xxhash

from engine.fsutil import fsync_file
from engine.private import write_private

BLOCK_SIZE = 64 * 1024
DIGEST_SIZE = 16
MAGIC = b"SDDIGST1"
VERSION = 1
_HEADER = struct.Struct("<8sIIQQ")
SUFFIX = ".digests"


class DigestTableError(Exception):
    """A digest table cannot be trusted; the sentence says why."""


def block_digest(data: bytes | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


def zero_digest(length: int = BLOCK_SIZE) -> bytes:
    return _ZEROS.get(length) or block_digest(bytes(length))


_ZEROS = {BLOCK_SIZE: block_digest(bytes(BLOCK_SIZE))}
ZERO_DIGEST = _ZEROS[BLOCK_SIZE]


def block_count(disk_size: int, block_size: int = BLOCK_SIZE) -> int:
    return (disk_size + block_size - 1) // block_size


def block_length(index: int, disk_size: int, block_size: int = BLOCK_SIZE) -> int:
    return min(block_size, disk_size - index * block_size)


def table_path(point: Path) -> Path:
    """Where a point's digest table lives: beside it."""
    return point.with_name(point.name + SUFFIX)


@dataclass
class DigestTable:
    """One digest per block of a disk, in a bytearray (16 bytes a block: 256 MiB per TiB)."""

    disk_size: int
    digests: bytearray
    block_size: int = BLOCK_SIZE

    @classmethod
    def empty(cls, disk_size: int) -> DigestTable:
        return cls(disk_size, bytearray(block_count(disk_size) * DIGEST_SIZE))

    @property
    def count(self) -> int:
        return len(self.digests) // DIGEST_SIZE

    def get(self, index: int) -> bytes:
        return bytes(self.digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE])

    def set(self, index: int, digest: bytes) -> None:
        self.digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE] = digest

    def copy(self) -> DigestTable:
        return DigestTable(self.disk_size, bytearray(self.digests), self.block_size)

    def to_bytes(self) -> bytes:
        head = _HEADER.pack(MAGIC, VERSION, self.block_size, self.disk_size, self.count)
        return head + bytes(self.digests)

    def write(self, path: Path) -> str:
        """Write the table (0600 from its first byte, fsynced) and return its sha256."""
        data = self.to_bytes()
        write_private(path, data)
        fsync_file(path)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def read(cls, path: Path, *, sha256: str | None, disk_size: int) -> DigestTable:
        """The table at ``path``, refused whole unless it is exactly what was recorded."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DigestTableError(f"digest table {path.name} is missing") from None
        except OSError as exc:
            raise DigestTableError(
                f"digest table {path.name} cannot be read: {exc.strerror}"
            ) from None
        if sha256 is None:
            raise DigestTableError(f"digest table {path.name} has no checksum in the catalog")
        if hashlib.sha256(data).hexdigest() != sha256:
            raise DigestTableError(
                f"digest table {path.name} does not match its recorded checksum (damaged or edited)"
            )
        if len(data) < _HEADER.size:
            raise DigestTableError(f"digest table {path.name} is truncated")
        magic, version, block, size, count = _HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION or block != BLOCK_SIZE:
            raise DigestTableError(f"digest table {path.name} is not a version {VERSION} table")
        if size != disk_size:
            raise DigestTableError(
                f"digest table {path.name} describes a {size}-byte disk, not {disk_size} bytes"
            )
        body = data[_HEADER.size :]
        if count != block_count(size) or len(body) != count * DIGEST_SIZE:
            raise DigestTableError(f"digest table {path.name} is truncated")
        return cls(size, bytearray(body))
