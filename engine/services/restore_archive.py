"""Files and folders of a restore mount as one archive, written while it is read: the
``restore extract --tar/--zip`` download, the console's "save as archive" and the HTTP
API's folder download all write it here, so they give the same archive.

tar is POSIX pax as GNU tar writes it with ``--format=pax --xattrs --acls --sparse
--numeric-owner``: symbolic links as links (their target is data, never read), numeric
owner and group, every mode bit (setuid, setgid, sticky), times to the nanosecond,
extended attributes as ``SCHILY.xattr.*`` (``user.*``, ``trusted.*``, ``security.*``
including file capabilities, and the raw ``system.posix_acl_*``), POSIX ACLs also as
``SCHILY.acl.access``/``SCHILY.acl.default`` text with numeric ids, hard links as
hard-link entries, sparse files as PAX 1.0 sparse members (only their data is read and
written, never their holes), fifos and devices as entries. A socket cannot be archived
and is listed as such. Optionally zstd-compressed (``zstandard``, in process).

zip is for people on Windows: names, times, modes (links as unix-mode link entries),
owners in the Info-ZIP unix extra field; what zip cannot carry (extended attributes,
ACLs, hard links, fifos, devices) is listed in the result.

Safety as for extraction: every selection is checked by the mount's own resolution
(restore_browse: no ``..``, the filesystem named first, no link on the way); below it
every entry is opened relative to its folder's descriptor with ``O_NOFOLLOW`` and on the
selection's own filesystem only (another one mounted inside is not entered), so nothing
outside the mount is read. Nothing of the backup's content is written anywhere but the
output the caller gives: no temporary file.

What a file *is* (kind, owner, mode, times, xattrs, hard-link identity, data extents) is
read by engine.guestmeta, the reader restoring into a folder uses: both see the same
entry. On NTFS the archive also asks for the attributes ntfs-3g holds but does not list
(its ACL, DOS attributes and Windows times, engine.tools.mounts.NTFS_XATTRS): an archive
carries them as xattrs, a folder on the appliance could not hold them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import tarfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from engine.errors import Action, ValidationError
from engine.guestmeta import GuestMeta as GuestEntry
from engine.guestmeta import data_extents, read_meta
from engine.oserrors import explain_os_error
from engine.private import PRIVATE_FILE
from engine.services.restore_views import (
    FileRestoreError,
    FilesystemView,
    MountView,
    RestoredCounts,
    counts_phrase,
)
from engine.tools.mounts import NTFS_XATTRS

if TYPE_CHECKING:
    from engine.catalog.models import Job
    from engine.jobs import JobRunner

CHUNK = 1024 * 1024
FORMATS = ("tar", "zip")
#: where a pax sparse member's stand-in name puts the real one (GNU tar's own layout)
SPARSE_DIR = "GNUSparseFile.0"


class ArchiveOutputError(FileRestoreError):
    """The archive could not be written where it was asked to go."""


class Writable(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


# -- reading the backup: engine.guestmeta, the one reader extraction uses too ---------


# -- what came out ---------------------------------------------------------------------


@dataclass(kw_only=True)
class ArchiveResult(RestoredCounts):
    #: tar | tar.zst | zip
    format: str
    #: the file written, or "-" for a stream
    output: str
    #: (path in the archive, why it is not in it): the command fails
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: (path in the archive, what of it the format could not keep): listed only
    not_carried: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "output": self.output,
            **self.counts_dict(),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "not_carried": [{"path": p, "what": w} for p, w in self.not_carried],
        }

    def sentence(self) -> str:
        return archived_summary(self) + (
            f"; {len(self.skipped)} not archived" if self.skipped else ""
        )


def archived_summary(result: ArchiveResult | Mapping[str, Any]) -> str:
    """ "archived 3 files, 1 folder, 2 links, 12.0 KiB as tar into /srv/out.tar"."""
    data = result.as_dict() if isinstance(result, ArchiveResult) else result
    return f"archived {counts_phrase(data)} as {data['format']} into {data['output']}"


# -- the formats -----------------------------------------------------------------------


class _PaxInfo(tarfile.TarInfo):
    """A pax member whose binary header values (a file capability, a raw ACL) are
    written as raw bytes, as GNU tar writes them, without the ``hdrcharset=BINARY``
    record GNU tar does not know (it warns about it on every extraction)."""

    @classmethod
    def _create_pax_generic_header(  # type: ignore[override]
        cls, pax_headers: dict[str, str], type: bytes, encoding: str
    ) -> bytes:
        records = b""
        for keyword, value in pax_headers.items():
            key = keyword.encode("utf-8", "surrogateescape")
            raw = value.encode("utf-8", "surrogateescape")
            length = len(key) + len(raw) + 3
            total = prefix = 0
            while True:  # the record's length counts its own digits
                total = length + len(str(prefix))
                if total == prefix:
                    break
                prefix = total
            records += str(total).encode("ascii") + b" " + key + b"=" + raw + b"\n"
        info = {
            "name": "././@PaxHeader",
            "type": type,
            "size": len(records),
            "magic": tarfile.POSIX_MAGIC,
        }
        return cls._create_header(info, tarfile.USTAR_FORMAT, "ascii", "replace") + (  # type: ignore[attr-defined]
            cls._create_payload(records)  # type: ignore[attr-defined]
        )


_ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_NAMED = (0x02, 0x08)


def acl_text(raw: bytes) -> str | None:
    """A ``system.posix_acl_*`` value in the text form GNU tar stores (one entry a
    line, numeric ids, as ``acl_from_text`` reads back); None when it is not one."""
    if len(raw) < 4 or (len(raw) - 4) % 8 or struct.unpack_from("<I", raw)[0] != 2:
        return None
    lines = []
    for offset in range(4, len(raw), 8):
        tag, perm, ident = struct.unpack_from("<HHI", raw, offset)
        if tag not in _ACL_TAGS:
            return None
        who = str(ident) if tag in _NAMED else ""
        bits = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        lines.append(f"{_ACL_TAGS[tag]}:{who}:{bits}\n")
    return "".join(lines)


def _pax_time(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    whole, fraction = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{whole}.{fraction:09d}"


def _pax_headers(entry: GuestEntry) -> dict[str, str]:
    headers = {"mtime": _pax_time(entry.mtime_ns), "atime": _pax_time(entry.atime_ns)}
    for key, value in entry.xattrs:
        if key in ("system.posix_acl_access", "system.posix_acl_default"):
            text = acl_text(value)
            if text is not None:
                headers["SCHILY.acl." + key.rsplit("_", 1)[1]] = text
        headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
    return headers


class _Extents:
    """A file's data extents read as one stream (what a sparse member holds after its
    map), or the whole file; a file that reads short is padded with zeros so the
    member keeps the size its header announced, and the shortfall is reported."""

    def __init__(self, fd: int, extents: list[tuple[int, int]], prefix: bytes = b"") -> None:
        self.fd = fd
        self.pending = bytearray(prefix)
        self.extents = list(reversed(extents))
        self.short = 0

    def read(self, n: int = -1) -> bytes:
        want = CHUNK if n < 0 else n
        if not self.pending and self.extents and self.extents[-1][1] >= want:
            offset, length = self.extents.pop()  # the common case: straight from the file
            if length > want:
                self.extents.append((offset + want, length - want))
            return self._pread(offset, want)
        while len(self.pending) < want and self.extents:
            offset, length = self.extents.pop()
            take = min(length, CHUNK)
            self.pending += self._pread(offset, take)
            if length > take:
                self.extents.append((offset + take, length - take))
        out = bytes(self.pending[:want])
        del self.pending[:want]
        return out

    def _pread(self, offset: int, size: int) -> bytes:
        try:
            data = os.pread(self.fd, size, offset)
        except OSError:  # a damaged backup: the rest of this piece is lost
            data = b""
        if len(data) < size:
            self.short += size - len(data)
            data += b"\0" * (size - len(data))
        return data


def _sparse_map(extents: list[tuple[int, int]], size: int) -> bytes:
    """The PAX 1.0 sparse map: count, then offset and length of each data extent, in
    decimal lines, padded to a block; a last empty extent at the end keeps the size."""
    if not extents or sum(extents[-1]) < size:
        extents = [*extents, (size, 0)]
    text = f"{len(extents)}\n" + "".join(f"{o}\n{n}\n" for o, n in extents)
    raw = text.encode("ascii")
    return raw + b"\0" * (-len(raw) % tarfile.BLOCKSIZE)


class _TarFormat:
    def __init__(self, out: Writable) -> None:
        self.tar = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115 (closed by close())
            fileobj=out,
            mode="w|",
            format=tarfile.PAX_FORMAT,
            tarinfo=_PaxInfo,
            encoding="utf-8",
            errors="surrogateescape",
            copybufsize=CHUNK,
            # the stream buffer: with 10 KiB records it would copy each MiB ~50 times
            bufsize=CHUNK,
        )

    def _info(self, name: str, entry: GuestEntry, kind: bytes) -> tarfile.TarInfo:
        info = _PaxInfo(name)
        info.type = kind
        info.mode = entry.mode
        info.uid, info.gid = entry.uid, entry.gid
        info.uname = info.gname = ""
        info.mtime = entry.mtime_ns // 1_000_000_000
        info.pax_headers = _pax_headers(entry)
        return info

    def folder(self, name: str, entry: GuestEntry) -> None:
        self.tar.addfile(self._info(name, entry, tarfile.DIRTYPE))

    def symlink(self, name: str, entry: GuestEntry) -> None:
        info = self._info(name, entry, tarfile.SYMTYPE)
        info.linkname = entry.link_target or ""
        self.tar.addfile(info)

    def hardlink(self, name: str, entry: GuestEntry, first: str) -> None:
        info = self._info(name, entry, tarfile.LNKTYPE)
        info.linkname = first
        self.tar.addfile(info)

    def special(self, name: str, entry: GuestEntry) -> str | None:
        kinds = {"fifo": tarfile.FIFOTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE}
        if entry.kind not in kinds:
            return "a socket: no archive format holds one (its program makes it again)"
        info = self._info(name, entry, kinds[entry.kind])
        info.devmajor, info.devminor = os.major(entry.rdev), os.minor(entry.rdev)
        self.tar.addfile(info)
        return None

    def file(self, name: str, entry: GuestEntry, fd: int) -> tuple[int, int]:
        """(data bytes written, bytes that read short)."""
        extents = data_extents(fd, entry.size)
        data = sum(n for _, n in extents)
        info = self._info(name, entry, tarfile.REGTYPE)
        if data == entry.size:
            info.size = entry.size
            stream = _Extents(fd, [(0, entry.size)] if entry.size else [])
        else:  # holes: only the data goes in, after a map of where it belongs
            head, _, base = name.rpartition("/")
            info.name = f"{head}/{SPARSE_DIR}/{base}" if head else f"{SPARSE_DIR}/{base}"
            info.pax_headers = {
                **info.pax_headers,
                "GNU.sparse.major": "1",
                "GNU.sparse.minor": "0",
                "GNU.sparse.name": name,
                "GNU.sparse.realsize": str(entry.size),
            }
            table = _sparse_map(extents, entry.size)
            info.size = len(table) + data
            stream = _Extents(fd, extents, table)
        self.tar.addfile(info, stream)
        return data, stream.short

    def close(self) -> None:
        self.tar.close()


ZIP_EPOCH = 315532800  # 1980-01-01: zip's clock starts there
ZIP_END = 4354819199  # 2107-12-31


def _zip_info(name: str, entry: GuestEntry, mode_type: int) -> zipfile.ZipInfo:
    seconds = entry.mtime_ns // 1_000_000_000
    info = zipfile.ZipInfo(name, date_time=time.gmtime(min(max(seconds, ZIP_EPOCH), ZIP_END))[:6])
    info.create_system = 3  # unix: the high half of external_attr is st_mode
    info.external_attr = (mode_type | entry.mode) << 16 | (0x10 if mode_type == stat.S_IFDIR else 0)
    stamp = min(max(seconds, -(2**31)), 2**31 - 1)
    info.extra = struct.pack("<HHBi", 0x5455, 5, 1, stamp) + struct.pack(  # UT: the mtime
        "<HHBBIBI",
        0x7875,
        11,
        1,
        4,
        entry.uid,
        4,
        entry.gid,  # ux: owner and group
    )
    return info


class _ZipFormat:
    def __init__(self, out: Writable) -> None:
        self.zip = zipfile.ZipFile(out, mode="w", compression=zipfile.ZIP_DEFLATED)  # type: ignore[call-overload]

    def folder(self, name: str, entry: GuestEntry) -> None:
        self.zip.writestr(_zip_info(name + "/", entry, stat.S_IFDIR), b"")

    def symlink(self, name: str, entry: GuestEntry) -> None:
        info = _zip_info(name, entry, stat.S_IFLNK)
        self.zip.writestr(info, (entry.link_target or "").encode("utf-8", "surrogateescape"))

    def hardlink(self, name: str, entry: GuestEntry, first: str) -> None:
        raise AssertionError("zip has no hard links: the data is stored again")

    def special(self, name: str, entry: GuestEntry) -> str | None:
        what = {"char": "character device", "block": "block device"}.get(entry.kind, entry.kind)
        return f"a {what}: zip cannot hold one (a tar archive can)"

    def file(self, name: str, entry: GuestEntry, fd: int) -> tuple[int, int]:
        info = _zip_info(name, entry, stat.S_IFREG)
        info.compress_type = zipfile.ZIP_DEFLATED
        extents = data_extents(fd, entry.size)
        stream = _Extents(fd, extents)
        position = 0
        with self.zip.open(info, mode="w", force_zip64=True) as member:
            for offset, length in extents:
                _zeros(member, offset - position)  # a hole: zeros, never read
                left = length
                while left:
                    chunk = stream.read(min(left, CHUNK))
                    member.write(chunk)
                    left -= len(chunk)
                position = offset + length
            _zeros(member, entry.size - position)
        return sum(n for _, n in extents), stream.short

    def close(self) -> None:
        self.zip.close()


_ZEROS = bytes(CHUNK)


def _zeros(member: Any, count: int) -> None:
    while count > 0:
        member.write(_ZEROS[: min(count, CHUNK)])
        count -= CHUNK


# -- walking the selection -------------------------------------------------------------


@dataclass(frozen=True)
class Selected:
    """A path the operator chose, checked: where it is, its name in the archive and
    the device of its filesystem (nothing on another one is read)."""

    path: Path
    name: str
    device: int
    #: attributes asked for by name beside the listed ones (NTFS_XATTRS on NTFS)
    unlisted_xattrs: tuple[str, ...] = ()


class _Writer:
    def __init__(self, fmt: _TarFormat | _ZipFormat, result: ArchiveResult, ctx: Any) -> None:
        self.fmt = fmt
        self.result = result
        self.ctx = ctx
        self.zip = isinstance(fmt, _ZipFormat)
        #: (device, inode) of a file with several names -> its first name here
        self.seen: dict[tuple[int, int], str] = {}
        #: xattr names asked for beside the listed ones, for the selection being added
        self.unlisted: tuple[str, ...] = ()

    def add(self, item: Selected) -> None:
        parent = os.open(item.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        # zip has no place for xattrs: asking for NTFS's would only list every file
        self.unlisted = () if self.zip else item.unlisted_xattrs
        try:
            self._entry(parent, item.path.name, item.name, item.device)
        finally:
            os.close(parent)

    def _entry(self, dir_fd: int, name: str, arcname: str, device: int) -> None:
        if self.ctx is not None:
            self.ctx.check()
        try:
            entry = read_meta(dir_fd, name, unlisted_xattrs=self.unlisted)
        except OSError as exc:
            self.result.skipped.append((arcname, f"cannot read it: {exc.strerror or exc}"))
            return
        if entry.dev != device:
            self.result.skipped.append((arcname, "another filesystem mounted here: not entered"))
            return
        if self.zip:
            arcname = self._zip_name(arcname, entry)
        if entry.kind == "dir":
            self._folder(dir_fd, name, arcname, device, entry)
            return
        key = (entry.dev, entry.ino)
        if entry.nlink > 1 and key in self.seen and not self.zip:
            self.fmt.hardlink(arcname, entry, self.seen[key])
            self.result.hardlinks += 1
            return
        if entry.nlink > 1:
            if key in self.seen:
                self.result.not_carried.append(
                    (arcname, f"a hard link of {self.seen[key]}: zip holds it as a copy")
                )
            self.seen.setdefault(key, arcname)
        if entry.kind == "symlink":
            self.fmt.symlink(arcname, entry)
            self.result.symlinks += 1
        elif entry.kind == "file":
            self._file(dir_fd, name, arcname, entry)
        else:
            reason = self.fmt.special(arcname, entry)
            if reason is None:
                self.result.specials += 1
            else:
                self.result.skipped.append((arcname, reason))

    def _zip_name(self, arcname: str, entry: GuestEntry) -> str:
        """The name zip can hold (UTF-8), with what it loses listed."""
        try:
            arcname.encode("utf-8")
        except UnicodeEncodeError:
            shown = arcname.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            self.result.not_carried.append((shown, "its name is not UTF-8: zip holds it changed"))
            arcname = shown
        if entry.xattrs:
            names = ", ".join(key for key, _ in entry.xattrs)
            self.result.not_carried.append(
                (arcname, f"extended attributes and ACLs ({names}): zip has no place for them")
            )
        return arcname

    def _folder(self, dir_fd: int, name: str, arcname: str, device: int, entry: GuestEntry) -> None:
        self.fmt.folder(arcname, entry)
        self.result.directories += 1
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        except OSError as exc:
            self.result.skipped.append((arcname, f"cannot open the folder: {exc.strerror}"))
            return
        try:
            with os.scandir(fd) as it:
                children = sorted(e.name for e in it)
            for child in children:
                self._entry(fd, child, f"{arcname}/{child}", device)
        except OSError as exc:
            self.result.skipped.append((arcname, f"cannot list the folder: {exc.strerror}"))
        finally:
            os.close(fd)

    def _file(self, dir_fd: int, name: str, arcname: str, entry: GuestEntry) -> None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY, dir_fd=dir_fd)
        except OSError as exc:
            self.result.skipped.append((arcname, f"cannot open it: {exc.strerror or exc}"))
            return
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (entry.dev, entry.ino):
                self.result.skipped.append((arcname, "it changed while being read"))
                return
            data, short = self.fmt.file(arcname, entry, fd)
        finally:
            os.close(fd)
        self.result.files += 1
        self.result.bytes += data
        if self.ctx is not None:  # a job: Jobs shows how much is archived so far
            self.ctx.progress(self.result.bytes, message=f"archiving {arcname}")
        if short:
            self.result.skipped.append(
                (arcname, f"{short} bytes could not be read from the backup: zeros stand in")
            )


class _Output:
    """The caller's stream, its write errors turned into one sentence."""

    def __init__(self, out: Writable, shown: str) -> None:
        self.out = out
        self.shown = shown
        self.position = 0
        #: set when the archive stopped half-way: the formats' own clean-up (a tar or
        #: zip closing itself when collected) writes nothing more after the failure
        self.abandoned = False

    def write(self, data: bytes) -> int:
        if self.abandoned:
            return len(data)
        try:
            self.out.write(data)
        except OSError as exc:
            raise _output_error(exc, self.shown) from None
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        if self.abandoned:
            return
        with contextlib.suppress(AttributeError):
            try:
                self.out.flush()  # type: ignore[attr-defined]
            except OSError as exc:
                raise _output_error(exc, self.shown) from None


