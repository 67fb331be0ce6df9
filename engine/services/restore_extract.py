"""Extraction: copy files and folders out of a restore mount into a destination
folder, as the ``restore.files`` job (or directly, for a caller that is one).

It never writes outside the destination and never follows a link out of the backup
(the rules are listed in engine.services.file_restore).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from engine.catalog.models import Job
from engine.errors import ValidationError
from engine.events import Event, EventBus
from engine.private import PRIVATE_DIR
from engine.safepath import UnsafePath, child_path, is_within, link_stays_inside
from engine.services.restore_browse import _walk
from engine.services.restore_views import (
    ExtractResult,
    FileRestoreError,
    FilesystemView,
    MountView,
    ProgressCallback,
)
from engine.units import plural

if TYPE_CHECKING:
    from engine.jobs import JobRunner

CHUNK = 1024 * 1024


class Extraction:
    """The extraction half of FileRestoreService (engine.services.file_restore), which
    provides the bus, the job runner, ``_use`` and ``_locate``."""

    bus: EventBus
    jobs: JobRunner | None

    if TYPE_CHECKING:

        def _use(self, mount_id: int) -> MountView: ...

        def _locate(
            self, view: MountView, path: str
        ) -> tuple[FilesystemView, tuple[str, ...], Path]: ...

    def submit_extract(
        self,
        mount_id: int,
        paths: Sequence[str],
        destination: str | Path,
        *,
        overwrite: bool = False,
        actor: str | None = None,
    ) -> Job:
        """Queue the extraction of ``paths`` as a ``restore.files`` job, after the
        checks ``extract`` makes first (the mount, every path, the destination), so a
        wrong selection is refused now rather than as a failed job."""
        if self.jobs is None:
            raise RuntimeError("this FileRestoreService was built without a job runner")
        items = self._selection(mount_id, paths)
        dest = _prepare_destination(destination)
        total = sum(_size_of(src, dev) for src, _, dev in items)
        names = ", ".join(name for _, name, _ in items[:3]) + (", ..." if len(items) > 3 else "")
        return self.jobs.submit(
            "restore.files",
            f"restore {names} to {dest}",
            {
                "mount_id": mount_id,
                "paths": list(paths),
                "destination": str(dest),
                "overwrite": overwrite,
                "actor": actor,
            },
            bytes_total=total,
            actor=actor,
        )

    def _selection(self, mount_id: int, paths: Sequence[str]) -> list[tuple[Path, str, int]]:
        """(host path, name, device of its filesystem) of each path, every one checked."""
        if not paths:
            raise ValidationError("nothing selected to extract")
        view = self._use(mount_id)
        items = []
        for path in paths:
            fs, parts, source = self._locate(view, path)
            root_dev = os.lstat(fs.path).st_dev  # type: ignore[arg-type]
            items.append((source, parts[-1], root_dev))
        return items

    def extract(
        self,
        mount_id: int,
        paths: Sequence[str],
        destination: str | Path,
        *,
        overwrite: bool = False,
        ctx: Any = None,
        on_progress: ProgressCallback | None = None,
        actor: str | None = None,
    ) -> ExtractResult:
        """Copy files/folders out of a mounted point into ``destination``."""
        items = self._selection(mount_id, paths)
        dest = _prepare_destination(destination)  # after the selection is known to be valid
        total = sum(_size_of(src, dev) for src, _, dev in items)
        copier = _Copier(dest, overwrite, total, ctx, on_progress)
        for source, name, dev in items:
            copier.copy(source, dest, name, PurePosixPath(name), dev)
        copier.finish()
        result = copier.result
        self._use(mount_id)  # a long extraction counts as use
        self.bus.publish(
            Event(
                kind="restore.extracted",
                message=(
                    f"restored {plural(result.files, 'file')}, "
                    f"{plural(result.directories, 'folder')} "
                    f"({result.bytes} bytes) to {dest}"
                    + (f"; {len(result.skipped)} skipped" if result.skipped else "")
                ),
                source="restore",
                actor=actor,
                level="warning" if result.skipped else "info",
                data={"mount_id": mount_id, **result.as_dict()},
            )
        )
        return result

    def run_extract_job(self, ctx: Any) -> dict[str, Any]:
        """Job handler (kind ``restore.files``): params mount_id, paths, destination."""
        params = ctx.params
        result = self.extract(
            int(params["mount_id"]),
            list(params["paths"]),
            params["destination"],
            overwrite=bool(params.get("overwrite", False)),
            ctx=ctx,
            actor=params.get("actor"),
        )
        return result.as_dict()


def _explain_write_error(exc: OSError, where: Path) -> FileRestoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FileRestoreError(
            f"the destination {where} is full; the file being written was removed",
            hint="free space there or choose another destination; files already "
            "restored are complete",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FileRestoreError(
            f"cannot write to {where}: permission denied",
            hint="choose a destination this user may write to (an immutable flag also "
            "blocks writes: lsattr)",
        )
    if exc.errno == errno.EROFS:
        return FileRestoreError(
            f"cannot write to {where}: the filesystem is read-only",
            hint="choose a destination on a writable filesystem",
        )
    return FileRestoreError(f"cannot write to {where}: {exc.strerror or exc}")


def _size_of(path: Path, dev: int) -> int:
    info = os.lstat(path)
    if stat.S_ISREG(info.st_mode):
        return info.st_size
    if not stat.S_ISDIR(info.st_mode) or info.st_dev != dev:
        return 0
    total = 0
    for item, _ in _walk(path, ()):
        st = os.lstat(item)
        if stat.S_ISREG(st.st_mode) and st.st_dev == dev:
            total += st.st_size
    return total


def _prepare_destination(destination: str | Path) -> Path:
    dest = Path(destination).expanduser()
    if not dest.is_absolute():
        raise ValidationError(
            f"the destination {destination} must be an absolute path",
            hint="e.g. /srv/restore/web01",
        )
    if not dest.exists():
        try:
            dest.mkdir(mode=PRIVATE_DIR)
        except FileNotFoundError:
            raise ValidationError(
                f"the destination's parent folder {dest.parent} does not exist"
            ) from None
        except OSError as exc:
            raise _explain_write_error(exc, dest) from None
    if not dest.is_dir():
        raise ValidationError(f"the destination {dest} is not a folder")
    real = Path(os.path.realpath(dest))
    probe = real / f".sendense-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise _explain_write_error(exc, real) from None
    return real


class _Copier:
    def __init__(
        self,
        dest: Path,
        overwrite: bool,
        total: int,
        ctx: Any,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.dest = dest
        self.overwrite = overwrite
        self.ctx = ctx
        self.on_progress = on_progress
        self.result = ExtractResult(destination=str(dest), bytes_total=total)
        #: directories whose mode and times are applied after their contents
        self._dirs: list[tuple[Path, os.stat_result]] = []

    def _progress(self, current: str, force: bool = False) -> None:
        done, total = self.result.bytes, self.result.bytes_total
        if self.ctx is not None:
            self.ctx.progress(done, total, message=f"restoring {current}", force=force)
        if self.on_progress is not None:
            self.on_progress(done, total, current)

    def skip(self, rel: PurePosixPath, reason: str) -> None:
        self.result.skipped.append((str(rel), reason))

    def copy(self, source: Path, dest_dir: Path, name: str, rel: PurePosixPath, dev: int) -> None:  # noqa: C901 - rewritten in issue 17
        if self.ctx is not None:
            self.ctx.check()
        try:
            target = child_path(dest_dir, name)
        except UnsafePath as exc:
            self.skip(rel, str(exc))
            return
        if not is_within(self.dest, target.parent):
            self.skip(rel, "would be written outside the destination")
            return
        info = os.lstat(source)
        mode = info.st_mode
        if info.st_dev != dev:
            self.skip(rel, "on another filesystem; not crossed")
            return
        existing = _lstat_or_none(target)
        if stat.S_ISDIR(mode):
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                self.skip(rel, "something that is not a folder has this name at the destination")
                return
            if existing is None:
                try:
                    target.mkdir(mode=0o700)
                except OSError as exc:
                    raise _explain_write_error(exc, target) from None
            self.result.directories += 1
            try:
                with os.scandir(source) as it:
                    children = sorted(e.name for e in it)
            except OSError as exc:
                self.skip(rel, f"cannot read the folder in the backup: {exc.strerror}")
                return
            for child in children:
                self.copy(source / child, target, child, rel / child, dev)
            self._dirs.append((target, info))
            return
        if existing is not None and not self.overwrite:
            self.skip(rel, "already exists at the destination (not overwritten)")
            return
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            self.skip(rel, "a folder has this name at the destination")
            return
        if stat.S_ISLNK(mode):
            link = os.readlink(source)
            if not link_stays_inside(rel, link):
                self.skip(rel, f"symbolic link to {link!r} points outside the restored files")
                return
            self._place(target, lambda tmp: os.symlink(link, tmp), info, is_link=True)
            self.result.symlinks += 1
            return
        if not stat.S_ISREG(mode):
            self.skip(rel, "device, fifo or socket: not restored")
            return
        self._place(target, lambda tmp: self._copy_data(source, tmp, str(rel)), info)
        self.result.files += 1
        self._progress(str(rel))

    def _copy_data(self, source: Path, tmp: Path, shown: str) -> None:
        src_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                last = time.monotonic()
                while True:
                    chunk = os.read(src_fd, CHUNK)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        written = os.write(dst_fd, view)
                        view = view[written:]
                    self.result.bytes += len(chunk)
                    if time.monotonic() - last > 0.2:
                        last = time.monotonic()
                        self._progress(shown)
                os.fsync(dst_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def _place(
        self,
        target: Path,
        make: Callable[[Path], None],
        info: os.stat_result,
        *,
        is_link: bool = False,
    ) -> None:
        tmp = target.parent / f".sendense-{uuid.uuid4().hex[:12]}.partial"
        try:
            make(tmp)
            if not is_link:
                os.chmod(tmp, stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
            os.utime(tmp, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
            os.replace(tmp, target)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise _explain_write_error(exc, target) from None
            raise

    def finish(self) -> None:
        for target, info in reversed(self._dirs):
            try:
                os.chmod(target, stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
                os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
            except OSError as exc:
                raise _explain_write_error(exc, target) from None
        self._progress("done", force=True)


def _lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
