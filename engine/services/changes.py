"""Changed-block incrementals: read what changed, not what the disk holds.

Each incremental picks a rung of a ladder, per disk per run, and the point
records which one ran and why (``Backup.tracking``):

``bitmap``
    A qcow2 source carries a persistent dirty bitmap Sendense added at the
    previous point (its name is recorded on that point). Only the blocks it
    marks are read.
``extents``
    The source hands in what changed since the previous point: an NBD server's
    ``qemu:dirty-bitmap:NAME`` (``--changed-bitmap``), or a capture agent's
    extent list (``--changed-extents FILE``, the shape of VMware's
    ``QueryChangedDiskAreas``; see :func:`read_extent_file`).
``digest``
    No tracking, or tracking that cannot be trusted: every block of the source
    is read once and its xxh3 digest compared with the previous point's digest
    table (engine.digests); the previous point is never read.
``compare``
    No usable digest table either: every block of the source is compared with
    the previous point's, read through its chain. Today's whole-disk compare.

Tracking is never trusted blindly. A bitmap is used only if it is the one
recorded at the previous point, is enabled, and is not flagged in-use (a writer
that died with the image open); an extent list only if it says it starts at
the previous point and covers this disk. Any doubt takes the next rung, says
why in the job, the point and a warning event. And every
``tracking_check_days`` (default 7) an incremental that could have used
tracking runs the digest rung instead and checks that tracking missed nothing
(``check`` on the point; a miss is a critical event).

On every rung, blocks that read as zeros in the source's allocation map are not
read (and a block that became zeros is written as a zero cluster, not data),
blocks whose digest equals the previous one are not written, and every block
read is hashed into the new point's digest table, so the next run can compare.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from engine.digests import (
    BLOCK_SIZE,
    DigestTable,
    DigestTableError,
    block_count,
    block_digest,
    table_path,
    zero_digest,
)
from engine.errors import JobCancelled, SendenseError
from engine.platform import read_sequentially
from engine.tools import nbdmap, qemu_img
from engine.tools.base import ToolError
from engine.tools.blockio import BlockSession, zero_range
from engine.tools.blockspec import ImageSpec
from engine.units import human_bytes

#: a bitmap Sendense keeps in a qcow2 source is named with this prefix
BITMAP_PREFIX = "sendense-"
#: bytes read from the source in one request (a whole number of blocks)
READ_SIZE = 64 * BLOCK_SIZE
#: an extent list larger than this is refused (a 1 TiB disk fully listed is ~1 MiB)
EXTENT_FILE_MAX = 64 * 1024 * 1024


class ExtentFileError(SendenseError):
    """An extent list cannot be used; the sentence says why."""


@dataclass
class Tracking:
    """What a point records about how its data was found (``Backup.tracking``)."""

    rung: str
    #: why this rung and not a faster one (None when nothing fell back)
    reason: str | None = None
    bytes_read: int | None = None
    bytes_written: int | None = None
    changed_bytes: int | None = None
    #: how long the source was held open (the backup window)
    source_held_seconds: float | None = None
    #: how long the checksum and digest table took after the source was released
    checksum_seconds: float | None = None
    #: sha256 of the point's digest table, None when it has none
    digests: str | None = None
    #: the dirty bitmap added to a qcow2 source at this point (the next run's tracking)
    bitmap: str | None = None
    #: True when every block was compared by digest (a tracking check counts)
    digest_verified: bool = False
    #: a periodic check of tracking: {"tracking": "bitmap b7", "missed_blocks": 0}
    check: dict[str, Any] | None = None
    #: tracking was expected and could not be used (a warning event said why)
    fallback: bool = False
    #: how the source was read (raw or qcow2): a later "back up now" reads it the same way
    source_format: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> Tracking | None:
        if not data:
            return None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary(self) -> str:
        """One line: ``digest (bitmap b7 was in use…): read 2.0 GiB, wrote 16 MiB``."""
        parts = [self.rung]
        if self.reason:
            parts[0] += f" ({self.reason})"
        if self.bytes_read is not None:
            parts.append(f"read {human_bytes(self.bytes_read)}")
        if self.bytes_written is not None:
            parts.append(f"wrote {human_bytes(self.bytes_written)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ChangeHints:
    """What the operator said about a disk's change tracking (``backup run``)."""

    #: an NBD source's dirty bitmap (the server must offer qemu:dirty-bitmap:NAME)
    nbd_bitmap: str | None = None
    #: a capture agent's extent list (JSON; see read_extent_file)
    extent_file: str | None = None


