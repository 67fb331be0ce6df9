"""Full and incremental QCOW2 backups of VM disks into a repository.

A source is a file or a block device named by its path, or an
``nbd://host:port/export`` / ``nbd+unix:///export?socket=…`` URI. Its format
and protocol are pinned, never probed (a guest can write a qcow2, vmdk or LUKS
header into its own disk): it is read as raw bytes unless the operator says
qcow2 (``NAME:qcow2=SOURCE``), and a qcow2 source is accepted only when its
own header names no backing file and no external data file. A text qemu would
read as a protocol or a ``json:`` specification (``json:…``, ``file:…``,
``http://…``, any ``word:`` before the first slash) is refused; an NBD URI is
taken apart here and handed to qemu as typed options. See :func:`source_spec`.

Full: ``qemu-img convert -O qcow2 [-c -o compression_type=zstd]`` into a new
chain directory.

Incremental: a new qcow2 file whose header names the previous point by plain
file name is opened by a qemu-storage-daemon with the previous chain spelled out
as its backing (headers checked against the catalog before and after), and only
the blocks that changed are written into it, found on the fastest rung of change
tracking that can be trusted: the source's dirty bitmap, an extent list, the
previous point's digest table, or a whole-disk compare (engine.services.changes).
The point records which rung ran and why; its digest table lies beside it
(``NAME.qcow2.digests``). A full records one too, read back from the finished
file after the source was released. The rungs that use tracking or digests
never read the previous point: its size is checked at every incremental, its
checksum when the compare rung reads it anyway, and its content by the scheduled
verification. Incrementals are not compressed.

Data safety: each file is written as ``.NAME.partial`` in the chain directory,
fsynced, renamed, its manifest written next to it (``NAME.json``: the same facts,
so the repository describes itself; see engine.services.manifests), the directory
fsynced, and only then recorded in the catalog (size, virtual size, allocated
bytes, sha256). Any failure (no space, cancel,
a source that vanished) removes the partial file; the catalog and the existing
chain are untouched.

Chains are validated before and after every backup. A broken chain, a parent
whose checksum no longer matches (its base changed under it), a changed disk
size or the policy's "full every N" make the next backup a new full, announced
with a warning event that says why (``backup.new_full``), instead of failing
forever. ``mode="incremental"`` refuses instead of switching to a full.

One writer per disk: a backup holds the writer lease of every disk of the VM
(``engine.writers``) from before it reads the chain until its points are
recorded, and records each partial file on the lease before creating it, so a
writer that takes the disk over after a crash removes it. The rename that makes
a point final, and its catalog row, come only after the lease is confirmed.

A VM with several disks is one job. Disks are backed up one after the other;
the job succeeds only if every disk does. A disk that finished stays recorded
(it is a good restore point of that disk), a disk that failed leaves nothing
behind, and the job's error names which disks failed and why, and which were
kept. The next run takes incrementals of the kept disks and retries the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.catalog.chains import ChainStore
from engine.catalog.models import Backup, Chain, Job, Repository
from engine.catalog.repositories import RepositoryStore
from engine.catalog.writers import DiskKey
from engine.clock import SYSTEM_CLOCK, Clock
from engine.config import Settings
from engine.digests import BLOCK_SIZE, DigestTableError, table_path
from engine.errors import (
    Action,
    CatalogUnavailable,
    JobCancelled,
    JobUnprotected,
    NotPermitted,
    SendenseError,
    ValidationError,
)
from engine.events import Event, EventBus
from engine.failpoints import failpoint
from engine.fsutil import fsync_dir, fsync_file, partial_path, place_new
from engine.hashing import sha256_file
from engine.jobs import JobContext, JobHandler, JobRunner
from engine.oserrors import is_no_space
from engine.platform import free_bytes
from engine.private import make_private_dirs
from engine.reach import own_files, why_not
from engine.services import changes
from engine.services.chains import (
    ChainService,
    _reserve,
    allocated_bytes,
    repo_file,
    stamp,
)
from engine.services.changes import Plan, Tracking
from engine.services.images import Layer
from engine.services.immutability import LockService
from engine.services.manifests import (
    CHAINS_DIR,
    PointManifest,
    remove_manifest,
    write_manifest,
)
from engine.sources import NBD_PREFIXES, SOURCE_FORMATS, DiskSource
from engine.states import JobKind
from engine.tools import nbdmap, qemu_img
from engine.tools.base import ToolError
from engine.tools.blockspec import ImageSpec, NbdAddress, SpecError, parse_nbd_uri
from engine.units import human_bytes, plural
from engine.writers import DiskWriters

log = logging.getLogger(__name__)

MODES = ("auto", "full", "incremental")
COMPRESSIONS = (None, "zstd", "zlib")
#: default "new full after N incrementals" when no policy says otherwise
DEFAULT_FULL_EVERY = 14
#: VM and disk names (whole-string match: "web01\n" is not a name)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: a dirty bitmap's name as an NBD server offers it (qemu:dirty-bitmap:NAME)
_BITMAP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class BackupError(SendenseError):
    """A backup could not be made; nothing half-written was left behind."""


class BackupNoSpace(BackupError):
    """The repository has (or had) too little room for the backup."""


class SourceError(BackupError):
    """The backup source cannot be read."""


class BackupFailed(BackupError):
    """At least one disk of a multi-disk backup failed (the others were kept)."""

    def __init__(self, message: str, *, run: BackupRun, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.run = run


def check_source_text(disk: DiskSource) -> NbdAddress | None:
    """Refuse a source text qemu would not read as a plain file (before anything is
    opened); the NBD address of an nbd:// or nbd+unix:// URI, None for a path."""
    src = disk.source
    if (disk.fmt or "raw") not in SOURCE_FORMATS:
        raise SourceError(f"disk {disk.name}: format {disk.fmt!r} is not raw or qcow2")
    if not src or "\0" in src:
        raise SourceError(f"disk {disk.name} has an empty or unusable source")
    if src.lower().startswith(NBD_PREFIXES):
        try:
            return parse_nbd_uri(src)
        except SpecError as exc:
            raise SourceError(
                f"source of disk {disk.name}: {exc.message}", hint=exc.hint, action=exc.action
            ) from None
    if ":" in src.split("/", 1)[0]:
        raise SourceError(
            f"source {_shown_source(src)!r} of disk {disk.name} is refused: qemu would read "
            "it as a protocol or a json: specification, not as a file",
            hint="name a file or block device by its path (./NAME for a relative name with "
            "a colon), or give an nbd:// or nbd+unix:// URI",
        )
    return None