def _output_error(exc: OSError, shown: str) -> ArchiveOutputError:
    if exc.errno in (errno.EPIPE, errno.ECONNRESET):
        return ArchiveOutputError(
            f"the program reading the archive ({shown}) stopped before its end",
            hint="the archive it got is incomplete; run the command again into a file "
            "or a reader that takes it all",
        )
    failure = explain_os_error(shown, exc, "writing the archive")
    return ArchiveOutputError(failure.message, hint=failure.hint)


def write_archive(
    items: Sequence[Selected],
    out: Writable,
    *,
    kind: str = "tar",
    zstd: bool = False,
    shown: str = "-",
    ctx: Any = None,
) -> ArchiveResult:
    """Write ``items`` (checked selections) as one archive into ``out``."""
    if kind not in FORMATS:
        raise ValidationError(f"no archive format {kind!r}", hint="tar or zip")
    if zstd and kind != "tar":
        raise ValidationError("only a tar archive can be zstd-compressed")
    result = ArchiveResult(format="tar.zst" if zstd else kind, output=shown)
    sink = _Output(out, shown)
    compressor = None
    target: Writable = sink
    if zstd:
        import zstandard  # the download's only user: loaded when asked for

        compressor = zstandard.ZstdCompressor(level=3).stream_writer(
            sink,  # type: ignore[arg-type]  # it only writes (and flushes)
            closefd=False,
            write_return_read=True,
        )
        target = compressor
    try:
        fmt: _TarFormat | _ZipFormat = _TarFormat(target) if kind == "tar" else _ZipFormat(target)
        writer = _Writer(fmt, result, ctx)
        for item in items:
            writer.add(item)
        fmt.close()
        if compressor is not None:
            compressor.close()
        sink.flush()
    except BaseException:
        sink.abandoned = True
        raise
    return result


