"""A folder of a restore mount as a tar or zip stream, written while it is sent.

``tarfile`` in stream mode (``w|``) and ``zipfile`` on an unseekable stream (data
descriptors) write into a sink; a producer thread writes the archive, the response
iterates the chunks through a small bounded queue, so neither the archive nor a
large file is ever held in memory, and a client that goes away stops the producer
at its next write.

What goes in is what ``sendense restore extract`` would restore: folders, regular
files and links that stay inside the folder (a link is stored as a link, never
followed); devices, fifos, sockets, links pointing out, and anything on another
filesystem mounted inside are left out. Every file is opened with ``O_NOFOLLOW``
on the mount's own filesystem (engine.services.file_restore).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import stat
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any

from engine.safepath import link_stays_inside

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
#: chunks waiting to be sent: bounds the memory one download holds
QUEUE_CHUNKS = 8
_DONE = object()


class _Gone(Exception):
    """The client stopped reading: the producer ends."""


class _Sink:
    """A write-only, unseekable stream feeding the queue in chunks."""

    def __init__(self, out: queue.Queue[object], stop: threading.Event) -> None:
        self.out = out
        self.stop = stop
        self.buffer = bytearray()
        self.position = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        self.position += len(data)
        if len(self.buffer) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self._put(bytes(self.buffer))
            self.buffer.clear()

    def _put(self, item: object) -> None:
        while True:
            if self.stop.is_set():
                raise _Gone
            try:
                self.out.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return False


Entries = Iterator[tuple[Any, tuple[str, ...], Any]]
Opener = Callable[[Any], Any]


def _members(base: tuple[str, ...], entries: Entries) -> Iterator[tuple[Any, str, Any, str | None]]:
    """(host path, name in the archive, lstat, link target) for what goes in."""
    root = base[-1]
    for path, parts, info in entries:
        name = "/".join((root, *parts[len(base) :]))
        mode = info.st_mode
        if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
            yield path, name, info, None
        elif stat.S_ISLNK(mode):
            try:
                target = path.readlink().as_posix()
            except OSError:
                continue
            inside = PurePosixPath(*parts[len(base) :]) if len(parts) > len(base) else None
            if inside is not None and link_stays_inside(inside, target):
                yield path, name, info, target


def _write_tar(sink: _Sink, base: tuple[str, ...], entries: Entries, opener: Opener) -> None:
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for path, name, info, link in _members(base, entries):
            member = tarfile.TarInfo(name)
            member.mode = stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)
            member.mtime = int(info.st_mtime)
            member.uid, member.gid = info.st_uid, info.st_gid
            if link is not None:
                member.type, member.linkname = tarfile.SYMTYPE, link
                tar.addfile(member)
            elif stat.S_ISDIR(info.st_mode):
                member.type = tarfile.DIRTYPE
                tar.addfile(member)
            else:
                try:
                    handle = opener(path)
                except Exception as exc:  # skipped, as extract skips what it cannot read
                    log.warning("download: %s left out: %s", name, exc)
                    continue
                with handle:
                    member.size = info.st_size
                    tar.addfile(member, _Exactly(handle, info.st_size))
    sink.flush()


def _write_zip(sink: _Sink, base: tuple[str, ...], entries: Entries, opener: Opener) -> None:
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:  # type: ignore[arg-type]
        for path, name, info, link in _members(base, entries):
            stamp = time.gmtime(max(info.st_mtime, 315532800))[:6]  # zip starts in 1980
            mode = stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)
            if stat.S_ISDIR(info.st_mode):
                member = zipfile.ZipInfo(name + "/", date_time=stamp)
                member.external_attr = (stat.S_IFDIR | mode) << 16 | 0x10
                archive.writestr(member, b"")
                continue
            member = zipfile.ZipInfo(name, date_time=stamp)
            member.compress_type = zipfile.ZIP_DEFLATED
            if link is not None:
                member.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(member, link)
                continue
            member.external_attr = (stat.S_IFREG | mode) << 16
            try:
                handle = opener(path)
            except Exception as exc:
                log.warning("download: %s left out: %s", name, exc)
                continue
            with handle, archive.open(member, mode="w", force_zip64=True) as out:
                while chunk := handle.read(CHUNK):
                    out.write(chunk)
    sink.flush()


class _Exactly:
    """A file read as exactly ``size`` bytes (what its tar header announced)."""

    def __init__(self, handle: Any, size: int) -> None:
        self.handle = handle
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n < 0 else min(n, self.left)
        data = self.handle.read(n) or b"\0" * n  # a file that shrank: zeros keep the format
        self.left -= len(data)
        return data


WRITERS = {"tar": _write_tar, "zip": _write_zip}
MEDIA_TYPES = {"tar": "application/x-tar", "zip": "application/zip"}


def stream_archive(
    kind: str, base: tuple[str, ...], entries: Entries, opener: Opener
) -> Iterator[bytes]:
    """The archive's bytes, produced by a thread while they are sent."""
    out: queue.Queue[object] = queue.Queue(maxsize=QUEUE_CHUNKS)
    stop = threading.Event()
    sink = _Sink(out, stop)

    def produce() -> None:
        try:
            WRITERS[kind](sink, base, entries, opener)
        except _Gone:
            return
        except Exception:
            # headers are sent: the archive ends short, which the client's reader sees
            log.exception("download of %s as %s failed", "/".join(base), kind)
        finally:
            with contextlib.suppress(_Gone):
                sink._put(_DONE)

    worker = threading.Thread(target=produce, name="sendense-download", daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not _DONE:
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                out.get(timeout=0.1)
        worker.join()