def check_source_reach(disks: Sequence[DiskSource], settings: Settings) -> None:
    """Refuse the disks of a caller who is not root on the appliance (an API token)
    whose source, or changed-extents list, is a path outside ``roots`` (``[api]
    source_roots``): the daemon reads as root, so a source would otherwise let a token
    back up any file or disk of the appliance (its own root disk included) and read it
    back through a restore mount. An nbd:// source is a disk served to the appliance
    and is not bound by them; an nbd+unix:// one's socket is a path like any other
    (the daemon would otherwise connect, as root, to any socket of the appliance,
    Sendense's own exports included).

    A path must be absolute, with no ``..``, and inside a root. A symbolic link in it
    is followed only to a block device (LVM's /dev/VG/LV are links to /dev/dm-N) or to
    a file inside a root: whoever may write in a root decides what tokens may read.
    Sendense's own files (engine.reach.own_files) are never named, root or not, nor a
    block device the appliance itself uses (engine.reach.device_in_use)."""
    roots, closed = settings.api.source_roots, own_files(settings)
    for disk in disks:
        address = check_source_text(disk)
        paths = [("source", disk.source)] if address is None else []
        if address is not None and address.socket is not None:
            paths.append(("NBD socket", address.socket))
        if disk.changed_extents is not None:
            paths.append(("extent list", disk.changed_extents))
        for what, text in paths:
            _check_reach(disk.name, what, text, roots, closed)


def _check_reach(
    disk: str, what: str, text: str, roots: Sequence[Path], closed: Sequence[Path]
) -> None:
    refusal = why_not(text, roots, closed, devices=what == "source")
    if refusal is not None:
        raise NotPermitted(
            f"disk {disk}: an API token may not name {text!r} as its {what}: {refusal}",
            hint="give an nbd:// source, or back it up on the appliance itself; its "
            "administrator may open a directory to tokens in [api] source_roots",
        )


def source_spec(disk: DiskSource) -> ImageSpec:
    """How qemu opens a source: format and protocol pinned, nothing left to qemu.

    A path becomes absolute and is opened with the ``file`` protocol (a regular
    file) or ``host_device`` (a block device); an nbd:// or nbd+unix:// URI with the
    ``nbd`` protocol. Anything qemu would read as a protocol or a ``json:``
    specification is refused: qemu treats a ``word:`` before the first slash so.
    """
    src = disk.source
    fmt = disk.fmt or "raw"
    address = check_source_text(disk)
    if address is not None:
        return ImageSpec.nbd(address, fmt)
    path = os.path.abspath(src)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SourceError(
            f"source {src} of disk {disk.name} does not exist",
            hint="check the path (a file, a block device or an nbd:// URI)",
        ) from None
    except OSError as exc:
        raise SourceError(
            f"source {src} of disk {disk.name} cannot be read: {exc.strerror}"
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(f"source {src} of disk {disk.name} is a directory, not a disk")
    if not os.access(path, os.R_OK):
        raise SourceError(
            f"source {src} of disk {disk.name} cannot be read: permission denied",
            hint="run the backup as a user that may read it (root for block devices)",
        )
    if stat.S_ISBLK(st.st_mode):
        return ImageSpec.device(path, fmt)
    if stat.S_ISREG(st.st_mode):
        return ImageSpec.file(path, fmt)
    raise SourceError(
        f"source {src} of disk {disk.name} is not a regular file or a block device",
        hint="a character device, pipe or socket is not a disk",
    )


@dataclass
class DiskResult:
    disk: str
    source: str
    ok: bool = False
    kind: str | None = None
    backup_id: int | None = None
    chain_id: int | None = None
    path: str | None = None
    virtual_size: int = 0
    file_size: int = 0
    allocated_bytes: int = 0
    seconds: float = 0.0
    #: why a full was taken where an incremental could have been
    full_reason: str | None = None
    error: str | None = None
    #: the point's lock expiry (ISO, UTC) when the repository or policy locks it
    locked_until: str | None = None
    #: why the point is NOT protected although a lock was due (the point itself is good)
    unprotected: str | None = None
    #: how the changes were found: full | bitmap | extents | digest | compare
    rung: str | None = None
    #: why that rung and not a faster one
    rung_reason: str | None = None
    bytes_read: int | None = None
    bytes_written: int | None = None
    changed_bytes: int | None = None
    #: how long the source was held (the backup window)
    source_held_seconds: float | None = None
    #: how long checksum and digest table took after the source was released
    checksum_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BackupRun:
    vm: str
    repository: str
    disks: list[DiskResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.disks) and all(d.ok for d in self.disks)

    @property
    def failed(self) -> list[DiskResult]:
        return [d for d in self.disks if not d.ok]

    @property
    def unprotected(self) -> list[DiskResult]:
        """Disks backed up whose point could not be locked."""
        return [d for d in self.disks if d.ok and d.unprotected]

    def sentence(self) -> str:
        done = [d for d in self.disks if d.ok]
        parts = [
            f"{d.disk}: {d.kind} #{d.backup_id} ({human_bytes(d.file_size)})"
            + (" NOT LOCKED" if d.unprotected else "")
            for d in done
        ]
        parts += [f"{d.disk}: FAILED ({d.error})" for d in self.failed]
        return f"{self.vm} to {self.repository}: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "repository": self.repository,
            "ok": self.ok,
            "disks": [d.as_dict() for d in self.disks],
        }


@dataclass(frozen=True)
class _Probe:
    source: DiskSource
    #: how qemu opens the source: format and protocol pinned
    spec: ImageSpec
    virtual_size: int


