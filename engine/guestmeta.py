"""What a file of a mounted backup is: its kind, owner, mode, times, link target,
extended attributes (POSIX ACLs and file capabilities are xattrs too), hard-link
identity and, for a sparse file, where its data lies.

Pure reading, shared by the extraction into a folder (engine.services.restore_extract)
and the archive writers: nothing here writes, and nothing here decides what a
restore does with what it read.

Everything is read relative to an open directory file descriptor and never through a
link: ``lstat`` semantics (``follow_symlinks=False``), ``O_NOFOLLOW`` on every open,
and a directory is opened with ``O_DIRECTORY`` so a link planted in its place fails
instead of being entered. A backup is a guest's filesystem: any name in it may be a
link to anywhere on this host.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

#: kinds of entry, as the result and the archive writers name them
FILE, DIR, SYMLINK, FIFO, CHAR, BLOCK, SOCKET = (
    "file",
    "dir",
    "symlink",
    "fifo",
    "char",
    "block",
    "socket",
)
SPECIAL_KINDS = frozenset({FIFO, CHAR, BLOCK, SOCKET})

#: xfs shows root its on-disk copy of a POSIX ACL under these names, beside the
#: system.posix_acl_* that are the ACL: not the guest's data, and never written
FILESYSTEM_OWN_XATTRS = frozenset({"trusted.SGI_ACL_FILE", "trusted.SGI_ACL_DEFAULT"})

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def kind_of(mode: int) -> str:
    """The kind of entry an ``st_mode`` describes."""
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISCHR(mode):
        return CHAR
    if stat.S_ISBLK(mode):
        return BLOCK
    return SOCKET


@dataclass(frozen=True)
class GuestMeta:
    """One entry of a mounted backup, as the guest had it."""

    name: str
    kind: str
    #: permission bits including setuid, setgid and sticky (``S_IMODE``)
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    #: the device number a char/block device node stands for (0 otherwise)
    rdev: int
    #: hard-link identity: (st_dev, st_ino) is the same for every name of one inode
    dev: int
    ino: int
    nlink: int
    #: where a symbolic link points, read with readlink and never followed
    link_target: str | None
    #: every extended attribute readable here (user.*, trusted.*, security.* incl.
    #: security.capability, system.posix_acl_access/default), sorted by name
    xattrs: tuple[tuple[str, bytes], ...]
    #: bytes the file occupies on its filesystem (st_blocks * 512)
    allocated: int = 0

    @property
    def identity(self) -> tuple[int, int]:
        """Equal for every name of the same inode (hard links)."""
        return (self.dev, self.ino)

    @property
    def is_hard_linked(self) -> bool:
        """A non-directory with more than one name."""
        return self.kind != DIR and self.nlink > 1

    @property
    def is_sparse(self) -> bool:
        """A regular file taking less room than its size: it has holes."""
        return self.kind == FILE and self.allocated < self.size


def lstat_at(dir_fd: int, name: str) -> os.stat_result:
    """``lstat`` of ``name`` in the directory ``dir_fd`` (a link is not followed)."""
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def read_meta(
    dir_fd: int,
    name: str,
    info: os.stat_result | None = None,
    *,
    unlisted_xattrs: tuple[str, ...] = (),
) -> GuestMeta:
    """The metadata of ``name`` in the directory ``dir_fd``, never following it.

    ``unlisted_xattrs`` are asked for by name beside the listed ones (ntfs-3g holds a
    file's ACL and DOS attributes under names it does not list)."""
    if info is None:
        info = lstat_at(dir_fd, name)
    kind = kind_of(info.st_mode)
    target = os.readlink(name, dir_fd=dir_fd) if kind == SYMLINK else None
    return GuestMeta(
        name=name,
        kind=kind,
        mode=stat.S_IMODE(info.st_mode),
        uid=info.st_uid,
        gid=info.st_gid,
        size=info.st_size if kind in (FILE, SYMLINK) else 0,
        atime_ns=info.st_atime_ns,
        mtime_ns=info.st_mtime_ns,
        rdev=info.st_rdev if kind in (CHAR, BLOCK) else 0,
        dev=info.st_dev,
        ino=info.st_ino,
        nlink=info.st_nlink,
        link_target=target,
        xattrs=read_xattrs(dir_fd, name, unlisted_xattrs),
        allocated=info.st_blocks * 512,
    )


def _at_path(dir_fd: int, name: str) -> str:
    """A path naming ``name`` in the open directory ``dir_fd`` for the calls that take
    no ``dir_fd`` (the xattr ones): ``/proc/self/fd/N`` resolves to that very directory
    (not to whatever its path names by now), and ``name`` is then looked up in it
    with the caller's ``follow_symlinks=False``."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def read_xattrs(
    dir_fd: int, name: str, unlisted: tuple[str, ...] = ()
) -> tuple[tuple[str, bytes], ...]:
    """Every extended attribute of ``name`` (not of what a link points to), sorted,
    but a filesystem's own copies of what another name holds (FILESYSTEM_OWN_XATTRS).

    A filesystem without xattrs gives none; an attribute that vanishes between
    listing and reading is left out."""
    path = _at_path(dir_fd, name)
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    found = []
    for key in sorted((set(names) | set(unlisted)) - FILESYSTEM_OWN_XATTRS):
        try:
            found.append((key, os.getxattr(path, key, follow_symlinks=False)))
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    return tuple(found)


def open_dir_at(dir_fd: int | None, name: str) -> int:
    """Open the directory ``name`` (in ``dir_fd``, or an absolute path when None) for
    reading; a link in its place fails (``O_NOFOLLOW | O_DIRECTORY``)."""
    if dir_fd is None:
        return os.open(name, _OPEN_DIR)
    return os.open(name, _OPEN_DIR, dir_fd=dir_fd)


def open_file_at(dir_fd: int, name: str, expected: GuestMeta | None = None) -> int:
    """Open the regular file ``name`` in ``dir_fd`` for reading, never through a link.

    Raises OSError(ELOOP) for a link, OSError(EINVAL) when what was opened is not a
    regular file or is not the inode ``expected`` described (it was replaced between
    reading its metadata and opening it)."""
    fd = os.open(name, _OPEN_FILE, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or (
            expected is not None and (info.st_dev, info.st_ino) != expected.identity
        ):
            raise OSError(errno.EINVAL, "not the regular file that was listed", name)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def list_names(dir_fd: int) -> list[str]:
    """The names in an open directory, sorted (``.`` and ``..`` are never listed)."""
    with os.scandir(dir_fd) as entries:
        return sorted(entry.name for entry in entries)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of each stretch of a file holding data; holes are left out.

    Uses SEEK_DATA/SEEK_HOLE; a filesystem that cannot tell gives one extent (all of
    the file), which is correct, only not sparse."""
    extents: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here to the end
                break
            if exc.errno == errno.EINVAL and offset == 0:
                return [(0, size)] if size else []
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end > start:
            extents.append((start, end - start))
        offset = end
    os.lseek(fd, 0, os.SEEK_SET)
    return extents


@dataclass(frozen=True)
class WalkItem:
    """An entry met by :func:`walk`: its path below the top (names), the open
    directory holding it (valid only until the walk moves on) and its metadata."""

    parts: tuple[str, ...]
    parent_fd: int
    meta: GuestMeta


def walk(top_fd: int, device: int, parts: tuple[str, ...] = ()) -> Iterator[WalkItem]:
    """Everything below the open directory ``top_fd``, each directory before its
    contents, names sorted. Links are not followed and a directory on another device
    than ``device`` (a filesystem mounted inside) is yielded but not entered."""
    for name in list_names(top_fd):
        try:
            meta = read_meta(top_fd, name)
        except FileNotFoundError:  # gone since the listing (a live mount)
            continue
        yield WalkItem((*parts, name), top_fd, meta)
        if meta.kind == DIR and meta.dev == device:
            child = open_dir_at(top_fd, name)
            try:
                yield from walk(child, device, (*parts, name))
            finally:
                os.close(child)
