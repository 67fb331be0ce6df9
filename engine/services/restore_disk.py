"""Whole-disk restore: write any restore point out as a raw or qcow2 file, or to an NBD target.

``qemu-img convert`` reads the point through its chain, so an incremental
restores to the whole disk as it was at that moment. The chain is the one the
catalog records, spelled out layer by layer after each header was checked
(engine.services.images): a header that names another file is refused, never
followed. A point that is bad (or needs a bad point) is read from a verified
copy when one exists, refused otherwise, or read anyway with ``force`` and
reported as unverified. A file target is written as ``.NAME.partial`` next to
the destination, fsynced and renamed; an existing file is never overwritten
unless ``overwrite``. An NBD target (``nbd://`` or ``nbd+unix://``) is written
in place (``convert -n``) and must be at least as large as the disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.catalog.chains import ChainStore
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.errors import Action, SendenseError, ValidationError
from engine.events import Event, EventBus
from engine.fsutil import shared_place_output
from engine.jobs import JobContext, JobHandler, JobRunner
from engine.services.chains import repo_file
from engine.services.images import PointRead, PointReader, PointUnreadable
from engine.states import JobKind
from engine.tools import qemu_img
from engine.tools.base import ToolError
from engine.tools.blockspec import ImageSpec, is_nbd
from engine.units import human_bytes

FORMATS = ("raw", "qcow2")


class RestoreError(SendenseError):
    """The restore could not be done; the destination was left as it was."""


@dataclass
class DiskRestoreResult:
    backup_id: int
    target: str
    fmt: str
    bytes: int
    vm: str
    disk: str
    #: the repository the files were read from (a copy's, when the point was bad)
    read_from: str = ""
    #: how it was read when that is not the plain way (a copy, or forced and unverified)
    note: str | None = None
    unverified: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DiskRestoreService:
    """Whole-disk restores (``engine.restores``); job kind ``restore_disk``."""

    def __init__(
        self,
        store: ChainStore,
        repositories: RepositoryStore,
        jobs: JobRunner,
        bus: EventBus,
        reader: PointReader,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.repositories = repositories
        self.jobs = jobs
        self.bus = bus
        #: opens points the catalog's way and picks a verified copy for a bad one
        self.reader = reader
        self.clock = clock

    def job_handlers(self) -> dict[JobKind, JobHandler]:
        return {JobKind.RESTORE_DISK: JobHandler(self.run_job)}

    def submit(
        self,
        backup_id: int,
        target: str,
        *,
        fmt: str = "raw",
        overwrite: bool = False,
        force: bool = False,
        actor: str | None = None,
    ) -> Any:
        """Queue a restore. ``overwrite`` replaces an existing target file; ``force``
        reads a bad point with no verified copy anyway. A bad point without ``force``
        and a chain whose headers disagree with the catalog are refused here, so the
        operator learns it before a job is queued (the job checks again)."""
        backup, chain, repo = self.store.locate(backup_id)
        target = self._check_target(target, fmt, overwrite)
        self._open(backup_id, force)
        return self.jobs.submit(
            JobKind.RESTORE_DISK,
            f"restore {chain.vm_name}/{chain.disk_name} point #{backup_id} to {target}",
            {
                "backup_id": backup_id,
                "target": target,
                "fmt": fmt,
                "overwrite": overwrite,
                "force": force,
            },
            repository_id=repo.id,
            bytes_total=backup.virtual_size,
            actor=actor,
        )

    def run_job(self, ctx: JobContext) -> dict[str, Any]:
        p = ctx.params
        return self.restore(
            int(p["backup_id"]),
            str(p["target"]),
            fmt=str(p.get("fmt", "raw")),
            overwrite=bool(p.get("overwrite", False)),
            force=bool(p.get("force", False)),
            ctx=ctx,
        ).as_dict()

    def _check_target(self, target: str, fmt: str, overwrite: bool) -> str:
        """The target as it will be used (a file made absolute, so qemu never reads a
        ``word:`` prefix as a protocol); refuses what cannot be written."""
        if fmt not in FORMATS:
            raise ValidationError(f"restore format {fmt!r} is unknown: use raw or qcow2")
        if is_nbd(target):
            return target
        path = Path(os.path.abspath(target))
        if path.is_dir():
            raise ValidationError(
                f"restore target {target} is a directory",
                hint="give a file name, e.g. /restore/web01-sda.raw",
            )
        if not path.parent.is_dir():
            raise ValidationError(
                f"restore target directory {path.parent} does not exist",
                hint="create it first or choose another place",
            )
        if path.exists() and not overwrite:
            raise ValidationError(
                f"restore target {target} already exists",
                action=Action("overwrite_target", "choose another name or replace it (overwrite)"),
            )
        if path.exists() and path.is_block_device():
            raise ValidationError(
                f"restore target {target} is a block device; use an nbd:// target or a file"
            )
        return str(path)

    def restore(
        self,
        backup_id: int,
        target: str,
        *,
        fmt: str = "raw",
        overwrite: bool = False,
        force: bool = False,
        ctx: JobContext | None = None,
        actor: str | None = None,
    ) -> DiskRestoreResult:
        """Write point ``backup_id`` as a whole disk to ``target`` (file path or NBD URI)."""
        backup, chain, repo = self.store.locate(backup_id)
        if backup.state == "deleted":
            raise RestoreError(f"restore point {backup_id} was deleted")
        target = self._check_target(target, fmt, overwrite)
        opened = self._open(backup_id, force)
        source = opened.spec
        size = backup.virtual_size

        def progress(percent: float, *, force: bool = False) -> None:
            if ctx is not None:
                ctx.progress(
                    int(size * percent / 100), size, message=f"restore to {target}", force=force
                )

        should_stop = ctx.should_stop if ctx is not None else None
        if is_nbd(target):
            self._to_nbd(source, target, size, progress, should_stop)
        else:
            self._to_file(source, Path(target), fmt, overwrite, progress, should_stop)
        result = DiskRestoreResult(
            backup_id,
            target,
            fmt,
            size,
            chain.vm_name,
            chain.disk_name,
            read_from=opened.repository,
            note=opened.note,
            unverified=opened.plan.unverified,
        )
        self.bus.publish(
            Event(
                kind="restore.disk_completed",
                message=f"restored {chain.vm_name}/{chain.disk_name} point #{backup_id} "
                f"({human_bytes(size)}) to {target}" + (f" ({opened.note})" if opened.note else ""),
                level="warning" if opened.plan.unverified else "info",
                source="restore",
                repository_id=repo.id,
                job_id=ctx.job_id if ctx else None,
                actor=actor,
                data=result.as_dict(),
            )
        )
        return result

    def _open(self, backup_id: int, force: bool) -> PointRead:
        try:
            return self.reader.open(backup_id, force=force)
        except PointUnreadable as exc:
            raise RestoreError(
                f"restore point {backup_id} cannot be read through its chain: {exc.message}",
                hint=exc.hint,
                action=None
                if exc.hint
                else Action("check_chain_restore_copy", "check the chain and restore from a copy"),
            ) from None

    def _to_file(
        self,
        source: ImageSpec,
        target: Path,
        fmt: str,
        overwrite: bool,
        progress: Callable[..., None],
        should_stop: Callable[[], bool] | None,
    ) -> None:
        try:
            # a partial of its own, and no target replaced unless asked: another
            # restore (a second operator, the daemon) may write the same name meanwhile
            with shared_place_output(target, replace=overwrite) as tmp:
                qemu_img.convert(
                    source,
                    tmp,
                    dst_fmt=fmt,
                    on_progress=progress,
                    should_stop=should_stop,
                )
                # the last stop check is before the file takes its name: a restore
                # that stops (pause, cancel, shutdown) leaves no target, so it can run
                # again
                progress(100.0, force=True)
        except FileExistsError:
            raise RestoreError(
                f"restore target {target} was created by someone else while this restore "
                "ran: it was left as it is",
                action=Action("overwrite_target", "choose another name or replace it (overwrite)"),
            ) from None

    def _to_nbd(
        self,
        source: ImageSpec,
        target: str,
        size: int,
        progress: Callable[..., None],
        should_stop: Callable[[], bool] | None,
    ) -> None:
        try:
            dest = qemu_img.info(target, fmt="raw")
        except ToolError as exc:
            raise RestoreError(f"NBD target {target} cannot be opened: {exc.message}") from None
        if dest.virtual_size < size:
            raise RestoreError(
                f"NBD target {target} holds {dest.virtual_size} bytes, the disk needs {size}",
                hint="export a target at least as large as the disk",
            )
        extra: Sequence[str] = ("-n",)
        qemu_img.convert(
            source,
            target,
            dst_fmt="raw",
            extra_args=extra,
            on_progress=progress,
            should_stop=should_stop,
        )
        progress(100.0, force=True)


def point_file(store: ChainStore, backup_id: int) -> Path:
    """Where a restore point's file is (for callers that only need the path)."""
    backup, _chain, repo = store.locate(backup_id)
    return repo_file(repo, backup.path)