@dataclass
class Plan:
    rung: str
    reason: str | None
    #: the previous point's digest table (None on the compare rung)
    table: DigestTable | None = None
    #: dirty (offset, length) areas when tracking is used or checked
    dirty: list[tuple[int, int]] | None = None
    #: what the dirty areas came from ("bitmap sendense-…", "extent list F")
    tracking: str | None = None
    #: the previous point's bitmap to export (bitmap rung or its check)
    source_bitmap: str | None = None
    #: the tracking is only being checked: the digest rung reads every block
    checking: bool = False
    #: tracking (or the digest table) was expected and could not be used
    fallback: bool = False


# -- extent lists ---------------------------------------------------------------------


def read_extent_file(path: str, *, since_point: int, disk_size: int) -> list[tuple[int, int]]:
    """An extent list handed in by a capture agent::

        {"since_point": 41, "disk_size": 10737418240,
         "extents": [{"start": 0, "length": 65536}, ...]}

    ``since_point`` is the id of the restore point the changes are counted from (the
    previous point of this disk; ``sendense backup list`` shows it). The extents are
    byte ranges inside the disk, in order, not overlapping. Anything else is refused
    with the reason (and the backup falls back to the digest compare)."""
    try:
        size = os.stat(path).st_size
        if size > EXTENT_FILE_MAX:
            raise ExtentFileError(f"extent list {path} is larger than {EXTENT_FILE_MAX} bytes")
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise ExtentFileError(f"extent list {path} cannot be read: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise ExtentFileError(f"extent list {path} is not JSON") from None
    if not isinstance(data, dict):
        raise ExtentFileError(f"extent list {path} is not a JSON object")
    if data.get("since_point") != since_point:
        raise ExtentFileError(
            f"extent list {path} counts changes since point {data.get('since_point')!r}, "
            f"not since the previous point #{since_point}"
        )
    if data.get("disk_size") != disk_size:
        raise ExtentFileError(
            f"extent list {path} describes a {data.get('disk_size')!r}-byte disk, "
            f"not {disk_size} bytes"
        )
    raw = data.get("extents")
    if not isinstance(raw, list):
        raise ExtentFileError(f"extent list {path} has no extents list")
    out: list[tuple[int, int]] = []
    end = 0
    for item in raw:
        start = item.get("start") if isinstance(item, dict) else None
        length = item.get("length") if isinstance(item, dict) else None
        if (
            not isinstance(start, int)
            or not isinstance(length, int)
            or isinstance(start, bool)
            or isinstance(length, bool)
            or start < end
            or length <= 0
            or start + length > disk_size
        ):
            raise ExtentFileError(
                f"extent list {path} has an extent that is out of order, overlapping or "
                f"outside the disk: {item!r}"
            )
        out.append((start, length))
        end = start + length
    return out


# -- planning -------------------------------------------------------------------------


def previous_table(point_file: Path, tracking: Tracking | None, disk_size: int) -> DigestTable:
    """The previous point's digest table, or DigestTableError saying why not."""
    if tracking is None or tracking.digests is None:
        raise DigestTableError(
            f"point {point_file.name} has no digest table (made before change tracking, "
            "imported, or its table could not be completed)"
        )
    return DigestTable.read(table_path(point_file), sha256=tracking.digests, disk_size=disk_size)


def bitmap_problem(spec: ImageSpec, expected: str | None) -> str | None:
    """Why the qcow2 source's bitmap ``expected`` cannot be trusted, or None."""
    if expected is None:
        return "the previous point added no dirty bitmap to this source"
    try:
        found = {b.name: b for b in qemu_img.bitmaps(spec.alone())}
    except ToolError as exc:
        return f"the source's bitmaps cannot be read: {exc.message}"
    bitmap = found.get(expected)
    if bitmap is None:
        return f"bitmap {expected} is gone from the source"
    if bitmap.in_use:
        return f"bitmap {expected} was in use after an unclean stop"
    if not bitmap.enabled:
        return f"bitmap {expected} was left disabled by an interrupted run"
    return None


def bitmap_prefix(repository_id: int, vm: str, disk: str) -> str:
    """The names of the bitmaps one chain keeps in a source: another repository or disk
    backing up the same image keeps its own and never touches these."""
    return f"{BITMAP_PREFIX}r{repository_id}-{vm}-{disk}-"


def discard_bitmaps(spec: ImageSpec, prefix: str, keep: set[str]) -> list[str]:
    """Remove the bitmaps named ``prefix…`` of a qcow2 source except ``keep`` (stale ones
    from interrupted runs, in-use ones that can no longer be trusted). Best effort."""
    removed: list[str] = []
    with contextlib.suppress(ToolError):
        for b in qemu_img.bitmaps(spec.alone()):
            if b.name.startswith(prefix) and b.name not in keep:
                with contextlib.suppress(ToolError):
                    qemu_img.bitmap(spec.alone(), "remove", b.name)
                    removed.append(b.name)
    return removed


def check_due(last_verified: datetime | None, now: datetime, days: int) -> bool:
    """Is it time for a digest-verified incremental (tracking is checked)?"""
    if days <= 0:
        return False
    return last_verified is None or (now - last_verified).total_seconds() >= days * 86400


# -- the copy ---------------------------------------------------------------------------


@dataclass
class CopyOutcome:
    table: DigestTable | None
    bytes_read: int = 0
    bytes_written: int = 0
    changed_bytes: int = 0
    #: blocks that changed but tracking did not mark (only when checking)
    missed_blocks: int = 0
    missed_examples: list[int] = field(default_factory=list)


def _blocks_of(areas: list[tuple[int, int]], disk_size: int) -> list[int]:
    """Block indexes touched by byte areas, in order, each once."""
    out: list[int] = []
    last = -1
    for start, length in areas:
        first = start // BLOCK_SIZE
        end = min(block_count(disk_size), (start + length + BLOCK_SIZE - 1) // BLOCK_SIZE)
        for i in range(max(first, last + 1), end):
            out.append(i)
        last = max(last, end - 1)
    return out


def _runs(blocks: list[int], per_run: int) -> Iterator[tuple[int, int]]:
    """Consecutive block indexes grouped into (first, count) runs of at most per_run."""
    i = 0
    while i < len(blocks):
        first = blocks[i]
        n = 1
        while i + n < len(blocks) and blocks[i + n] == first + n and n < per_run:
            n += 1
        yield first, n
        i += n


def _zero_blocks(spec: ImageSpec, disk_size: int) -> set[int]:
    """Blocks that lie entirely in areas the source's allocation map says read as zeros."""
    try:
        extents = qemu_img.map_image(spec)
    except ToolError:
        return set()  # no map: every block is read, which is only slower
    return _zero_blocks_of(extents, disk_size)


def _zero_blocks_of(extents: Sequence[qemu_img.MapExtent], disk_size: int) -> set[int]:
    zero: set[int] = set()
    for e in extents:
        if not e.zero:
            continue
        first = (e.start + BLOCK_SIZE - 1) // BLOCK_SIZE
        end = (e.start + e.length) // BLOCK_SIZE
        if e.start + e.length >= disk_size:
            end = block_count(disk_size)
        zero.update(range(first, end))
    return zero


def _pread_full(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise OSError(5, f"short read at offset {offset + len(data)}")
        data += more
    return data


def copy_changes(
    plan: Plan,
    *,
    source: ImageSpec,
    target: ImageSpec,
    disk_size: int,
    on_progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    cancelled: Callable[[], JobCancelled] | None = None,
    workdir: Path | None = None,
) -> CopyOutcome:
    """Write into ``target`` (a new qcow2 whose backing is the previous point, opened
    as ``target`` spells it) every block of ``source`` that differs from the previous
    point, found the way ``plan`` says. Returns the new digest table (None when it
    could not be completed) and what was read and written."""
    raw_source = source.fmt == "raw" and source.protocol in ("file", "host_device")
    bitmap = (source, plan.source_bitmap) if plan.source_bitmap else None
    session = BlockSession(
        target, source=None if raw_source else source, bitmap=bitmap, workdir=workdir
    )
    with session:
        if bitmap is not None:
            assert session.bitmap_address is not None
            plan.dirty = nbdmap.dirty_extents(session.bitmap_address, bitmap[1])
        src_path = source.filename if raw_source else str(session.source_path)
        assert session.target_path is not None
        outcome = _copy(
            plan,
            src_path,
            str(session.target_path),
            source,
            disk_size,
            on_progress,
            should_stop,
            cancelled,
        )
        session.synced = True  # _copy fsynced the target through its view
        return outcome


def _copy(
    plan: Plan,
    src_path: str,
    dst_path: str,
    source: ImageSpec,
    disk_size: int,
    on_progress: Callable[[float], None] | None,
    should_stop: Callable[[], bool] | None,
    cancelled: Callable[[], JobCancelled] | None,
) -> CopyOutcome:
    count = block_count(disk_size)
    every = plan.rung in ("digest", "compare")
    dirty_blocks = _blocks_of(plan.dirty, disk_size) if plan.dirty is not None else None
    blocks = list(range(count)) if every or dirty_blocks is None else dirty_blocks
    dirty_set = set(dirty_blocks) if (plan.checking and dirty_blocks is not None) else None
    zero = _zero_blocks(source, disk_size)
    prev = plan.table
    table = prev.copy() if prev is not None else DigestTable.empty(disk_size)
    out = CopyOutcome(table=None)
    per_run = READ_SIZE // BLOCK_SIZE
    # blocks the allocation map calls zeros are never read; the others in long reads
    zero_part = [i for i in blocks if i in zero]
    data_part = [i for i in blocks if i not in zero]
    src = os.open(src_path, os.O_RDONLY)
    dst = os.open(dst_path, os.O_RDWR)
    read_sequentially(src)
    done = 0
    try:
        for part, reads in ((zero_part, False), (data_part, True)):
            for first, n in _runs(part, per_run):
                if should_stop is not None and should_stop():
                    raise cancelled() if cancelled else JobCancelled("the backup was cancelled")
                offset = first * BLOCK_SIZE
                length = min(n * BLOCK_SIZE, disk_size - offset)
                data = _pread_full(src, length, offset) if reads else None
                if data is not None:
                    out.bytes_read += length
                # the compare rung reads what the previous point holds there (the new
                # file is still empty, so the view shows its backing chain)
                previous = _pread_full(dst, length, offset) if plan.rung == "compare" else None
                for k in range(n):
                    _one_block(
                        first + k, k, length, data, previous, plan, prev, table, dirty_set, dst, out
                    )
                done += n
                if on_progress is not None and blocks:
                    on_progress(100.0 * done / len(blocks))
        os.fsync(dst)
    finally:
        os.close(src)
        os.close(dst)
    out.table = table if (prev is not None or every) else None
    return out


def _one_block(
    i: int,
    k: int,
    length: int,
    data: bytes | None,
    previous: bytes | None,
    plan: Plan,
    prev: DigestTable | None,
    table: DigestTable,
    dirty_set: set[int] | None,
    dst: int,
    out: CopyOutcome,
) -> None:
    """Hash block ``i`` (the ``k``-th of a run read as ``data``; None: zeros), decide
    whether it changed, and write it (or a zero cluster) when it did."""
    lo = k * BLOCK_SIZE
    size = min(BLOCK_SIZE, length - lo)
    block = None if data is None else memoryview(data)[lo : lo + size]
    digest = zero_digest(size) if block is None else block_digest(block)
    if previous is not None:
        changed = previous[lo : lo + size] != (bytes(size) if block is None else block)
    elif prev is not None:
        changed = prev.get(i) != digest
    else:
        changed = True
    table.set(i, digest)
    if not changed:
        return
    out.changed_bytes += size
    if dirty_set is not None and i not in dirty_set:
        out.missed_blocks += 1
        if len(out.missed_examples) < 5:
            out.missed_examples.append(i * BLOCK_SIZE)
    pos = i * BLOCK_SIZE
    if block is None or digest == zero_digest(size):
        zero_range(dst, pos, size)
        return
    view = block
    while view:
        view = view[os.pwrite(dst, view, pos + (size - len(view))) :]
    out.bytes_written += size


def table_of_image(
    image: ImageSpec,
    disk_size: int,
    *,
    should_stop: Callable[[], bool] | None = None,
    cancelled: Callable[[], JobCancelled] | None = None,
) -> DigestTable:
    """The digest table of a finished point, read back after the source was released:
    what a full records for the next incremental.

    A full as qemu-img writes it keeps each cluster's bytes as they are in its own
    file: the allocation map then says where (``_file_layout``), and the guest's bytes
    are read from the file itself, at the disk's speed. Anything else (compressed
    clusters, a backing file, no map) is read through a read-only view of the image
    (qemu-storage-daemon's FUSE export), which costs a round trip through the kernel
    and the daemon for every 128 KiB: 8 s a GiB on a VM whose disk reads 1 GiB in 1 s."""
    try:
        extents: list[qemu_img.MapExtent] | None = qemu_img.map_image(image)
    except ToolError:
        extents = None  # no map: every block is read, which is only slower
    zero = _zero_blocks_of(extents, disk_size) if extents is not None else set()
    layout = _file_layout(image, extents, disk_size) if extents is not None else None
    if layout is not None:
        fd = os.open(image.filename, os.O_RDONLY)
        try:
            return _table(disk_size, zero, partial(layout.read, fd), should_stop, cancelled)
        finally:
            os.close(fd)
    with BlockSession(None, source=image) as session:
        fd = os.open(str(session.source_path), os.O_RDONLY)
        try:
            return _table(disk_size, zero, partial(_pread_full, fd), should_stop, cancelled)
        finally:
            os.close(fd)


def _table(
    disk_size: int,
    zero: set[int],
    read: Callable[[int, int], bytes | bytearray],
    should_stop: Callable[[], bool] | None,
    cancelled: Callable[[], JobCancelled] | None,
) -> DigestTable:
    """Every block's digest, ``read(length, offset)`` giving the guest's bytes."""
    table = DigestTable.empty(disk_size)
    count = block_count(disk_size)
    per_run = READ_SIZE // BLOCK_SIZE
    for first in range(0, count, per_run):
        if should_stop is not None and should_stop():
            raise cancelled() if cancelled else JobCancelled("cancelled")
        n = min(per_run, count - first)
        offset = first * BLOCK_SIZE
        length = min(n * BLOCK_SIZE, disk_size - offset)
        if all(i in zero for i in range(first, first + n)):
            for i in range(first, first + n):
                table.set(i, zero_digest(min(BLOCK_SIZE, disk_size - i * BLOCK_SIZE)))
            continue
        data = memoryview(read(length, offset))
        for k in range(n):
            lo = k * BLOCK_SIZE
            table.set(first + k, block_digest(data[lo : lo + BLOCK_SIZE]))
    return table


@dataclass(frozen=True)
class _FileLayout:
    """Where each guest range of an image lies in its own file: (start, length,
    offset in the file, or None for a range that reads as zeros), in guest order."""

    ranges: tuple[tuple[int, int, int | None], ...]
    #: each range's start, for the search (a fragmented image has many)
    starts: tuple[int, ...]

    def read(self, fd: int, length: int, offset: int) -> bytearray:
        data = bytearray(length)  # zeros where the image holds none
        view = memoryview(data)
        end = offset + length
        i = max(0, bisect.bisect_right(self.starts, offset) - 1)
        while i < len(self.ranges) and self.ranges[i][0] < end:
            start, size, held = self.ranges[i]
            lo, hi = max(offset, start), min(end, start + size)
            if held is not None and lo < hi:
                _pread_into(fd, view[lo - offset : hi - offset], held + lo - start)
            i += 1
        return data


def _pread_into(fd: int, into: memoryview, offset: int) -> None:
    """Fill ``into`` from ``fd`` at ``offset`` (no copy through a bytes object)."""
    done = 0
    while done < len(into):
        got = os.preadv(fd, [into[done:]], offset + done)
        if not got:
            raise OSError(5, f"short read at offset {offset + done}")
        done += got


def _file_layout(
    image: ImageSpec, extents: Sequence[qemu_img.MapExtent], disk_size: int
) -> _FileLayout | None:
    """The layout when the map places every byte of data in the image's own file, as
    it is (no backing file, no compression), covering the disk once and inside the
    file; else None."""
    if image.protocol != "file" or image.backing is not None:
        return None
    try:
        file_size = os.stat(image.filename).st_size
    except OSError:
        return None
    ranges: list[tuple[int, int, int | None]] = []
    at = 0
    for e in sorted(extents, key=lambda e: e.start):
        if e.start != at or e.length < 0 or e.depth != 0:
            return None
        if e.data and not e.zero:
            if e.offset is None or not 0 <= e.offset <= file_size - e.length:
                return None  # compressed, or held elsewhere
            ranges.append((e.start, e.length, int(e.offset)))
        else:
            ranges.append((e.start, e.length, None))
        at = e.start + e.length
    if at < disk_size:
        return None
    return _FileLayout(tuple(ranges), tuple(r[0] for r in ranges))
