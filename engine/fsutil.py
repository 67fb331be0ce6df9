"""Durable file writes: temporary name, fsync, rename, fsync of the directory.

A backup, a consolidated full, a restored disk or a copied file is first written
under a hidden ``.name.partial`` name in its final directory, flushed to disk, then
renamed over the final name, and the directory is flushed so the rename itself
survives a crash. A reader therefore sees either no file or a complete one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or unlink in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partial_name(name: str) -> str:
    """The hidden name a file is written under before it is complete."""
    return f".{name}.partial"


def partial_path(path: Path) -> Path:
    """``path``'s temporary sibling (see partial_name)."""
    return path.with_name(partial_name(path.name))


def publish(tmp: Path, final: Path) -> None:
    """Make a complete temporary file durable under its final name: fsync it, rename
    it over ``final`` and fsync the directory."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def place_new(tmp: Path, final: Path) -> None:
    """Give a complete (already fsynced) temporary file its final name without ever
    replacing a file there: a hard link, which fails atomically with FileExistsError
    when ``final`` exists, then the temporary name is removed. A filesystem without
    hard links (a CIFS share without unix extensions) falls back to check-then-rename.
    The caller fsyncs the directory afterwards."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if final.exists() or final.is_symlink():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final)) from None
        os.rename(tmp, final)
        return
    try:
        tmp.unlink()
    except BaseException:
        # two names for one file: drop the new one, the caller discards the partial
        with contextlib.suppress(FileNotFoundError):
            final.unlink()
        raise


@contextlib.contextmanager
def durable_output(
    final: Path, *, keep_partial: Callable[[BaseException], bool] | None = None
) -> Iterator[Path]:
    """Yield the temporary path to write ``final``'s content into; when the block ends
    normally the file is published (see publish), on an exception it is removed —
    unless ``keep_partial(exc)`` says the partial is worth resuming from (a copy
    paused or broken off by a read error keeps what it wrote)."""
    tmp = partial_path(final)
    try:
        yield tmp
        publish(tmp, final)
    except BaseException as exc:
        if keep_partial is None or not keep_partial(exc):
            discard(tmp)
        raise


@contextlib.contextmanager
def shared_place_output(final: Path, *, replace: bool) -> Iterator[Path]:
    """durable_output for a place others may write to at the same time (a restore's
    target): the partial has a name of its own (two writers never share one), and
    without ``replace`` the file takes its name only if nothing is there by then
    (FileExistsError, the file there left as it is). The partial is removed on any
    exception: nothing resumes it."""
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if replace:
            publish(tmp, final)
        else:
            fsync_file(tmp)
            place_new(tmp, final)
            fsync_dir(final.parent)
    except BaseException:
        discard(tmp)
        raise


def discard(tmp: Path) -> None:
    """Remove a temporary file and flush its directory, so the removal survives a
    crash too; a failure to do either is left for the next writer to clean up."""
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    with contextlib.suppress(OSError):
        fsync_dir(tmp.parent)


class ReadAhead:
    """Reads a file descriptor on a thread into a few reusable buffers, so the disk
    stays busy while the caller hashes (and maybe writes) the previous chunk.

    Iterate for ``(buffer, length)``; hand each buffer back to ``free`` when done
    with it (a writer thread may do that later). A read error is raised from the
    iteration. ``close()`` stops and joins the reader; it is safe to call twice.
    """

    def __init__(self, fd: int, chunk_size: int, buffers: int, name: str) -> None:
        self.fd = fd
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(buffers):
            self.free.put(bytearray(chunk_size))
        self._filled: queue.Queue[tuple[bytearray, int] | BaseException | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                buf = self.free.get()
                if self._stop.is_set():
                    return
                n = os.readv(self.fd, [buf])
                if n <= 0:
                    break
                self._filled.put((buf, n))
        except BaseException as exc:
            self._filled.put(exc)
            return
        self._filled.put(None)

    def __iter__(self) -> Iterator[tuple[bytearray, int]]:
        while True:
            item = self._filled.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self.free.put(bytearray(0))  # wakes the reader if it waits for a buffer
        self._thread.join()


_SYS_DEV_BLOCK = Path("/sys/dev/block")


def physical_device(path: str | Path) -> str:
    """The disk a path's bytes live on, as the ``MAJ:MIN`` of a block device.

    A loop device is followed to the filesystem under its backing file (two loop-mounted
    images on one disk are one disk), a partition or a device-mapper volume with one
    slave to the disk under it. A filesystem on no block device (tmpfs, FUSE) is its own
    device. Only /sys is read: no process, nothing opened on the repository itself."""
    return _underlying(os.stat(path).st_dev, depth=0)


def _underlying(dev: int, depth: int) -> str:
    key = f"{os.major(dev)}:{os.minor(dev)}"
    if depth > 8:  # loop over loop over loop...: stop somewhere sensible
        return key
    try:
        node = (_SYS_DEV_BLOCK / key).resolve(strict=True)
    except OSError:
        return key  # not a block device
    try:
        backing = (node / "loop" / "backing_file").read_text().strip()
    except OSError:
        backing = ""
    if backing:
        backing = backing.removesuffix(" (deleted)")
        try:
            return _underlying(os.stat(backing).st_dev, depth + 1)
        except OSError:
            return key
    parent: Path | None = None
    if (node / "partition").exists():
        parent = node.parent
    else:
        try:
            slaves = sorted((node / "slaves").iterdir())
        except OSError:
            slaves = []
        if len(slaves) == 1:
            parent = slaves[0].resolve()
    if parent is not None:
        try:
            major, minor = (parent / "dev").read_text().strip().split(":")
            return _underlying(os.makedev(int(major), int(minor)), depth + 1)
        except (OSError, ValueError):
            return key
    return key