def open_output(path: str | Path, *, overwrite: bool = False) -> BinaryIO:
    """The named output file, made root-only (it holds backed-up files), never through
    a link; an existing file is refused unless ``overwrite``."""
    target = Path(path).expanduser()
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_TRUNC if overwrite else os.O_EXCL
    try:
        fd = os.open(target, flags, PRIVATE_FILE)
    except FileExistsError:
        raise ValidationError(
            f"{target} already exists",
            action=Action("overwrite_target", "name another file or replace it"),
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValidationError(f"{target} is a symbolic link; not written through") from None
        raise _output_error(exc, str(target)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValidationError(f"{target} is not a regular file")
    return os.fdopen(fd, "wb")


class Archiving:
    """The archive half of FileRestoreService (engine.services.file_restore), which
    provides the job runner, ``_use`` and ``_locate``."""

    jobs: JobRunner | None

    if TYPE_CHECKING:

        def _use(self, mount_id: int) -> MountView: ...

        def _locate(
            self, view: MountView, path: str
        ) -> tuple[FilesystemView, tuple[str, ...], Path]: ...

    def archive_selection(self, mount_id: int, paths: Sequence[str]) -> list[Selected]:
        """Each path checked as extraction checks it (a last link is kept as a link);
        two selections with the same name would collide in the archive: refused."""
        if not paths:
            raise ValidationError("nothing selected to archive")
        view = self._use(mount_id)
        items: list[Selected] = []
        names: set[str] = set()
        for path in paths:
            fs, parts, source = self._locate(view, path)
            if parts[-1] in names:
                raise ValidationError(
                    f"two selections are both named {parts[-1]!r} in the archive",
                    hint="archive them one at a time",
                )
            names.add(parts[-1])
            device = os.lstat(fs.path).st_dev  # type: ignore[arg-type]
            unlisted = NTFS_XATTRS if fs.fs_type.startswith("ntfs") else ()
            items.append(Selected(source, parts[-1], device, unlisted))
        return items

    def archive(
        self,
        mount_id: int,
        paths: Sequence[str],
        out: Writable,
        *,
        kind: str = "tar",
        zstd: bool = False,
        shown: str = "-",
        ctx: Any = None,
    ) -> ArchiveResult:
        """``paths`` of a mounted point as one archive written into ``out``."""
        items = self.archive_selection(mount_id, paths)
        result = write_archive(items, out, kind=kind, zstd=zstd, shown=shown, ctx=ctx)
        self._use(mount_id)  # a long download counts as use
        return result

    def archive_to_file(
        self,
        mount_id: int,
        paths: Sequence[str],
        output: str | Path,
        *,
        kind: str = "tar",
        zstd: bool = False,
        overwrite: bool = False,
        ctx: Any = None,
    ) -> ArchiveResult:
        """The archive into the file ``output``; removed again when it is not complete."""
        items = self.archive_selection(mount_id, paths)  # refused before a file exists
        target = Path(output).expanduser().absolute()
        handle = open_output(target, overwrite=overwrite)
        try:
            with handle:
                result = write_archive(
                    items, handle, kind=kind, zstd=zstd, shown=str(target), ctx=ctx
                )
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                target.unlink()
            raise
        self._use(mount_id)
        return result

    def submit_archive(
        self,
        mount_id: int,
        paths: Sequence[str],
        output: str | Path,
        *,
        kind: str = "tar",
        zstd: bool = False,
        actor: str | None = None,
    ) -> Job:
        """Queue an archive into a file as a ``restore.archive`` job (the console's
        "save as archive"), after checking the selection and the output's folder."""
        if self.jobs is None:
            raise RuntimeError("this FileRestoreService was built without a job runner")
        if kind not in FORMATS or (zstd and kind != "tar"):
            raise ValidationError(f"no archive format {kind}{'+zstd' if zstd else ''}")
        target = Path(output).expanduser()
        if not target.is_absolute():
            raise ValidationError(
                f"the archive's name {output} must be an absolute path",
                hint="e.g. /srv/restore/etc.tar",
            )
        if not target.parent.is_dir():
            raise ValidationError(f"the folder {target.parent} does not exist")
        if os.path.lexists(target):
            raise ValidationError(f"{target} already exists", hint="name another file")
        items = self.archive_selection(mount_id, paths)
        names = ", ".join(i.name for i in items[:3]) + (", ..." if len(items) > 3 else "")
        return self.jobs.submit(
            "restore.archive",
            f"save {names} as {target}",
            {
                "mount_id": mount_id,
                "paths": list(paths),
                "output": str(target),
                "format": kind,
                "zstd": zstd,
                "actor": actor,
            },
            actor=actor,
        )

    def run_archive_job(self, ctx: Any) -> dict[str, Any]:
        """Job handler (kind ``restore.archive``): params mount_id, paths, output, format."""
        params = ctx.params
        result = self.archive_to_file(
            int(params["mount_id"]),
            list(params["paths"]),
            params["output"],
            kind=str(params.get("format", "tar")),
            zstd=bool(params.get("zstd", False)),
            ctx=ctx,
        )
        if result.skipped:
            raise FileRestoreError(
                result.sentence(),
                hint="; ".join(f"{p}: {r}" for p, r in result.skipped[:5]),
            )
        return result.as_dict()
