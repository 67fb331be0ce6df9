"""Extraction: copy files and folders out of a restore mount into a destination
folder, as the ``restore.files`` job (or directly, for a caller that is one).

What the guest had comes back (restic, borg and pxar restore the same): symbolic
links exactly as they were (absolute or relative, any target), numeric owners and
groups, permission bits including setuid/setgid/sticky, access and modification
times (a folder's after its contents), extended attributes (POSIX ACLs and file
capabilities included), hard links as hard links within what is restored, sparse
files kept sparse, empty folders; fifos, device nodes and sockets with ``specials``.

A restored link is data, never a way: everything is created and changed relative to
open directory file descriptors, with ``O_NOFOLLOW``/``follow_symlinks=False``, so a
link restored (or planted at the destination beforehand) never redirects a write.
Nothing lands outside the destination; what could not be restored is listed with
its reason. The destination folder the extraction creates is root-only (0700): it
may hold setuid files and other users' files. ``owner`` gives everything to one user
instead, without setuid/setgid bits, file capabilities or device nodes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.catalog.models import Job
from engine.errors import ValidationError
from engine.events import Event, EventBus
from engine.guestmeta import (
    BLOCK,
    CHAR,
    DIR,
    FIFO,
    FILE,
    SOCKET,
    SYMLINK,
    GuestMeta,
    data_extents,
    list_names,
    open_dir_at,
    open_file_at,
    read_meta,
)
from engine.oserrors import explain_os_error
from engine.private import PRIVATE_DIR
from engine.safepath import UnsafePath, child_path
from engine.services.restore_browse import _walk
from engine.services.restore_views import (
    ExtractResult,
    FileRestoreError,
    FilesystemView,
    MountView,
    ProgressCallback,
    counts_phrase,
)

if TYPE_CHECKING:
    from engine.jobs import JobRunner

CHUNK = 1024 * 1024
_SPECIAL_TYPE = {FIFO: stat.S_IFIFO, CHAR: stat.S_IFCHR, BLOCK: stat.S_IFBLK, SOCKET: stat.S_IFSOCK}
_SPECIAL_NAME = {
    FIFO: "a fifo",
    CHAR: "a character device",
    BLOCK: "a block device",
    SOCKET: "a socket",
}
#: errors that mean "this destination cannot hold this attribute", not "stop"
_XATTR_REFUSED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL)


#: a destination's refusal of one item (the others may still fit): listed, not fatal
_ITEM_REFUSED = {
    errno.EFBIG: "too large for the destination's filesystem",
    errno.ENAMETOOLONG: "its name is too long for the destination's filesystem",
}
#: a destination that cannot make this hard link: the file is copied instead
_NO_HARD_LINK = (errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP)


class _NotPlaced(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _NoHardLink(Exception):
    pass


@dataclass(frozen=True)
class Owner:
    """The user (and group) ``owner`` gives everything restored to."""

    uid: int
    gid: int
    shown: str


def resolve_owner(text: str) -> Owner:
    """``USER`` or ``USER:GROUP`` (names of this appliance, or numbers) as numbers; a
    user alone brings its primary group."""
    user, _, group = text.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not user.isdigit():
            raise ValidationError(
                f"there is no user {user!r} on this appliance",
                hint="give a user name from /etc/passwd or a numeric uid (USER or USER:GROUP)",
            ) from None
        uid = gid = int(user)
    if group:
        gid = _group_id(group)
    return Owner(uid, gid, f"{uid}:{gid}")


def _group_id(group: str) -> int:
    import grp

    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValidationError(
            f"there is no group {group!r} on this appliance",
            hint="give a group name from /etc/group or a numeric gid",
        ) from None


@dataclass(frozen=True)
class ExtractOptions:
    #: replace a file (or link) already at the destination; a folder is merged into
    overwrite: bool = False
    #: recreate fifos, device nodes and sockets (otherwise listed as not restored)
    specials: bool = False
    #: give everything to this user instead of the backup's owners
    owner: Owner | None = None


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
        specials: bool = False,
        owner: str | None = None,
        actor: str | None = None,
    ) -> Job:
        """Queue the extraction of ``paths`` as a ``restore.files`` job, after the
        checks ``extract`` makes first (the owner, the mount, every path, the
        destination), so a wrong selection is refused now rather than as a failed job."""
        if self.jobs is None:
            raise RuntimeError("this FileRestoreService was built without a job runner")
        given_to = resolve_owner(owner) if owner else None
        items = self._selection(mount_id, paths)
        dest, created = _prepare_destination(destination, given_to)
        total = sum(_size_of(src, dev) for src, _, dev in items)
        names = ", ".join(name for _, name, _ in items[:3]) + (", ..." if len(items) > 3 else "")
        return self.jobs.submit(
            "restore.files",
            f"restore {names} to {dest}",
            {
                "mount_id": mount_id,
                "paths": list(paths),
                "destination": str(dest),
                "destination_created": created,
                "overwrite": overwrite,
                "specials": specials,
                "owner": owner,
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
        specials: bool = False,
        owner: str | None = None,
        destination_created: bool = False,
        ctx: Any = None,
        on_progress: ProgressCallback | None = None,
        actor: str | None = None,
    ) -> ExtractResult:
        """Copy files/folders out of a mounted point into ``destination``, as the
        guest had them (see the module's description). ``destination_created`` says
        an earlier step (``submit_extract``) created the destination for this run."""
        given_to = resolve_owner(owner) if owner else None
        items = self._selection(mount_id, paths)
        dest, created = _prepare_destination(destination, given_to)  # once the selection is valid
        total = sum(_size_of(src, dev) for src, _, dev in items)
        writer = _Writer(
            dest, ExtractOptions(overwrite, specials, given_to), total, ctx, on_progress
        )
        try:
            for source, name, dev in items:
                writer.restore_selected(source, name, dev)
            writer.finish()
        finally:
            writer.close()
        result = writer.result
        result.destination_created = created or destination_created
        result.owner = given_to.shown if given_to else None
        result.note = _destination_note(result)
        self._use(mount_id)  # a long extraction counts as use
        self.bus.publish(
            Event(
                kind="restore.extracted",
                message=f"{summary(result)} to {dest}"
                + (f"; {len(result.skipped)} not restored" if result.skipped else ""),
                source="restore",
                actor=actor,
                level="warning" if result.skipped else "info",
                data={"mount_id": mount_id, **result.as_dict()},
            )
        )
        return result

    def run_extract_job(self, ctx: Any) -> dict[str, Any]:
        """Job handler (kind ``restore.files``): params mount_id, paths, destination,
        destination_created, overwrite, specials, owner."""
        params = ctx.params
        result = self.extract(
            int(params["mount_id"]),
            list(params["paths"]),
            params["destination"],
            overwrite=bool(params.get("overwrite", False)),
            specials=bool(params.get("specials", False)),
            owner=params.get("owner") or None,
            destination_created=bool(params.get("destination_created", False)),
            ctx=ctx,
            actor=params.get("actor"),
        )
        return result.as_dict()


def summary(result: ExtractResult | dict[str, Any]) -> str:
    """ "restored 3 files, 1 folder, 2 links, 1 hard link, 12.0 KiB"."""
    return f"restored {counts_phrase(result)}"


def _destination_note(result: ExtractResult) -> str:
    if result.owner is not None:
        return (
            f"everything was given to {result.owner}, without setuid/setgid bits or "
            "file capabilities"
            + (
                f"; {result.destination} was created for that user only (0700)"
                if result.destination_created
                else ""
            )
        )
    if result.destination_created:
        return (
            f"{result.destination} was created root-only (0700): it holds the guest's "
            "owners and setuid/setgid bits; move what is needed from there"
        )
    return (
        f"the guest's owners and permission bits were kept in {result.destination}, "
        "a folder that already existed: check who may enter it"
    )


def _explain_write_error(exc: OSError, where: Path) -> FileRestoreError:
    """engine.oserrors' sentence for the destination, and what it means for a restore:
    the file being written is gone, the ones already restored are whole."""
    failure = explain_os_error(where, exc, "writing the restored files")
    hint = failure.hint or "choose another destination"
    if failure.reason == "no_space":
        hint += "; the file being written was removed, files already restored are complete"
    elif failure.reason == "permission":
        hint += " (an immutable flag also blocks writes: lsattr)"
    return FileRestoreError(failure.message, hint=hint)


def _size_of(path: Path, dev: int) -> int:
    """Bytes an extraction of ``path`` restores: each file once, however many names
    it has (a hard link is made, not copied)."""
    info = os.lstat(path)
    if stat.S_ISREG(info.st_mode):
        return info.st_size
    if not stat.S_ISDIR(info.st_mode) or info.st_dev != dev:
        return 0
    total = 0
    seen: set[tuple[int, int]] = set()
    for item, _ in _walk(path, ()):
        st = os.lstat(item)
        if not stat.S_ISREG(st.st_mode) or st.st_dev != dev:
            continue
        if st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
        total += st.st_size
    return total


def _prepare_destination(destination: str | Path, owner: Owner | None) -> tuple[Path, bool]:
    """The destination folder, real and writable, and whether it was created here:
    a folder created here is 0700 (root's, or ``owner``'s)."""
    dest = Path(destination).expanduser()
    if not dest.is_absolute():
        raise ValidationError(
            f"the destination {destination} must be an absolute path",
            hint="e.g. /srv/restore/web01",
        )
    created = False
    if not os.path.lexists(dest):
        try:
            dest.mkdir(mode=PRIVATE_DIR)
            os.chmod(dest, PRIVATE_DIR, follow_symlinks=False)  # whatever the umask
            if owner is not None:
                os.chown(dest, owner.uid, owner.gid, follow_symlinks=False)
        except FileNotFoundError:
            raise ValidationError(
                f"the destination's parent folder {dest.parent} does not exist"
            ) from None
        except OSError as exc:
            raise _explain_write_error(exc, dest) from None
        created = True
    if not dest.is_dir():
        raise ValidationError(f"the destination {dest} is not a folder")
    real = Path(os.path.realpath(dest))
    probe = real / f".sendense-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise _explain_write_error(exc, real) from None
    return real, created


class _Target:
    """Where metadata is set: an open file/folder (``fd``), or a name in an open
    folder, never followed (a link, a fifo or device node just made)."""

    def __init__(self, fd: int | None = None, dir_fd: int = -1, name: str = "") -> None:
        self.fd, self.dir_fd, self.name = fd, dir_fd, name

    def chown(self, uid: int, gid: int) -> None:
        if self.fd is not None:
            os.fchown(self.fd, uid, gid)
        else:
            os.chown(self.name, uid, gid, dir_fd=self.dir_fd, follow_symlinks=False)

    def setxattr(self, key: str, value: bytes) -> None:
        if self.fd is not None:
            os.setxattr(self.fd, key, value)
        else:  # the xattr calls take no dir_fd: /proc/self/fd/N is that very folder
            path = f"/proc/self/fd/{self.dir_fd}/{self.name}"
            os.setxattr(path, key, value, follow_symlinks=False)

    def chmod(self, mode: int) -> None:
        if self.fd is not None:
            os.fchmod(self.fd, mode)
        else:
            os.chmod(self.name, mode, dir_fd=self.dir_fd, follow_symlinks=False)

    def utime(self, atime_ns: int, mtime_ns: int) -> None:
        if self.fd is not None:
            os.utime(self.fd, ns=(atime_ns, mtime_ns))
        else:
            os.utime(self.name, ns=(atime_ns, mtime_ns), dir_fd=self.dir_fd, follow_symlinks=False)


class _Writer:
    """Restores entries read from a mount (engine.guestmeta) under the destination."""

    def __init__(
        self,
        dest: Path,
        options: ExtractOptions,
        total: int,
        ctx: Any,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.dest = dest
        self.options = options
        self.ctx = ctx
        self.on_progress = on_progress
        self.result = ExtractResult(destination=str(dest), bytes_total=total)
        self.dest_fd = open_dir_at(None, str(dest))
        #: a restored file with more than one name: its identity in the backup ->
        #: (its path under the destination, its (st_dev, st_ino) there)
        self._first_names: dict[tuple[int, int], tuple[tuple[str, ...], tuple[int, int]]] = {}
        self._last_progress = 0.0

    def close(self) -> None:
        os.close(self.dest_fd)

    def _progress(self, current: str, force: bool = False) -> None:
        done, total = self.result.bytes, self.result.bytes_total
        if self.ctx is not None:
            self.ctx.progress(done, total, message=f"restoring {current}", force=force)
        if self.on_progress is not None:
            self.on_progress(done, total, current)

    def skip(self, rel: tuple[str, ...], reason: str) -> None:
        self.result.skipped.append(("/".join(rel), reason))

    def finish(self) -> None:
        self._progress("done", force=True)

    # -- reading the selection ------------------------------------------------

    def restore_selected(self, source: Path, name: str, dev: int) -> None:
        """Restore one selected path of the mount (checked by ``_locate``) as ``name``."""
        parent = open_dir_at(None, str(source.parent))
        try:
            try:
                meta = read_meta(parent, source.name)
            except OSError as exc:
                self.skip((name,), f"cannot read it in the backup: {exc.strerror or exc}")
                return
            self._restore(parent, meta, self.dest_fd, (name,), dev)
        finally:
            os.close(parent)

    def _restore(
        self, src_dir: int, meta: GuestMeta, dst_dir: int, rel: tuple[str, ...], dev: int
    ) -> None:
        if self.ctx is not None:
            self.ctx.check()
        try:
            child_path(self.dest, rel[-1])
        except UnsafePath as exc:
            self.skip(rel, str(exc))
            return
        if meta.dev != dev:
            self.skip(rel, "on another filesystem; not crossed")
            return
        if meta.kind == DIR:
            self._directory(src_dir, meta, dst_dir, rel, dev)
            return
        existing = _lstat_or_none(dst_dir, rel[-1])
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            self.skip(rel, "a folder has this name at the destination")
            return
        if existing is not None and not self.options.overwrite:
            self.skip(rel, "already exists at the destination (not overwritten)")
            return
        try:
            if meta.kind == FILE:
                self._file(src_dir, meta, dst_dir, rel)
            elif meta.kind == SYMLINK:
                self._symlink(meta, dst_dir, rel)
            else:
                self._special(meta, dst_dir, rel)
        except _NotPlaced as refused:
            self.skip(rel, refused.reason)

    def _directory(
        self, src_dir: int, meta: GuestMeta, dst_dir: int, rel: tuple[str, ...], dev: int
    ) -> None:
        name = rel[-1]
        existing = _lstat_or_none(dst_dir, name)
        if existing is not None and stat.S_ISLNK(existing.st_mode):
            self.skip(rel, "a symbolic link has this name at the destination: not written through")
            return
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            self.skip(rel, "something that is not a folder has this name at the destination")
            return
        try:
            src_fd = open_dir_at(src_dir, meta.name)
        except OSError as exc:
            self.skip(rel, f"cannot read the folder in the backup: {exc.strerror or exc}")
            return
        try:
            dst_fd = self._open_dest_folder(dst_dir, rel, create=existing is None)
            if dst_fd is None:
                return
            try:
                self.result.directories += 1
                self._children(src_fd, dst_fd, rel, dev)
                # a folder's owner, mode and times after its contents (writing into it
                # changed its times; it stayed 0700 while it filled)
                self._settle(_Target(fd=dst_fd), meta, rel)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def _children(self, src_fd: int, dst_fd: int, rel: tuple[str, ...], dev: int) -> None:
        try:
            names = list_names(src_fd)
        except OSError as exc:
            self.skip(rel, f"cannot list the folder in the backup: {exc.strerror or exc}")
            return
        for child in names:
            try:
                child_meta = read_meta(src_fd, child)
            except OSError as exc:
                self.skip((*rel, child), f"cannot read it in the backup: {exc.strerror or exc}")
                continue
            self._restore(src_fd, child_meta, dst_fd, (*rel, child), dev)

    def _open_dest_folder(self, dst_dir: int, rel: tuple[str, ...], *, create: bool) -> int | None:
        name = rel[-1]
        try:
            if create:
                os.mkdir(name, 0o700, dir_fd=dst_dir)
            return open_dir_at(dst_dir, name)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):  # raced into a link
                self.skip(
                    rel, "a symbolic link has this name at the destination: not written through"
                )
                return None
            raise _explain_write_error(exc, self.dest.joinpath(*rel)) from None

    # -- the kinds of entry ----------------------------------------------------

    def _file(self, src_dir: int, meta: GuestMeta, dst_dir: int, rel: tuple[str, ...]) -> None:
        if meta.is_hard_linked and self._hardlink(meta, dst_dir, rel):
            return
        try:
            src_fd = open_file_at(src_dir, meta.name, meta)
        except OSError as exc:
            self.skip(rel, f"cannot read it in the backup: {exc.strerror or exc}")
            return
        try:
            placed = self._place_file(src_fd, meta, dst_dir, rel)
        finally:
            os.close(src_fd)
        self.result.files += 1
        if meta.is_hard_linked:
            self._first_names[meta.identity] = (rel, placed)
        self._progress("/".join(rel))

    def _place_file(
        self, src_fd: int, meta: GuestMeta, dst_dir: int, rel: tuple[str, ...]
    ) -> tuple[int, int]:
        """Write the file under a temporary name, settle it, rename it into place;
        its (st_dev, st_ino) at the destination."""

        def make(tmp: str) -> tuple[int, int]:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600, dir_fd=dst_dir)
            try:
                self._copy_data(src_fd, fd, meta, "/".join(rel))
                self._settle(_Target(fd=fd), meta, rel)
                os.fsync(fd)
                info = os.fstat(fd)
                return (info.st_dev, info.st_ino)
            finally:
                os.close(fd)

        return self._place(dst_dir, rel, make)

    def _copy_data(self, src_fd: int, dst_fd: int, meta: GuestMeta, shown: str) -> None:
        """Only the stretches holding data are copied; the holes stay holes (the size
        is set at the end)."""
        copied = 0
        for offset, length in data_extents(src_fd, meta.size):
            position, end = offset, offset + length
            while position < end:
                chunk = os.pread(src_fd, min(CHUNK, end - position), position)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    written = os.pwrite(dst_fd, view, position)
                    view, position = view[written:], position + written
                copied += len(chunk)
                self.result.bytes += len(chunk)
                if time.monotonic() - self._last_progress > 0.2:
                    self._last_progress = time.monotonic()
                    self._progress(shown)
        os.ftruncate(dst_fd, meta.size)
        self.result.bytes += max(0, meta.size - copied)  # the holes are done too

    def _hardlink(self, meta: GuestMeta, dst_dir: int, rel: tuple[str, ...]) -> bool:
        """Another name of a file restored before: made a hard link to it (True), or
        False when that first name is no longer the file restored (then copied)."""
        first = self._first_names.get(meta.identity)
        if first is None:
            return False
        first_rel, placed = first
        first_dir = self._open_dest_parent(first_rel)
        if first_dir is None:
            return False
        try:
            current = _lstat_or_none(first_dir, first_rel[-1])
            if current is None or (current.st_dev, current.st_ino) != placed:
                return False

            def make(tmp: str) -> None:
                try:
                    os.link(
                        first_rel[-1], tmp, src_dir_fd=first_dir, dst_dir_fd=dst_dir,
                        follow_symlinks=False,
                    )  # fmt: skip
                except OSError as exc:
                    if exc.errno in _NO_HARD_LINK:
                        raise _NoHardLink from None
                    raise

            self._place(dst_dir, rel, make)
        except _NoHardLink:
            return False  # a destination without hard links (or too many): copied
        finally:
            os.close(first_dir)
        self.result.hardlinks += 1
        return True

    def _open_dest_parent(self, rel: tuple[str, ...]) -> int | None:
        """The folder holding ``rel`` under the destination, opened one name at a time
        without following a link; None when that is no longer possible."""
        fd = os.dup(self.dest_fd)
        for name in rel[:-1]:
            try:
                child = open_dir_at(fd, name)
            except OSError:
                os.close(fd)
                return None
            os.close(fd)
            fd = child
        return fd

    def _symlink(self, meta: GuestMeta, dst_dir: int, rel: tuple[str, ...]) -> None:
        target = meta.link_target or ""

        def make(tmp: str) -> None:
            os.symlink(target, tmp, dir_fd=dst_dir)
            self._settle(_Target(dir_fd=dst_dir, name=tmp), meta, rel, is_link=True)

        self._place(dst_dir, rel, make)
        self.result.symlinks += 1

    def _special(self, meta: GuestMeta, dst_dir: int, rel: tuple[str, ...]) -> None:
        what = _SPECIAL_NAME[meta.kind]
        if not self.options.specials:
            self.skip(rel, f"{what}: not recreated unless special files are asked for (--specials)")
            return
        if self.options.owner is not None and meta.kind in (CHAR, BLOCK):
            self.skip(rel, f"{what}: a device node is not given to a user (--owner)")
            return

        def make(tmp: str) -> None:
            os.mknod(tmp, 0o600 | _SPECIAL_TYPE[meta.kind], meta.rdev, dir_fd=dst_dir)
            self._settle(_Target(dir_fd=dst_dir, name=tmp), meta, rel)

        self._place(dst_dir, rel, make)
        self.result.specials += 1

    # -- writing ----------------------------------------------------------------

    def _place(self, dst_dir: int, rel: tuple[str, ...], make: Callable[[str], Any]) -> Any:
        """Make the entry under a temporary name in ``dst_dir`` and rename it over
        ``rel``'s name (replacing a file or link there, never writing through it)."""
        tmp = f".sendense-{uuid.uuid4().hex[:12]}.partial"
        try:
            made = make(tmp)
            os.rename(tmp, rel[-1], src_dir_fd=dst_dir, dst_dir_fd=dst_dir)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dst_dir)
            if isinstance(exc, OSError) and exc.errno in _ITEM_REFUSED:
                raise _NotPlaced(_ITEM_REFUSED[exc.errno]) from None
            if isinstance(exc, OSError):
                raise _explain_write_error(exc, self.dest.joinpath(*rel)) from None
            raise
        return made

    def _settle(
        self, target: _Target, meta: GuestMeta, rel: tuple[str, ...], *, is_link: bool = False
    ) -> None:
        """Owner, then xattrs, then mode, then times: chown clears setuid/setgid and
        file capabilities, and every change but the last moves the times."""
        owner = self.options.owner
        target.chown(owner.uid if owner else meta.uid, owner.gid if owner else meta.gid)
        for key, value in meta.xattrs:
            if owner is not None and key == "security.capability":
                continue  # privileges stay with root's restore, not a user's
            try:
                target.setxattr(key, value)
            except OSError as exc:
                if exc.errno not in _XATTR_REFUSED:
                    raise
                self.skip(rel, f"restored without its extended attribute {key}: {exc.strerror}")
        if not is_link:
            target.chmod(meta.mode & ~(stat.S_ISUID | stat.S_ISGID) if owner else meta.mode)
        target.utime(meta.atime_ns, meta.mtime_ns)


def _lstat_or_none(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
