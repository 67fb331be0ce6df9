"""Root-only files and directories.

Whatever Sendense keeps that holds backup data, catalog data, credentials or a way
in (a socket, a TLS key) is reachable by its owner only, from the moment it exists:

- directories are made with :func:`make_private_dirs` (each new level ``0700`` at
  ``mkdir``, never opened up and closed afterwards);
- files are made with :func:`open_private` / :func:`write_private` (``0600`` at
  ``open``);
- programs run with umask ``077`` (:data:`PRIVATE_UMASK`, see ``engine.tools.base``),
  so what qemu-img, qemu-nbd and qemu-storage-daemon create (points, partial
  files, restored disks, sockets) is private too;
- :func:`repair_tree` takes group and other access away from an existing tree (a
  repository written by an older version, a state directory) and reports what it
  changed and what it could not: a file locked with ``chattr +i`` cannot be
  ``chmod``-ed, and is listed, never unlocked.

"Private" means no access for group and others; the owner's own bits are kept (a
point that is ``0400`` stays so).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from engine.units import plural

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
#: the umask every program Sendense starts runs with
PRIVATE_UMASK = 0o077
_OPEN_TO_OTHERS = 0o077

PathLike = str | Path


def make_private_dirs(path: PathLike) -> Path:
    """Create ``path`` and any missing parent, each new one ``0700``; existing ones are
    left as they are (a repository root or ``/srv`` belongs to the operator)."""
    target = Path(path)
    missing: list[Path] = []
    probe = target
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            if not directory.is_dir():
                raise
    if not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(target))
    return target


def make_private_dir(path: PathLike) -> Path:
    """A directory of Sendense's own (state dir, mount root, exports…): created
    ``0700`` with its missing parents, and closed to others if it already existed."""
    target = make_private_dirs(path)
    tighten(target)
    return target


def tighten(path: PathLike) -> bool:
    """Take group and other access away from one file or directory (never following a
    symbolic link). Returns True when its mode changed; raises OSError when it cannot."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not info.st_mode & _OPEN_TO_OTHERS:
        return False
    os.chmod(path, stat.S_IMODE(info.st_mode) & ~_OPEN_TO_OTHERS)
    return True


def open_private(path: PathLike, flags: int = os.O_WRONLY | os.O_TRUNC) -> int:
    """``os.open`` that creates the file ``0600`` (and closes an existing one to
    others); returns the descriptor."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        mode = os.fstat(fd).st_mode
        if mode & _OPEN_TO_OTHERS:
            os.fchmod(fd, stat.S_IMODE(mode) & ~_OPEN_TO_OTHERS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: PathLike, data: bytes | str) -> None:
    """Write a small file (a pidfile, a key) that is ``0600`` from its first byte."""
    raw = data.encode() if isinstance(data, str) else data
    fd = open_private(path)
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


@dataclass
class ModeRepair:
    """What :func:`repair_tree` did."""

    #: files and directories whose group/other access was taken away
    fixed: int = 0
    #: open to others but locked (``chattr +i``): kept as they are, never unlocked
    locked: list[str] = field(default_factory=list)
    #: open to others and not changeable for another reason: (path, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: lsattr said this filesystem has no flags (NFS, CIFS): no need to ask per file
    flags_unsupported: bool = field(default=False, repr=False)

    def merge(self, other: ModeRepair) -> None:
        self.fixed += other.fixed
        self.locked += other.locked
        self.failed += other.failed
        self.flags_unsupported |= other.flags_unsupported

    @property
    def clean(self) -> bool:
        return not self.locked and not self.failed

    def summary(self) -> str:
        """One line for a test report or an event."""
        parts = [f"closed {plural(self.fixed, 'file')} or folder(s) to other users"]
        if self.locked:
            parts.append(
                f"{len(self.locked)} locked (chattr +i) kept their mode until the lock ends: "
                + ", ".join(self.locked[:3])
                + (" …" if len(self.locked) > 3 else "")
            )
        if self.failed:
            path, reason = self.failed[0]
            parts.append(f"{len(self.failed)} could not be changed ({path}: {reason})")
        return "; ".join(parts)


def _fix_one(path: str, result: ModeRepair) -> None:
    try:
        if tighten(path):
            result.fixed += 1
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno == errno.EPERM and _is_locked(path, result):
            result.locked.append(path)
        else:
            result.failed.append((path, exc.strerror or str(exc)))


def _is_locked(path: str, result: ModeRepair) -> bool:
    """Is ``path`` immutable (the reason root may not chmod it)? Asked of lsattr only
    while the filesystem has flags at all (a root-squashed NFS share refuses every
    chmod: one question answers for the whole tree)."""
    from engine.tools.attrs import ImmutableUnsupported, is_immutable
    from engine.tools.base import ToolError

    if result.flags_unsupported:
        return False
    try:
        return is_immutable(path)
    except ImmutableUnsupported:
        result.flags_unsupported = True
        return False
    except ToolError:
        return False


def repair_tree(root: PathLike, *, skip_mounts: bool = True) -> ModeRepair:
    """Close ``root`` and everything under it to group and others (see the module
    doc). Symbolic links are neither followed nor changed; with ``skip_mounts`` a
    directory that is another filesystem's mount point is left alone, and not entered."""
    result = ModeRepair()
    top = os.fspath(root)
    if not os.path.isdir(top) or os.path.islink(top):
        return result
    _fix_one(top, result)
    for current, dirs, files in os.walk(top, followlinks=False):
        keep = []
        for name in dirs:
            full = os.path.join(current, name)
            if os.path.islink(full) or (skip_mounts and os.path.ismount(full)):
                continue
            _fix_one(full, result)
            keep.append(name)
        dirs[:] = keep
        for name in files:
            full = os.path.join(current, name)
            with contextlib.suppress(FileNotFoundError):
                mode = os.lstat(full).st_mode
                if stat.S_ISREG(mode) or stat.S_ISSOCK(mode):
                    _fix_one(full, result)
    return result


def repair_entries(paths: Iterable[PathLike]) -> ModeRepair:
    """:func:`tighten` each existing path (not recursing), collecting what failed."""
    result = ModeRepair()
    for path in paths:
        if os.path.lexists(path):
            _fix_one(os.fspath(path), result)
    return result
