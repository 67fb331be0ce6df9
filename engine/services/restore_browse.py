"""Browsing a restore mount: list a folder, search by name, open a file or folder to
read out (downloads and extraction read through here).

Browsing never passes through a symbolic link inside the backup and never crosses
onto another filesystem; paths from the operator are split into components and
``..`` is refused (engine.safepath).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from engine.safepath import UnsafePath, clean_relative, resolve_no_symlinks
from engine.services.restore_views import (
    Entry,
    FileRestoreError,
    FilesystemView,
    MountView,
    Source,
)


class MountBrowsing:
    """The browsing half of FileRestoreService (engine.services.file_restore), which
    provides ``_use``: a mount checked healthy, its use recorded."""

    if TYPE_CHECKING:

        def _use(self, mount_id: int) -> MountView: ...

    def _locate(self, view: MountView, path: str) -> tuple[FilesystemView, tuple[str, ...], Path]:
        parts = clean_relative(path)
        if not parts:
            raise UnsafePath("the top of a restore mount lists filesystems, not files")
        fs = view.filesystem(parts[0])
        if fs.state != "mounted" or not fs.path:
            raise FileRestoreError(f"{fs.name} is not browsable: {fs.detail}")
        try:
            target = resolve_no_symlinks(fs.path, parts[1:], allow_final_link=True)
        except FileNotFoundError:
            raise FileRestoreError(
                f"{'/'.join(parts)} does not exist in restore mount {view.id}"
            ) from None
        except NotADirectoryError:
            raise FileRestoreError(f"{'/'.join(parts[:-1])} is not a directory") from None
        return fs, parts, target

    def ls(self, mount_id: int, path: str = "") -> list[Entry]:
        """Entries of a directory (dirs first, then by name); "" lists the filesystems."""
        view = self._use(mount_id)
        if not clean_relative(path):
            return [
                Entry(
                    name=fs.name,
                    path=fs.name,
                    kind="dir" if fs.state == "mounted" else "filesystem",
                    size=fs.size,
                    mtime=None,
                    detail=fs.description + (f": {fs.detail}" if fs.detail else ""),
                )
                for fs in view.filesystems
            ]
        _, parts, target = self._locate(view, path)
        info = os.lstat(target)
        if stat.S_ISLNK(info.st_mode):
            raise UnsafePath(f"{'/'.join(parts)} is a symbolic link; links are not followed")
        if not stat.S_ISDIR(info.st_mode):
            return [_entry(target, "/".join(parts))]
        entries = []
        with os.scandir(target) as it:
            for item in it:
                entries.append(_entry(Path(item.path), "/".join((*parts, item.name))))
        entries.sort(key=lambda e: (e.kind != "dir", e.name))
        return entries

    def search(
        self, mount_id: int, pattern: str, path: str = "", *, limit: int = 1000
    ) -> list[Entry]:
        """Entries whose name matches ``pattern`` (shell wildcards, case-insensitive;
        a plain word matches as a substring) under ``path``."""
        view = self._use(mount_id)
        wildcard = any(ch in pattern for ch in "*?[")
        needle = pattern.lower() if wildcard else f"*{pattern.lower()}*"
        roots: list[tuple[Path, tuple[str, ...]]] = []
        if clean_relative(path):
            _, parts, target = self._locate(view, path)
            roots.append((target, parts))
        else:
            roots += [(Path(fs.path), (fs.name,)) for fs in view.filesystems if fs.path]
        found: list[Entry] = []
        for top, parts in roots:
            for item_path, rel in _walk(top, parts):
                if fnmatch.fnmatchcase(rel[-1].lower(), needle):
                    found.append(_entry(item_path, "/".join(rel)))
                    if len(found) >= limit:
                        return found
        return found

    def source(self, mount_id: int, path: str) -> Source:
        """The file or folder at ``path`` of a mounted point, to be read out as it is
        (an API download), checked as ``extract`` checks a selection: the filesystem
        named first, no ``..``, no link followed on the way; a link itself is refused
        too (it is not followed: where it points may be anywhere on this host)."""
        view = self._use(mount_id)
        fs, parts, target = self._locate(view, path)
        info = os.lstat(target)
        if stat.S_ISLNK(info.st_mode):
            raise UnsafePath(
                f"{'/'.join(parts)} is a symbolic link; links inside a backup are not followed",
                hint=f"it points to {os.readlink(target)!r}: ask for that path instead",
            )
        return Source(target, parts, os.lstat(fs.path).st_dev, info)  # type: ignore[arg-type]

    def walk_source(self, source: Source) -> Iterator[tuple[Path, tuple[str, ...], os.stat_result]]:
        """Everything below the folder ``source``, each parent before its children, as
        (host path, path parts, lstat): links are not followed, another filesystem
        mounted inside is not entered."""
        for path, parts in _walk(source.path, source.parts):
            with contextlib.suppress(FileNotFoundError):
                yield path, parts, os.lstat(path)

    def open_source_file(self, path: Path, device: int) -> BinaryIO:
        """A regular file below a restore mount opened for reading, never through a link
        (``O_NOFOLLOW``) nor on another filesystem than ``device``."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(
                    f"{path.name} is a symbolic link; links are not followed"
                ) from None
            raise FileRestoreError(f"cannot read {path.name}: {exc.strerror or exc}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_dev != device:
            os.close(fd)
            raise FileRestoreError(f"{path.name} is not a regular file of this restore point")
        return os.fdopen(fd, "rb")


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _entry(path: Path, virtual: str) -> Entry:
    info = os.lstat(path)
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_ISREG(mode):
        kind = "file"
    elif stat.S_ISLNK(mode):
        kind = "symlink"
    else:
        kind = "other"
    return Entry(
        name=path.name,
        path=virtual,
        kind=kind,
        size=info.st_size if kind in ("file", "symlink") else 0,
        mtime=_ts(info.st_mtime),
        mode=stat.S_IMODE(mode),
        link_target=os.readlink(path) if kind == "symlink" else None,
    )


def _walk(top: Path, parts: tuple[str, ...]) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """Every entry below ``top`` without following links or leaving its filesystem."""
    dev = os.lstat(top).st_dev
    stack = [(top, parts)]
    while stack:
        directory, rel = stack.pop()
        try:
            with os.scandir(directory) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for item in items:
            child = (*rel, item.name)
            yield Path(item.path), child
            if (
                item.is_dir(follow_symlinks=False)
                and item.stat(follow_symlinks=False).st_dev == dev
            ):
                stack.append((Path(item.path), child))
