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
from collections.abc import Iterator
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
def durable_output(final: Path) -> Iterator[Path]:
    """Yield the temporary path to write ``final``'s content into; when the block ends
    normally the file is published (see publish), on any exception it is removed."""
    tmp = partial_path(final)
    try:
        yield tmp
        publish(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