class BackupService:
    """Backups of VM disks (``engine.backups``); job kind ``backup``."""

    def __init__(
        self,
        store: ChainStore,
        repositories: RepositoryStore,
        jobs: JobRunner,
        bus: EventBus,
        chains: ChainService,
        *,
        locks: LockService,
        settings: Settings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        repository_check: Callable[[Repository], object] | None = None,
        writers: DiskWriters,
    ) -> None:
        self.store = store
        self.repositories = repositories
        self.jobs = jobs
        self.bus = bus
        self.chains = chains
        #: the lock step: every recorded point is locked when its repository asks for it
        self.locks = locks
        #: one writer per disk (held around every run)
        self.writers = writers
        self.settings = settings
        self.clock = clock
        #: the repositories service's "mounted, writable and not full" gate, when wired
        self.repository_check = repository_check
        #: compare the parent's sha256 with the catalog before an incremental
        self.verify_parent = True

    def job_handlers(self) -> dict[JobKind, JobHandler]:
        return {JobKind.BACKUP: JobHandler(self.run_job, writes=self.disks_of_job)}

    @staticmethod
    def disks_of_job(job: Job) -> list[DiskKey]:
        """The disks a backup job writes (the runner holds them around it)."""
        p = job.params or {}
        return [DiskKey(int(p["repository"]), str(p["vm"]), str(d["name"])) for d in p["disks"]]

    # -- jobs --------------------------------------------------------------------

    def submit(
        self,
        repository: int | str,
        vm: str,
        disks: Sequence[DiskSource],
        *,
        mode: str = "auto",
        compression: str | None = None,
        full_every: int | None = None,
        actor: str | None = None,
        queue_if_busy: bool = True,
        named_by_token: bool = False,
    ) -> Any:
        """Queue a backup job for a VM's disks; returns the Job row. A source text
        qemu would read as a protocol is refused here, before anything is queued. A
        disk another writer holds makes the job wait for it, or
        (``queue_if_busy=False``) raises DiskBusy naming that writer, and nothing is
        queued. ``named_by_token``: an API token named the sources (its caller
        checked them, check_source_reach); the job checks them again when it starts."""
        repo = self.repositories.get(repository)
        self._check_args(vm, disks, mode, compression)
        # a path is made absolute here, as its caller meant it: any engine's runner may
        # take the job (the daemon's too), and a runner's directory is not the caller's
        disks = [
            d if check_source_text(d) is not None else replace(d, source=os.path.abspath(d.source))
            for d in disks
        ]
        if not queue_if_busy:
            self.writers.refuse_if_busy(DiskKey(repo.id, vm, d.name) for d in disks)
        params = {
            "repository": repo.id,
            "vm": vm,
            "disks": [asdict(d) for d in disks],
            "mode": mode,
            "compression": compression,
            "full_every": full_every,
        }
        if named_by_token:
            params["named_by_token"] = True
        return self.jobs.submit(
            JobKind.BACKUP,
            f"back up {vm} ({', '.join(d.name for d in disks)}) to {repo.name}",
            params,
            repository_id=repo.id,
            actor=actor,
        )

    def run_job(self, ctx: JobContext) -> dict[str, Any]:
        p = ctx.params
        # fmt None: a job queued before formats were pinned (raw, as it meant)
        disks = [
            DiskSource(
                d["name"],
                d["source"],
                d.get("fmt") or "raw",
                changed_bitmap=d.get("changed_bitmap"),
                changed_extents=d.get("changed_extents"),
            )
            for d in p["disks"]
        ]
        if p.get("named_by_token"):
            self.check_token_reach(disks)
        run = self.run(
            int(p["repository"]),
            str(p["vm"]),
            disks,
            mode=p.get("mode", "auto"),
            compression=p.get("compression"),
            full_every=p.get("full_every"),
            ctx=ctx,
        )
        if not run.ok:
            raise self._failure(run)
        if run.unprotected:
            raise self._unprotected_failure(run)
        return run.as_dict()

    def check_token_reach(self, disks: Sequence[DiskSource]) -> None:
        """Check sources an API token named once more, just before they are read: a
        link in a root may lead somewhere else than when the token named it, and the
        job reads as root (check_source_reach; NotPermitted fails the job)."""
        if self.settings is None:
            raise NotPermitted("sources an API token named cannot be checked here")
        check_source_reach(disks, self.settings)

    @staticmethod
    def _unprotected_failure(run: BackupRun) -> JobUnprotected:
        """The job's end when points landed but could not be locked."""
        return JobUnprotected(
            f"{run.vm}: backed up, but NOT protected: "
            + "; ".join(f"{d.disk} #{d.backup_id}: {d.unprotected}" for d in run.unprotected),
            result=run.as_dict(),
            action=Action(
                "check_locks_points",
                "the points are good backups; fix the cause, then a lock check sets the flag "
                "(the lock job retries it too)",
            ),
        )

    def _failure(self, run: BackupRun) -> BackupFailed:
        failed = run.failed
        kept = [d for d in run.disks if d.ok]
        msg = f"{len(failed)} of {plural(len(run.disks), 'disk')} of {run.vm} failed: " + "; ".join(
            f"{d.disk}: {d.error}" for d in failed
        )
        if kept:
            msg += ". Kept: " + ", ".join(
                f"{d.disk} ({d.kind} #{d.backup_id}"
                + (", NOT protected: its lock could not be set)" if d.unprotected else ")")
                for d in kept
            )
        return BackupFailed(
            msg,
            run=run,
            hint="fix the cause and run the backup again; kept disks continue incrementally",
        )

    # -- running -----------------------------------------------------------------

    def _check_args(
        self, vm: str, disks: Sequence[DiskSource], mode: str, compression: str | None
    ) -> None:
        if not _NAME.fullmatch(vm):
            raise ValidationError(
                f"VM name {vm!r} is not usable as a directory name",
                hint="use letters, digits, '.', '_' and '-' (at most 128)",
            )
        if not disks:
            raise ValidationError(f"no disks given for {vm}")
        names = [d.name for d in disks]
        for name in names:
            if not _NAME.fullmatch(name):
                raise ValidationError(f"disk name {name!r} is not usable as a directory name")
        if len(set(names)) != len(names):
            raise ValidationError(f"disk names repeat: {', '.join(names)}")
        for d in disks:
            if d.changed_bitmap is not None:
                if not d.source.lower().startswith(NBD_PREFIXES):
                    raise ValidationError(
                        f"disk {d.name}: a changed-blocks bitmap is read from an nbd:// or "
                        "nbd+unix:// source only",
                        hint="a qcow2 source gets a bitmap of Sendense's own; a raw file is "
                        "compared by digest",
                    )
                if not _BITMAP_NAME.fullmatch(d.changed_bitmap):
                    raise ValidationError(
                        f"disk {d.name}: bitmap name {d.changed_bitmap!r} is not usable",
                        hint="letters, digits, '.', '_', ':' and '-' (at most 128)",
                    )
            if d.changed_extents is not None and not os.path.isabs(d.changed_extents):
                raise ValidationError(
                    f"disk {d.name}: the extent list {d.changed_extents!r} must be an absolute path"
                )
        if mode not in MODES:
            raise ValidationError(f"backup mode {mode!r} is unknown: use {', '.join(MODES)}")
        if compression not in COMPRESSIONS:
            raise ValidationError(f"compression {compression!r} is unknown: use zstd or none")

    def run(
        self,
        repository: int | str,
        vm: str,
        disks: Sequence[DiskSource],
        *,
        mode: str = "auto",
        compression: str | None = None,
        full_every: int | None = None,
        ctx: JobContext | None = None,
        actor: str | None = None,
        lock_days: int | None = None,
    ) -> BackupRun:
        """Back up every disk of ``vm``; returns what happened per disk (never half-done).

        Problems that concern the whole run (bad names, repository not usable)
        raise; a disk that fails is recorded in the result and the others go on.
        A cancel stops the run (disks already finished stay). Each recorded point is
        locked as a step of the run (the repository's lock period, or ``lock_days``
        of a policy when longer); a point that could not be locked stays and is
        reported in its result's ``unprotected``.
        """
        self._check_args(vm, disks, mode, compression)
        repo = self.repositories.get(repository)
        keys = [DiskKey(repo.id, vm, d.name) for d in disks]
        # before the chain is read and anything written; a job already holds them
        with self.writers.hold_all(keys, operation="backup", actor=actor):
            return self._run_held(
                repo, vm, disks, mode, compression, full_every, ctx, actor, lock_days
            )

    def _run_held(
        self,
        repo: Repository,
        vm: str,
        disks: Sequence[DiskSource],
        mode: str,
        compression: str | None,
        full_every: int | None,
        ctx: JobContext | None,
        actor: str | None,
        lock_days: int | None,
    ) -> BackupRun:
        self._check_repository(repo)
        run = BackupRun(vm, repo.name)
        probes: list[_Probe | None] = []
        for disk in disks:
            try:
                probes.append(self._probe(disk))
            except CatalogUnavailable:
                raise
            except SendenseError as exc:
                probes.append(None)
                run.disks.append(DiskResult(disk.name, disk.source, error=exc.for_humans()))
                self._announce_failure(repo, vm, disk.name, exc, ctx, actor)
        total = sum(p.virtual_size for p in probes if p is not None)
        done_before = 0
        for probe in probes:
            if probe is None:
                continue
            result = DiskResult(probe.source.name, probe.source.source)
            started = time.monotonic()
            try:
                self._backup_disk(
                    repo,
                    vm,
                    probe,
                    result,
                    mode=mode,
                    compression=compression,
                    full_every=full_every if full_every is not None else DEFAULT_FULL_EVERY,
                    ctx=ctx,
                    done_before=done_before,
                    total=total,
                    actor=actor,
                    lock_days=lock_days,
                )
                result.ok = True
            except (JobCancelled, CatalogUnavailable):
                raise  # the whole run stops: cancelled, or no catalog to record anything
            except SendenseError as exc:
                result.error = exc.for_humans()
                self._announce_failure(repo, vm, probe.source.name, exc, ctx, actor)
            finally:
                result.seconds = round(time.monotonic() - started, 3)
            run.disks.append(result)
            done_before += probe.virtual_size
        order = {d.name: i for i, d in enumerate(disks)}
        run.disks.sort(key=lambda d: order.get(d.disk, 0))
        return run

    def _announce_failure(
        self,
        repo: Repository,
        vm: str,
        disk: str,
        exc: SendenseError,
        ctx: JobContext | None,
        actor: str | None,
    ) -> None:
        self.bus.publish(
            Event(
                kind="backup.failed",
                message=f"backup of {vm}/{disk} failed: {exc.message}",
                level="error",
                source="backup",
                repository_id=repo.id,
                job_id=ctx.job_id if ctx else None,
                actor=actor,
                data={"vm": vm, "disk": disk, "hint": exc.hint},
            )
        )

    def _check_repository(self, repo: Repository) -> None:
        # the repositories' one write gate (enabled, room left, mounted, a writable
        # directory): it reads capacity with a timeout first, so one that does not
        # answer (a frozen FUSE directory, a hung server) is refused with a sentence
        if self.repository_check is not None:
            self.repository_check(repo)

    def _probe(self, disk: DiskSource) -> _Probe:
        spec = source_spec(disk)
        try:
            head = qemu_img.info(spec)
        except ToolError as exc:
            raise SourceError(
                f"source {_shown_source(disk.source)} of disk {disk.name} cannot be read as "
                f"{spec.fmt}: {exc.message}",
                hint=exc.hint or "check the source; a qcow2 image must be named NAME:qcow2=…",
            ) from None
        if spec.fmt == "qcow2":
            specific = (head.raw.get("format-specific") or {}).get("data") or {}
            if head.backing_filename:
                raise SourceError(
                    f"qcow2 source {disk.source} of disk {disk.name} is refused: its header "
                    f"names the backing file {head.backing_filename!r}",
                    hint="a qcow2 source must stand alone: back up the flattened image "
                    "(qemu-img convert) or the VM's disk as raw",
                )
            if specific.get("data-file"):
                raise SourceError(
                    f"qcow2 source {disk.source} of disk {disk.name} is refused: its header "
                    f"names the external data file {specific['data-file']!r}",
                    hint="a qcow2 source must stand alone: back up the data file as raw",
                )
        if head.virtual_size <= 0:
            raise SourceError(f"source {disk.source} of disk {disk.name} is empty (0 bytes)")
        return _Probe(disk, spec, head.virtual_size)

    # -- one disk ----------------------------------------------------------------

    @staticmethod
    def _write_full(
        probe: _Probe,
        tmp: Path,
        compression: str | None,
        track: Tracking,
        progress: Callable[[float], None],
        stopper: Callable[[], bool] | None,
    ) -> None:
        """Convert the whole source into ``tmp``."""
        track.bytes_read = _data_bytes(probe.spec)
        held = time.monotonic()
        qemu_img.convert(
            probe.spec, tmp, compression=compression, on_progress=progress, should_stop=stopper
        )
        track.source_held_seconds = time.monotonic() - held

    def _write_incremental(
        self,
        repo: Repository,
        vm: str,
        probe: _Probe,
        chain: Chain | None,
        points: list[Backup],
        bitmaps: _Bitmaps,
        now: datetime,
        tmp: Path,
        table_tmp: Path,
        track: Tracking,
        ctx: JobContext | None,
        progress: Callable[[float], None],
    ) -> qemu_img.ImageInfo:
        """Write an incremental's changed blocks over its checked parent into ``tmp``
        (its digest table into ``table_tmp``); returns its header, checked."""
        held = time.monotonic()
        disk = probe.source.name
        if chain is None:  # _plan gives a reason for a full whenever there is no chain
            raise BackupError(f"cannot take an incremental of {vm}/{disk}: it has no chain")
        parent = points[-1]
        parent_name = Path(parent.path).name
        # the previous chain's headers, checked against the catalog before and
        # after the copy reads through them
        layers = [Layer(b.id, b.path, b.file_size) for b in points]
        previous = self.chains.guard.chain_spec(repo, chain.directory, layers)
        plan = self._change_plan(repo, chain.id, points, probe, bitmaps, now)
        parent_hash = self._check_parent(repo, parent, plan)
        track.rung, track.reason, track.fallback = plan.rung, plan.reason, plan.fallback
        # the header names the parent by its plain file name; nothing opens it
        # by that name (the chain is spelled out below)
        qemu_img.create(tmp, probe.virtual_size, backing=parent_name, unsafe=True)
        if ctx is not None and ctx.should_stop():
            ctx.raise_stop()  # stopped while planning: stop before the long part
        copied = changes.copy_changes(
            plan,
            source=probe.spec,
            target=ImageSpec.file(os.path.abspath(tmp), backing=previous),
            disk_size=probe.virtual_size,
            on_progress=progress,
            should_stop=ctx.should_stop if ctx is not None else None,
            cancelled=ctx.stop_error if ctx is not None else None,
        )
        track.source_held_seconds = time.monotonic() - held
        track.bytes_read = copied.bytes_read
        track.bytes_written = copied.bytes_written
        track.changed_bytes = copied.changed_bytes
        track.digest_verified = plan.rung in ("digest", "compare")
        if plan.checking:
            track.check = {
                "tracking": plan.tracking,
                "missed_blocks": copied.missed_blocks,
                "missed_offsets": copied.missed_examples,
            }
        self.chains.guard.chain_spec(repo, chain.directory, layers)
        head = _check_written_incremental(tmp, parent, parent_hash, f"{vm}/{disk}")
        if copied.table is not None:
            track.digests = copied.table.write(table_tmp)
        return head

    def _plan(
        self,
        repo: Repository,
        vm: str,
        probe: _Probe,
        *,
        mode: str,
        full_every: int,
        forced: str | None = None,
    ) -> tuple[Chain | None, list[Backup], str | None, bool]:
        """(current chain, its points, why a full, whether that reason is a warning)."""
        disk = probe.source.name
        chain = self.store.current_chain(repo.id, vm, disk)
        if forced is not None:
            return chain, [], forced, True
        if mode == "full":
            return chain, [], "a full backup was asked for", False
        if chain is None:
            return None, [], "first backup of this disk", False
        report = self.chains.validate(chain.id)
        points = self.store.backups(chain.id)
        if not report.ok:
            return chain, points, f"chain {chain.id} is broken ({report.sentence()})", True
        if not points:
            return chain, points, "the chain has no points left", False
        parent = points[-1]
        if parent.virtual_size != probe.virtual_size:
            return (
                chain,
                points,
                f"the disk size changed from {parent.virtual_size} to {probe.virtual_size} bytes",
                False,
            )
        if len(points) - 1 >= full_every:
            return (
                chain,
                points,
                f"{len(points) - 1} incrementals reached the limit of {full_every}",
                False,
            )
        return chain, points, None, False

    def _backup_disk(
        self, repo: Repository, vm: str, probe: _Probe, result: DiskResult, **kw: Any
    ) -> None:
        try:
            self._backup_disk_once(repo, vm, probe, result, **kw)
        except _BaseChanged as changed:
            self.store.update_backup(changed.parent.id, state="bad", state_detail=changed.detail)
            self.store.update_chain(
                changed.parent.chain_id, state="broken", state_detail=changed.detail
            )
            reason = f"chain {changed.parent.chain_id} is broken: {changed.detail}"
            if kw["mode"] == "incremental":
                raise BackupError(
                    f"cannot take an incremental of {vm}/{probe.source.name}: {reason}",
                    hint="run the backup with mode auto or full to start a new chain",
                ) from None
            self._backup_disk_once(repo, vm, probe, result, forced=reason, **kw)

    def _backup_disk_once(
        self,
        repo: Repository,
        vm: str,
        probe: _Probe,
        result: DiskResult,
        *,
        mode: str,
        compression: str | None,
        full_every: int,
        ctx: JobContext | None,
        done_before: int,
        total: int,
        actor: str | None,
        lock_days: int | None = None,
        forced: str | None = None,
    ) -> None:
        """One disk, in steps: plan (full or incremental, ``_plan``), place the file
        (``_place_point``), write it under its partial name (a full converted whole,
        an incremental's changed blocks over its checked parent), seal and publish
        it, write its manifest (``_write_point_manifest``), record its row
        (``_record_point``) and report it (``_report_point``)."""
        disk = probe.source.name
        now = self.clock.now()
        chain, points, full_reason, loud = self._plan(
            repo, vm, probe, mode=mode, full_every=full_every, forced=forced
        )
        if full_reason is not None and mode == "incremental":
            raise BackupError(
                f"cannot take an incremental of {vm}/{disk}: {full_reason}",
                hint="run the backup with mode auto or full to start a new chain",
            )
        result.virtual_size = probe.virtual_size
        result.full_reason = full_reason
        if full_reason is not None and loud:
            self._announce_new_full(repo, vm, disk, full_reason, ctx, actor)

        # the job's own stop poll (None: a run outside a job never stops)
        stopper = ctx.should_stop if ctx is not None else None

        def progress(percent: float) -> None:
            if ctx is not None:
                ctx.progress(
                    done_before + int(probe.virtual_size * percent / 100),
                    total,
                    message=f"{vm}/{disk}: {'full' if full_reason else 'incremental'}",
                )

        directory_rel, name = self._place_point(
            repo, vm, probe, chain, points, full_reason, compression, now
        )
        directory = repo_file(repo, directory_rel)
        final = directory / name
        tmp = partial_path(final)
        key = DiskKey(repo.id, vm, disk)
        # on the lease before it exists: whoever takes over after a crash removes it
        self.writers.writing(key, str(Path(directory_rel) / tmp.name))
        make_private_dirs(directory)  # VM, disk and chain folders: 0700 from mkdir on
        head: qemu_img.ImageInfo | None = None  # an incremental's header, checked below
        table_tmp = partial_path(table_path(final))
        track = Tracking(
            rung="full" if full_reason is not None else "digest", source_format=probe.source.fmt
        )
        bitmaps = self._prepare_bitmaps(
            probe, None if full_reason else points[-1], changes.bitmap_prefix(repo.id, vm, disk)
        )
        try:
            if full_reason is not None:
                self._write_full(probe, tmp, compression, track, progress, stopper)
            else:
                head = self._write_incremental(
                    repo,
                    vm,
                    probe,
                    chain,
                    points,
                    bitmaps,
                    now,
                    tmp,
                    table_tmp,
                    track,
                    ctx,
                    progress,
                )
            failpoint("backup.after_write")
            sealing = time.monotonic()
            # a full's digest table is read back from the finished file while its
            # checksum is taken (both from the page cache, on two cores)
            table_job = (
                _Background(self._full_table, tmp, probe.virtual_size, table_tmp, ctx)
                if full_reason is not None
                else None
            )
            try:
                sealed = _seal(tmp, head)  # fsynced before it takes its name
            finally:
                if table_job is not None:
                    table_job.join()
            if table_job is not None:
                track.digests = table_job.result()
                track.bytes_written = sealed.file_size
            track.checksum_seconds = time.monotonic() - sealing
            failpoint("backup.after_seal")
            self.writers.confirm(key)  # nobody took the disk over meanwhile
            _publish(tmp, final)
            if track.digests is not None:
                os.replace(table_tmp, table_path(final))
            failpoint("backup.after_publish")
        except JobCancelled:
            _discard(tmp)
            _discard(table_tmp)
            self._undo_bitmaps(probe, bitmaps)
            raise
        except qemu_img.NoSpaceError as exc:
            _discard(tmp)
            _discard(table_tmp)
            self._undo_bitmaps(probe, bitmaps)
            raise self._no_space(repo, vm, disk) from exc
        except OSError as exc:
            _discard(tmp)
            _discard(table_tmp)
            self._undo_bitmaps(probe, bitmaps)
            if is_no_space(exc):
                raise self._no_space(repo, vm, disk) from exc
            raise BackupError(f"writing {final} failed: {exc.strerror}") from exc
        except BaseException:
            _discard(tmp)
            _discard(table_tmp)
            self._undo_bitmaps(probe, bitmaps)
            if ctx is not None and ctx.stopped is not None:
                raise ctx.stopped from None
            raise
        track.bitmap = bitmaps.added
        self._write_point_manifest(
            repo, vm, disk, final, points, full_reason, now, sealed, compression, probe
        )
        row, chain_id = self._record_point(
            repo,
            vm,
            disk,
            chain,
            points,
            full_reason,
            directory_rel,
            name,
            now,
            probe,
            compression,
            sealed,
            ctx,
            track,
        )
        failpoint("backup.after_record")
        self.writers.writing(key, None)
        self._retire_bitmaps(probe, bitmaps)
        self._report_point(
            repo,
            vm,
            disk,
            row,
            chain_id,
            track,
            result,
            ctx,
            actor,
            done=done_before + probe.virtual_size,
            total=total,
            lock_days=lock_days,
        )

    def _check_parent(self, repo: Repository, parent: Backup, plan: Plan) -> _Background | None:
        """Before an incremental: its parent still has its recorded size. The compare
        rung reads the parent whole anyway: its checksum is taken meanwhile (the
        returned job; None for the faster rungs, which never read it — its content
        is for the scheduled verification)."""
        parent_file = repo_file(repo, parent.path)
        if parent_file.stat().st_size != parent.file_size:
            raise _BaseChanged(
                parent,
                f"point #{parent.id} ({Path(parent.path).name}) is "
                f"{parent_file.stat().st_size} bytes, not the {parent.file_size} recorded: "
                "its base changed under it",
            )
        if self.verify_parent and parent.checksum and plan.rung == "compare":
            return _Background(sha256_file, parent_file)
        return None

    def _announce_new_full(
        self,
        repo: Repository,
        vm: str,
        disk: str,
        full_reason: str,
        ctx: JobContext | None,
        actor: str | None,
    ) -> None:
        """Say loudly that a chain starts over (the operator did not ask for a full)."""
        self.bus.publish(
            Event(
                kind="backup.new_full",
                message=f"{vm}/{disk}: starting a NEW FULL backup because {full_reason}",
                level="warning",
                source="backup",
                repository_id=repo.id,
                job_id=ctx.job_id if ctx else None,
                actor=actor,
                data={"vm": vm, "disk": disk, "reason": full_reason},
            )
        )

    def _place_point(
        self,
        repo: Repository,
        vm: str,
        probe: _Probe,
        chain: Chain | None,
        points: list[Backup],
        full_reason: str | None,
        compression: str | None,
        now: datetime,
    ) -> tuple[str, str]:
        """Where the new point goes, ``(chain directory, file name)``, once the room
        for it is checked: a full starts a new chain directory."""
        disk = probe.source.name
        if full_reason is not None:
            directory_rel = self._new_chain_dir(repo, vm, disk, now)
            self._check_room_full(repo, probe, compression)
            return directory_rel, f"0000-full-{stamp(now)}.qcow2"
        assert chain is not None
        position = points[-1].position + 1
        self._check_room_incremental(repo)
        return chain.directory, f"{position:04d}-inc-{stamp(now)}.qcow2"

    def _write_point_manifest(
        self,
        repo: Repository,
        vm: str,
        disk: str,
        final: Path,
        points: list[Backup],
        full_reason: str | None,
        now: datetime,
        sealed: _Sealed,
        compression: str | None,
        probe: _Probe,
    ) -> None:
        """The point's manifest next to it, and the directory flushed, before its
        catalog row; on failure the point is removed (never an orphan)."""
        full = full_reason is not None
        manifest = PointManifest(
            vm=vm,
            disk=disk,
            file=final.name,
            kind="full" if full else "incremental",
            position=0 if full else points[-1].position + 1,
            parent=None if full else Path(points[-1].path).name,
            point_time=now,
            created=now,
            virtual_size=sealed.virtual_size,
            file_size=sealed.file_size,
            allocated_bytes=sealed.allocated_bytes,
            sha256=sealed.checksum,
            compression=compression if full else None,
            source=_shown_source(probe.source.source),
        )
        try:
            # the point's manifest lands with it, before its catalog row (the repository
            # describes itself: see engine.services.manifests)
            write_manifest(final, manifest)
            fsync_dir(final.parent)  # the renames themselves are durable before the row
        except BaseException as exc:
            # the file never made it into the catalog: do not leave an orphan
            _discard(final)
            remove_manifest(final)
            _discard(table_path(final))
            if isinstance(exc, OSError):
                if is_no_space(exc):
                    raise self._no_space(repo, vm, disk) from exc
                raise BackupError(
                    f"writing the manifest of {final} failed: {exc.strerror}"
                ) from exc
            raise

    def _record_point(
        self,
        repo: Repository,
        vm: str,
        disk: str,
        chain: Chain | None,
        points: list[Backup],
        full_reason: str | None,
        directory_rel: str,
        name: str,
        now: datetime,
        probe: _Probe,
        compression: str | None,
        sealed: _Sealed,
        ctx: JobContext | None,
        track: Tracking,
    ) -> tuple[Backup, int]:
        """The point's catalog row (a full retires the chain it replaces): ``(row,
        chain id)``."""
        fields = {
            "path": str(Path(directory_rel) / name),
            "state": "complete",
            "point_time": now,
            "source": _shown_source(probe.source.source),
            "compression": compression if full_reason is not None else None,
            "virtual_size": sealed.virtual_size,
            "file_size": sealed.file_size,
            "allocated_bytes": sealed.allocated_bytes,
            "checksum": sealed.checksum,
            "job_id": ctx.job_id if ctx else None,
            "tracking": track.as_dict(),
        }
        try:
            if full_reason is not None:
                retire = [chain.id] if chain is not None else []
                new_chain, row = self.store.add_full(
                    repository_id=repo.id,
                    vm_name=vm,
                    disk_name=disk,
                    directory=directory_rel,
                    now=now,
                    backup=fields,
                    retire=retire,
                    retire_detail=f"superseded by a new full: {full_reason}",
                )
                return row, new_chain.id
            assert chain is not None
            row = self.store.add_incremental(
                chain_id=chain.id,
                parent_id=points[-1].id,
                position=points[-1].position + 1,
                now=now,
                backup=fields,
            )
            return row, chain.id
        except CatalogUnavailable as exc:
            # The file is complete and durable but not recorded. It stays: a server
            # that lost the connection during COMMIT may hold the row, and a row
            # without its file is worse than a file without its row (an orphan that
            # `chain check` lists and a repository import takes back).
            raise CatalogUnavailable(
                f"{exc.message}; the finished file {fields['path']} was kept, unrecorded",
                hint=exc.hint,
            ) from exc

    def _report_point(
        self,
        repo: Repository,
        vm: str,
        disk: str,
        row: Backup,
        chain_id: int,
        track: Tracking,
        result: DiskResult,
        ctx: JobContext | None,
        actor: str | None,
        *,
        done: int,
        total: int,
        lock_days: int | None,
    ) -> None:
        """After the row: the disk's result, its chain checked, the point locked (a
        point that cannot be locked is still a good backup, and the job says it is
        unprotected) and ``backup.completed`` published."""
        result.rung, result.rung_reason = track.rung, track.reason
        result.bytes_read, result.bytes_written = track.bytes_read, track.bytes_written
        result.changed_bytes = track.changed_bytes
        result.source_held_seconds = track.source_held_seconds
        result.checksum_seconds = track.checksum_seconds
        self._announce_tracking(repo, vm, disk, row, track, ctx, actor)
        result.kind = row.kind
        result.backup_id = row.id
        result.chain_id = chain_id
        result.path = row.path
        result.file_size = row.file_size
        result.allocated_bytes = row.allocated_bytes
        if ctx is not None:
            ctx.progress(done, total, force=True)
        report = self.chains.validate(chain_id)
        # the lock step: part of the job, after the point is recorded (a point that
        # cannot be locked is still a good backup, and the job says it is unprotected)
        lock = self.locks.lock_landed(
            repo,
            row.path,
            backup_id=row.id,
            days=lock_days,
            job_id=ctx.job_id if ctx else None,
        )
        if lock.until is not None:
            result.locked_until = lock.until.isoformat()
        result.unprotected = lock.failure
        self.bus.publish(
            Event(
                kind="backup.completed",
                message=f"{vm}/{disk}: {row.kind} backup #{row.id} written "
                f"({human_bytes(row.file_size)} for {human_bytes(row.virtual_size)} disk)"
                + (" but NOT locked" if lock.failure else ""),
                source="backup",
                repository_id=repo.id,
                job_id=ctx.job_id if ctx else None,
                actor=actor,
                data={
                    "backup_id": row.id,
                    "chain_id": chain_id,
                    "repository_id": repo.id,
                    "kind": row.kind,
                    "chain_ok": report.ok,
                    "locked_until": result.locked_until,
                    "unprotected": lock.failure,
                },
            )
        )

    # -- change tracking (engine.services.changes) ----------------------------------

    def _prepare_bitmaps(self, probe: _Probe, parent: Backup | None, prefix: str) -> _Bitmaps:
        """For a qcow2 source Sendense opens itself: judge the bitmap the previous point
        added, drop stale and untrusted ones, add this point's (it records every write
        from now on), and disable the previous one so it can be exported."""
        state = _Bitmaps()
        spec = probe.spec
        if spec.fmt != "qcow2" or spec.protocol not in ("file", "host_device"):
            return state
        if parent is not None:
            previous = Tracking.of(parent.tracking)
            state.previous = previous.bitmap if previous else None
            state.problem = changes.bitmap_problem(spec, state.previous)
        usable = parent is not None and state.problem is None and state.previous is not None
        changes.discard_bitmaps(
            spec, prefix, {state.previous} if usable and state.previous else set()
        )
        name = f"{prefix}{secrets.token_hex(6)}"
        try:
            qemu_img.bitmap(spec.alone(), "add", name, granularity=BLOCK_SIZE)
            state.added = name
        except ToolError as exc:
            log.warning("no dirty bitmap could be added to %s: %s", spec.shown, exc.message)
        if usable and state.previous is not None:
            try:
                qemu_img.bitmap(spec.alone(), "disable", state.previous)
                state.disabled = True
            except ToolError as exc:
                state.problem = f"bitmap {state.previous} cannot be exported: {exc.message}"
        return state

    def _undo_bitmaps(self, probe: _Probe, state: _Bitmaps) -> None:
        """A failed run: the previous bitmap records again, this run's goes (best effort;
        a bitmap left disabled is never trusted by the next run)."""
        spec = probe.spec.alone() if probe.spec.protocol != "nbd" else None
        if spec is None:
            return
        with contextlib.suppress(ToolError):
            if state.added:
                qemu_img.bitmap(spec, "remove", state.added)
        with contextlib.suppress(ToolError):
            if state.disabled and state.previous:
                qemu_img.bitmap(spec, "enable", state.previous)

    def _retire_bitmaps(self, probe: _Probe, state: _Bitmaps) -> None:
        """The point is recorded: the previous point's bitmap has served."""
        if state.disabled and state.previous:
            with contextlib.suppress(ToolError):
                qemu_img.bitmap(probe.spec.alone(), "remove", state.previous)

    def _change_plan(
        self,
        repo: Repository,
        chain_id: int,
        points: list[Backup],
        probe: _Probe,
        bitmaps: _Bitmaps,
        now: datetime,
    ) -> Plan:
        """Which rung this incremental takes, and why (see engine.services.changes)."""
        parent = points[-1]
        size = probe.virtual_size
        table = None
        table_problem = None
        try:
            table = changes.previous_table(
                repo_file(repo, parent.path), Tracking.of(parent.tracking), size
            )
        except DigestTableError as exc:
            table_problem = str(exc)
        hints = probe.source.hints
        dirty: list[tuple[int, int]] | None = None
        tracking: str | None = None
        problem: str | None = None
        source_bitmap: str | None = None
        rung = "extents"
        if hints.extent_file:
            try:
                dirty = changes.read_extent_file(
                    hints.extent_file, since_point=parent.id, disk_size=size
                )
                tracking = f"extent list {hints.extent_file}"
            except changes.ExtentFileError as exc:
                problem = exc.message
        elif hints.nbd_bitmap and probe.spec.address is not None:
            try:
                dirty = nbdmap.dirty_extents(probe.spec.address, hints.nbd_bitmap)
                tracking = f"NBD bitmap {hints.nbd_bitmap}"
            except ToolError as exc:
                problem = exc.message
        elif probe.spec.fmt == "qcow2" and probe.spec.protocol != "nbd":
            if bitmaps.problem is None and bitmaps.disabled:
                source_bitmap, rung = bitmaps.previous, "bitmap"
                tracking = f"bitmap {bitmaps.previous}"
            else:
                problem = bitmaps.problem
        if tracking is not None:
            days = self.settings.verify.tracking_check_days if self.settings else 7
            if changes.check_due(_last_verified(points), now, days):
                return Plan(
                    "digest" if table is not None else "compare",
                    f"the periodic check of {tracking}"
                    + ("" if table is not None else f" ({table_problem})"),
                    table=table,
                    dirty=dirty,
                    tracking=tracking,
                    source_bitmap=source_bitmap,
                    checking=True,
                )
            return Plan(rung, None, table, dirty, tracking, source_bitmap)
        if table is not None:
            if problem is not None:
                return Plan("digest", problem, table, fallback=True)
            return Plan("digest", None, table)
        reason = table_problem or "no digest table"
        return Plan("compare", reason + (f"; {problem}" if problem else ""), fallback=True)

    def _full_table(
        self, tmp: Path, size: int, table_tmp: Path, ctx: JobContext | None
    ) -> str | None:
        """The digest table of a new full, read back from the finished file after the
        source was released; None (the next incremental compares) when it cannot be."""
        try:
            table = changes.table_of_image(
                ImageSpec.file(os.path.abspath(tmp)),
                size,
                should_stop=ctx.should_stop if ctx is not None else None,
                cancelled=ctx.stop_error if ctx is not None else None,
            )
            return table.write(table_tmp)
        except (ToolError, OSError) as exc:
            _discard(table_tmp)
            log.warning("no digest table for %s: %s", tmp, exc)
            return None

    def _announce_tracking(
        self,
        repo: Repository,
        vm: str,
        disk: str,
        row: Backup,
        track: Tracking,
        ctx: JobContext | None,
        actor: str | None,
    ) -> None:
        common: dict[str, Any] = {
            "source": "backup",
            "repository_id": repo.id,
            "job_id": ctx.job_id if ctx else None,
            "actor": actor,
        }
        data = {"vm": vm, "disk": disk, "backup_id": row.id, "tracking": track.as_dict()}
        missed = (track.check or {}).get("missed_blocks") or 0
        if missed:
            self.bus.publish(
                Event(
                    kind="backup.tracking_missed",
                    message=f"{vm}/{disk}: {track.check.get('tracking') if track.check else ''}"
                    f" MISSED {missed} changed block(s) of 64 KiB; point #{row.id} was made "
                    "by comparing every block and is complete, but points made with that "
                    "tracking since the last check may lack those writes",
                    level="critical",
                    data=data,
                    **common,
                )
            )
        elif track.fallback:
            self.bus.publish(
                Event(
                    kind="backup.tracking_fallback",
                    message=f"{vm}/{disk}: {track.rung} compare because {track.reason}",
                    level="warning",
                    data=data,
                    **common,
                )
            )

    def _new_chain_dir(self, repo: Repository, vm: str, disk: str, now: datetime) -> str:
        base = f"{CHAINS_DIR}/{vm}/{disk}/{stamp(now)}"
        candidate, n = base, 1
        while self.store.directory_taken(repo.id, candidate) or repo_file(repo, candidate).exists():
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def _check_room_full(self, repo: Repository, probe: _Probe, compression: str | None) -> None:
        try:
            need = qemu_img.measure(probe.spec).required
        except ToolError as exc:
            raise SourceError(
                f"cannot measure source {probe.source.source}: {exc.message}"
            ) from None
        reserve = _reserve(repo, self.settings)
        free = free_bytes(Path(repo.path))
        if free - need < reserve:
            raise BackupNoSpace(
                f"repository {repo.name} has {human_bytes(free)} free; a full backup of "
                f"{probe.source.name} needs up to {human_bytes(need)}"
                + (" (before compression)" if compression else "")
                + f" plus the {human_bytes(reserve)} reserve",
                hint="free space, lower capacity.min_free, or choose another repository",
            )

    def _check_room_incremental(self, repo: Repository) -> None:
        # the changed bytes are not known before the copy has compared them; the
        # reserve is kept, and running out mid-way removes the partial file
        reserve = _reserve(repo, self.settings)
        free = free_bytes(Path(repo.path))
        if free <= reserve:
            raise BackupNoSpace(
                f"repository {repo.name} has {human_bytes(free)} free, at or below its "
                f"{human_bytes(reserve)} reserve",
                hint="free space or choose another repository",
            )

    def _no_space(self, repo: Repository, vm: str, disk: str) -> BackupNoSpace:
        return BackupNoSpace(
            f"repository {repo.name} filled up while backing up {vm}/{disk}; the partial "
            "file was removed and the existing chain is unchanged",
            hint="free space (delete or consolidate old points) or choose another repository",
        )

    # -- listing -----------------------------------------------------------------

    def list_points(
        self, *, repository: int | str | None = None, vm: str | None = None
    ) -> list[tuple[Backup, Chain]]:
        repo_id = self.repositories.get(repository).id if repository is not None else None
        return self.store.list_backups(repository_id=repo_id, vm_name=vm)


