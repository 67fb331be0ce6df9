"""Copying one file safely: the byte copier under copy jobs (engine.services.copy).

``copy_file`` reads in chunks and computes the sha256 in the same pass (a reader
thread, hashing here, a writer thread: I/O and hashlib release the GIL, so the three
overlap), writes into the ``.name.partial`` temporary of ``fsutil.durable_output``
and publishes it (fsync, rename, fsync of the directory) only when the checksum is
the source's recorded one. When both sides share a filesystem that can clone
(FICLONE: xfs, btrfs) the file is cloned instead (``cloned=True``).

The writer has the kernel copy each chunk from the source's page cache, where the
reader just put it (``copy_file_range``), rather than writing the hashed buffer
back out: one pass of the bytes through user space instead of two. Measured with
the cache dropped on this project's machines (ext4 on a virtual disk, 2 cores shared
with other work, 900 MiB, 8 rounds in turns): cp + sync 5.2 s, the pipeline writing
its buffers 8.8 s, the pipeline with copy_file_range 5.0 s (medians). The hash still
reads every byte; see _Writer for why the bytes copied are the bytes hashed.

Chunks are small (256 KiB) and many are in flight: measured on this project's
machines (ext4 on a virtual disk, cache dropped), 8 MiB chunks made the copy 1.3-1.4x
slower and cost 30 % more CPU than 256 KiB ones, because every chunk then leaves the CPU
caches between the read, the hash and the write; the kernel's read-ahead (the source
is read sequentially) and early writeback keep the disk busy instead.

The source is watched: a file whose size or modification time changes while it is
copied is refused (SourceChanged) rather than published half old, half new.

A copy broken off by a pause, a cancel or a read/write error keeps its partial; the
next attempt resumes from it: the partial is truncated to a whole chunk and
re-hashed (simple and safe), and if the result does not match the source the file
restarts from zero. A full destination or a source that does not match its checksum
removes the partial. ``TokenBucket`` is the bandwidth limit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import Action, SendenseError
from engine.failpoints import failpoint
from engine.fsutil import ReadAhead, durable_output
from engine.oserrors import is_no_space
from engine.platform import clone_file, drop_cached, free_bytes, read_sequentially
from engine.private import make_private_dirs, open_private
from engine.units import human_bytes

CHUNK_SIZE = 256 * 1024
#: bytes read ahead of the hashing and waiting for the writer, at most
IN_FLIGHT = 4 * 1024 * 1024
#: the writer asks the kernel to start writing back every this many bytes. Early and
#: often keeps the disk busy while the source is read, so the fsync at the end has
#: little left: measured with the cache dropped (a 1 GiB chain of 3 files, 880 + 2 x 64
#: MiB, ext4 on a virtual disk, 2 shared cores, 12 rounds in turns), 8 MiB steps took
#: 1.4-1.8 s (medians of three runs), 16 MiB 1.8-1.9 s, 64 MiB 2.0-2.4 s, 4 MiB 2.2 s
#: (cp + sync of the same files: 1.3-1.5 s); a 64 MiB file never reached a 64 MiB step
#: and was written back only by its fsync
WRITEBACK_STEP = 8 * 1024 * 1024
#: errno values of a copy_file_range this pair of files cannot do (the buffer is written)
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class CopyError(SendenseError):
    """A copy could not be made; retrying may help."""


class CopyNoSpace(CopyError):
    """The destination filled up; retrying will not help until space is freed."""


class SourceChecksumMismatch(CopyError):
    """The source file does not match its recorded checksum (bit rot or a changed file)."""


class SourceChanged(CopyError):
    """The source file changed while it was copied; a later attempt may find it still."""


class Withdrawn(Exception):
    """Raised by a ``before_publish`` hook: the copy is not wanted any more (a copy job's
    base failed its check while this file was copied on top of it). The partial is
    removed and nothing is published."""


class TokenBucket:
    """A bandwidth limit: ``take(n)`` sleeps so the average stays under ``rate`` B/s."""

    def __init__(
        self,
        rate: int,
        *,
        burst: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("a bandwidth limit must be positive")
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else max(rate // 4, 64 * 1024))
        self.tokens = self.capacity
        self._monotonic = monotonic
        self._sleep = sleep
        self._last = monotonic()

    def take(self, n: int) -> None:
        now = self._monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now
        self.tokens -= n
        if self.tokens < 0:
            self._sleep(-self.tokens / self.rate)


@dataclass(frozen=True)
class FileCopyResult:
    checksum: str
    size: int
    cloned: bool
    resumed_from: int


def _hash_prefix(fd: int, length: int, chunk_size: int) -> Any:
    digest = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    offset = 0
    while offset < length:
        n = os.preadv(fd, [view[: min(chunk_size, length - offset)]], offset)
        if n <= 0:
            break
        digest.update(view[:n])
        offset += n
    return digest


class _Writer(threading.Thread):
    """Writes filled buffers to the partial file while the next chunk is read and hashed.

    With ``src_fd`` the kernel copies each chunk (``copy_file_range``) from the
    source's page cache, where the reader has just put it, instead of this thread
    writing the hashed buffer: one copy of the bytes fewer through user space. The
    bytes written are then the very pages the hash read, a moment later; a source
    written to in between is refused as changed (its size or mtime moved,
    _check_unchanged). A filesystem pair that cannot (EXDEV, EINVAL, ENOSYS,
    EOPNOTSUPP: across filesystems on older kernels, some network filesystems) gets
    the buffer written instead, from then on."""

    def __init__(
        self,
        fd: int,
        free: queue.Queue[bytearray],
        offset: int,
        src_fd: int | None,
        *,
        drop_behind: bool,
    ) -> None:
        super().__init__(name="sendense-copy-writer", daemon=True)
        self.fd = fd
        self.src_fd = src_fd
        self.free = free
        self.todo: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self.written = offset
        self._flushed = offset
        self._dropped = offset
        self.drop_behind = drop_behind
        self.error: OSError | None = None

    def _put(self, buf: bytearray, n: int) -> None:
        at = self.written
        if self.src_fd is not None:
            try:
                while at < self.written + n:
                    done = os.copy_file_range(self.src_fd, self.fd, self.written + n - at, at, at)
                    if done == 0:  # the source ended early: it changed (refused later)
                        break
                    at += done
                return
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                self.src_fd = None
        view = memoryview(buf)[at - self.written : n]
        while view:
            done = os.pwrite(self.fd, view, at)
            view = view[done:]
            at += done

    def run(self) -> None:
        while True:
            item = self.todo.get()
            if item is None:
                return
            buf, n = item
            if self.error is None:
                try:
                    self._put(buf, n)
                    self.written += n
                    if self.written - self._flushed >= WRITEBACK_STEP:
                        # start writeback of what is written so far (async), so the
                        # final fsync has little left and dirty pages stay bounded
                        drop_cached(self.fd, self._flushed, self.written - self._flushed)
                        if self.drop_behind and self._flushed > self._dropped:
                            # the step before is on disk by now: its pages are clean
                            # and go here, not all at once at the end (50 ms for a
                            # 900 MiB file, between two files of a copy job)
                            drop_cached(self.fd, self._dropped, self._flushed - self._dropped)
                            self._dropped = self._flushed
                        self._flushed = self.written
                except OSError as exc:
                    self.error = exc
            self.free.put(buf)


def _pipe(
    src_fd: int,
    dst_fd: int,
    digest: Any,
    offset: int,
    total: int,
    way: _Way,
) -> int:
    """Three stages: a reader thread, hashing here, a writer thread (I/O and hashlib
    release the GIL, so the three overlap). Returns the offset reached (the source's
    end as it was read)."""
    buffers = max(4, IN_FLIGHT // way.chunk_size)
    ahead = ReadAhead(src_fd, way.chunk_size, buffers=buffers, name="sendense-copy-reader")
    # the writer hands each buffer back to the reader once it is on disk
    # copy_file_range clones where the filesystem can (xfs, btrfs: the kernel tries a
    # remap first), so it is used only when a clone was acceptable and has already
    # failed for this pair: then it copies bytes; a caller that asked for separate
    # blocks (try_clone False) gets the buffers written
    kernel = way.kernel_copy and way.try_clone
    writer = _Writer(
        dst_fd, ahead.free, offset, src_fd if kernel else None, drop_behind=way.drop_cache
    )
    writer.start()
    done = offset
    try:
        for buf, n in ahead:
            if writer.error is not None:
                raise writer.error
            digest.update(memoryview(buf)[:n])
            if way.bucket is not None:
                way.bucket.take(n)
            writer.todo.put((buf, n))
            done += n
            if way.progress is not None:
                way.progress(done, total)
    finally:
        ahead.close()
        writer.todo.put(None)
        writer.join()
    if writer.error is not None:
        raise writer.error
    return done


def copy_file(
    src: Path,
    dst: Path,
    *,
    expected_checksum: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    resume: bool = True,
    try_clone: bool = True,
    progress: Callable[[int, int], None] | None = None,
    bucket: TokenBucket | None = None,
    label: str | None = None,
    drop_cache: bool = False,
    kernel_copy: bool = True,
    before_publish: Callable[[], None] | None = None,
) -> FileCopyResult:
    """Copy ``src`` to ``dst`` safely; returns the sha256 of the bytes written.

    ``progress(done, total)`` is called after every chunk (it may raise to stop the
    copy: a JobCancelled keeps the partial for a resume). ``label`` names the
    destination in messages. ``before_publish()`` is called once the partial is
    complete, fsynced and its checksum matched, just before it gets its name: it may
    wait (a copy job settles the check of the file before), and raise Withdrawn to
    drop the copy. Raises CopyNoSpace, SourceChecksumMismatch or CopyError; on those
    the partial is removed (a plain read/write error keeps it for a resume).
    """
    where = label or str(dst.parent)
    make_private_dirs(dst.parent)
    total = src.stat().st_size
    way = _Way(
        expected_checksum,
        chunk_size,
        try_clone,
        progress,
        bucket,
        drop_cache,
        kernel_copy,
        before_publish,
    )
    try:
        try:
            return _copy_once(src, dst, total, way, resume=resume)
        except _StalePartial:
            # the partial we resumed from was not what the source holds: start over
            return _copy_once(src, dst, total, way, resume=False)
    except OSError as exc:
        if is_no_space(exc):
            raise _no_space(dst, where, total) from None
        raise CopyError(
            f"copying {src} to {where} failed: {exc.strerror or exc}",
            hint="check the source and destination storage; the copy resumes on retry",
        ) from None


@dataclass(frozen=True)
class _Way:
    """How one file is copied (copy_file's options, passed on unchanged)."""

    expected_checksum: str | None
    chunk_size: int
    try_clone: bool
    progress: Callable[[int, int], None] | None
    bucket: TokenBucket | None
    drop_cache: bool
    kernel_copy: bool
    before_publish: Callable[[], None] | None


class _StalePartial(Exception):
    """A resumed copy's checksum did not match: the partial held other bytes."""


def _worth_resuming(exc: BaseException) -> bool:
    """Whether a partial stays after ``exc`` for the next attempt to resume from: not
    after a full destination, a source that does not match, or a stale partial."""
    if isinstance(
        exc, (CopyNoSpace, SourceChecksumMismatch, SourceChanged, _StalePartial, Withdrawn)
    ):
        return False
    return not is_no_space(exc)


def _copy_once(src: Path, dst: Path, total: int, way: _Way, *, resume: bool) -> FileCopyResult:
    src_fd = os.open(src, os.O_RDONLY)
    try:
        read_sequentially(src_fd)
        before = os.fstat(src_fd)
        with durable_output(dst, keep_partial=_worth_resuming) as part:
            _check_unchanged(src, total, before, before.st_size)
            dst_fd, offset, digest = _open_partial(part, src_fd, total, way, resume=resume)
            cloned = digest is None
            try:
                if digest is None:
                    # the clone shares the source's blocks: hashing it is hashing the source
                    digest = _hash_prefix(dst_fd, total, way.chunk_size)
                    reached = os.fstat(dst_fd).st_size
                    if way.progress is not None:
                        way.progress(total, total)
                else:
                    reached = _pipe(src_fd, dst_fd, digest, offset, total, way)
                _check_unchanged(src, total, before, reached, os.fstat(src_fd))
                os.fsync(dst_fd)
                if way.drop_cache:
                    drop_cached(dst_fd)
            finally:
                os.close(dst_fd)
            checksum = digest.hexdigest()
            if way.expected_checksum and checksum != way.expected_checksum:
                if offset > 0:
                    raise _StalePartial
                raise SourceChecksumMismatch(
                    f"{src} does not match its recorded checksum (read sha256 "
                    f"{checksum[:16]}…, recorded {way.expected_checksum[:16]}…): the source "
                    "changed or rotted, so it was not copied",
                    action=Action(
                        "verify_source",
                        "verify the source and restore this point from a copy that is still good",
                    ),
                )
            failpoint("copy.after_write")
            if way.before_publish is not None:
                way.before_publish()
        return FileCopyResult(checksum=checksum, size=total, cloned=cloned, resumed_from=offset)
    finally:
        os.close(src_fd)


def _open_partial(
    part: Path, src_fd: int, total: int, way: _Way, *, resume: bool
) -> tuple[int, int, Any]:
    """Open the partial: ``(fd, offset, digest)``. Resuming, the partial is cut to a
    whole chunk, that prefix hashed and both files positioned after it; fresh, it is
    created empty, or as a clone of the source (then ``digest`` is None)."""
    if resume and part.exists():
        dst_fd = os.open(part, os.O_RDWR)
        try:
            have = os.fstat(dst_fd).st_size
            chunk = way.chunk_size
            offset = min(have - have % chunk, total - total % chunk)
            os.ftruncate(dst_fd, offset)
            digest = _hash_prefix(dst_fd, offset, chunk)
            os.lseek(dst_fd, offset, os.SEEK_SET)
            os.lseek(src_fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(dst_fd)
            raise
        return dst_fd, offset, digest
    dst_fd = open_private(part, os.O_RDWR | os.O_TRUNC)
    try:
        if way.try_clone and total > 0 and clone_file(src_fd, dst_fd):
            return dst_fd, 0, None
    except BaseException:
        os.close(dst_fd)
        raise
    return dst_fd, 0, hashlib.sha256()


def _check_unchanged(
    src: Path,
    total: int,
    before: os.stat_result,
    reached: int,
    after: os.stat_result | None = None,
) -> None:
    """Refuse a source that changed while it was copied: its size is not the size
    the copy started from, the bytes read end elsewhere, or it was written to (its
    modification time moved). What was read is then neither the old file nor the new."""
    now = after or before
    if now.st_size == total == reached and now.st_mtime_ns == before.st_mtime_ns:
        return
    if now.st_size != total or reached != total:
        what = (
            f"its size went from {human_bytes(total)} to {human_bytes(max(now.st_size, reached))}"
        )
    else:
        what = "it was written to"
    raise SourceChanged(
        f"{src} changed while it was being copied ({what}), so the copy was not kept",
        hint="something else writes to this file; copy it again once it has stopped",
    )


def _no_space(dst: Path, where: str, total: int) -> CopyNoSpace:
    free = 0
    with contextlib.suppress(OSError):
        free = free_bytes(dst.parent)
    return CopyNoSpace(
        f"no space left on {where}: {dst.name} needs {human_bytes(total)}, the filesystem "
        f"filled up with {human_bytes(free)} free; the partial file was removed and the "
        "source is untouched",
        hint="free space on the destination (or pick another one) and re-run the copy",
    )
