"""The Linux system calls the engine makes that are not processes: cloning a file's
blocks (FICLONE), read-ahead and page-cache hints (posix_fadvise), a filesystem's
size and free space (statvfs) and whether a process of this machine still runs.

One place for each, so a service says what it wants ("clone this file", "how much
room is left") and the flags, the errno values that mean "not supported here" and
the /proc format are written down once. Processes themselves live in engine/tools.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path

#: linux/fs.h FICLONE = _IOW(0x94, 9, int)
FICLONE = 0x40049409

#: errno values of a FICLONE that this filesystem (or this pair of files) cannot do;
#: EPERM: an append-only or immutable destination, or a filesystem that refuses it
_CLONE_UNSUPPORTED = frozenset(
    {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.EPERM}
)


def clone_file(src_fd: int, dst_fd: int) -> bool:
    """Make ``dst_fd`` share ``src_fd``'s blocks (xfs, btrfs). False when this
    filesystem or this pair of files cannot; other errors (EIO, ENOSPC) are raised."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in _CLONE_UNSUPPORTED:
            return False
        raise
    return True


def can_clone(src: Path, dst: Path) -> bool:
    """Whether a new file ``dst`` can be a clone of ``src`` (a capability test: any
    error counts as "no"). ``dst`` is left for the caller to remove."""
    try:
        with open(src, "rb") as source, open(dst, "wb") as target:
            fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
    except OSError:
        return False
    return True


def read_sequentially(fd: int) -> None:
    """Tell the kernel ``fd`` is read front to back (a larger read-ahead). A hint:
    a filesystem that ignores it is fine."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


#: the most one POSIX_FADV_WILLNEED reads here (the kernel caps a call at its
#: read-ahead size): read_soon asks in steps of this
_WILLNEED_STEP = 4 * 1024 * 1024


def read_soon(path: str | Path, length: int) -> None:
    """Ask the kernel to start reading the first ``length`` bytes of ``path`` into the
    page cache now, without waiting for them: the disk works while the caller does
    something else first (a copy job's checks before a file's copy). A hint: a file
    that cannot be opened or a filesystem that ignores it is fine. Only a regular file
    is read: a link or a device node put where a file should be is left alone (opening
    one may already do something), for the caller's own checks to refuse."""
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return
            for offset in range(0, length, _WILLNEED_STEP):
                os.posix_fadvise(fd, offset, _WILLNEED_STEP, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def drop_cached(fd: int, offset: int = 0, length: int = 0) -> None:
    """Start writeback of ``fd``'s dirty pages in the range and let the kernel drop
    the clean ones (length 0: to the end). A hint; errors are ignored."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


@dataclass(frozen=True)
class Space:
    """A filesystem's size and the room an unprivileged writer has on it, in bytes."""

    total: int
    available: int


def space(path: str | Path) -> Space:
    """statvfs of the filesystem holding ``path`` (may block on a hung network
    filesystem: callers on such paths run it under a timeout)."""
    st = os.statvfs(path)
    return Space(total=st.f_blocks * st.f_frsize, available=st.f_bavail * st.f_frsize)


def free_bytes(path: str | Path) -> int:
    """The bytes an unprivileged writer may still write on ``path``'s filesystem."""
    return space(path).available


def pid_alive(pid: int) -> bool:
    """A process of this machine still runs. A zombie does not: it has ended and only
    waits to be reaped (a killed engine whose parent has not reaped it yet still
    answers ``kill(pid, 0)``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"


def is_zombie(pid: int) -> bool:
    """True when ``pid`` has ended or is a zombie nobody reaped yet."""
    return not pid_alive(pid)