@dataclass
class _Bitmaps:
    """The dirty bitmaps of a qcow2 source during one run."""

    #: the bitmap the previous point added (None: none recorded)
    previous: str | None = None
    #: why it cannot be trusted (None: it can)
    problem: str | None = None
    #: disabled for export by this run (re-enabled if the run fails)
    disabled: bool = False
    #: this point's bitmap, recording from the moment the source was read
    added: str | None = None


def _last_verified(points: list[Backup]) -> datetime | None:
    """When the chain was last read whole (a full, or a digest-verified incremental)."""
    for b in reversed(points):
        t = Tracking.of(b.tracking)
        if b.kind == "full" or (t is not None and t.digest_verified):
            return b.point_time
    return None


def _data_bytes(spec: ImageSpec) -> int | None:
    """Bytes of the source that hold data (what a full reads), from its allocation map."""
    try:
        return sum(e.length for e in qemu_img.map_image(spec) if not e.zero)
    except ToolError:
        return None


class _BaseChanged(Exception):
    """The parent of a new incremental no longer matches its checksum."""

    def __init__(self, parent: Backup, detail: str) -> None:
        super().__init__(detail)
        self.parent = parent
        self.detail = detail


class _Background(threading.Thread):
    """Run a function on a thread; ``result()`` joins and returns (or raises) its outcome."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__(daemon=True, name="sendense-backup-hash")
        self._fn, self._args = fn, args
        self._value: Any = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as exc:
            self._error = exc

    def result(self) -> Any:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value


@dataclass(frozen=True)
class _Sealed:
    virtual_size: int
    file_size: int
    allocated_bytes: int
    checksum: str


def _seal(tmp: Path, head: qemu_img.ImageInfo | None) -> _Sealed:
    """Flush a finished partial file to disk and take its facts, before it is renamed.

    qemu-img has exited, so nothing writes the file again: its sha256 is read back
    (from the page cache) on one thread while fsync flushes it on another, and
    qemu-img info/map read its metadata meanwhile; the slowest of the three sets the
    pace instead of their sum. Both threads are joined before the file is renamed or
    removed. (Hashing while qemu-img still writes is not possible: it rewrites the
    refcount block and L2 tables near the start of the file last, and sha256 has to
    read the file from its first byte on.)
    """
    digest = _Background(sha256_file, tmp)
    flushed = _Background(fsync_file, tmp)
    try:
        if head is None:
            head = qemu_img.info(tmp, fmt="qcow2")
        stored = allocated_bytes(tmp)
        size = tmp.stat().st_size
    finally:
        flushed.join()
        digest.join()
    flushed.result()
    return _Sealed(head.virtual_size, size, stored, digest.result())


def _publish(tmp: Path, final: Path) -> None:
    """Give the sealed partial file its final name, never overwriting a file that is
    already there (atomically: no window between a check and the rename). On refusal
    the partial file is removed; the caller fsyncs the directory afterwards."""
    try:
        place_new(tmp, final)
    except FileExistsError:
        _discard(tmp)
        raise BackupError(
            f"{final} already exists; refusing to overwrite a backup",
            hint="another writer uses this chain directory: check what created that file",
        ) from None


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _shown_source(source: str) -> str:
    """The source as recorded: no credentials in a URI's user part."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", source)[:1024]


def _check_written_incremental(
    tmp: Path, parent: Backup, parent_hash: _Background | None, shown: str
) -> qemu_img.ImageInfo:
    """After the copy: the parent did not change while it was read, and the new
    file's header names it as its backing file. Returns that header."""
    parent_name = Path(parent.path).name
    if parent_hash is not None and parent_hash.result() != parent.checksum:
        raise _BaseChanged(
            parent,
            f"point #{parent.id} ({parent_name}) no longer matches its "
            "checksum: its base changed under it",
        )
    head = qemu_img.info(tmp, fmt="qcow2")
    if head.backing_filename != parent_name:
        raise BackupError(
            f"the new incremental of {shown} names {head.backing_filename!r} "
            f"as its parent instead of {parent_name}",
        )
    return head
