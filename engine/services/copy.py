"""Backup copies between repositories (3-2-1): rules, copy jobs, retries, alerts.

A copy job copies the files of a rule's selected backups into the destination
repository at the same relative path, so the chains' relative backing
references resolve there too. Bases go before incrementals; an incremental whose
base did not make it is not copied. Each copy records the copy it is backed by
(``Copy.parent_copy_id``), which stays true when the source chain is consolidated
later (the merge replaces the source file, not the copy).

Each file is copied with :func:`engine.copier.copy_file` (chunked reads, sha256
computed in the same pass, published through ``fsutil.durable_output``; a clone
where the filesystem can); only then is the Copy row marked completed. The copied
file gets its own manifest next to it (``NAME.json``, ``copy_of`` naming the
source repository), so the destination describes itself too (see
engine.services.manifests). The computed checksum must equal the source backup's
recorded one: a source that rotted is never copied
silently. Before a file is copied, the headers of its chain are checked against
the catalog (engine.services.images): a point whose header names another file, a
data file or another format is not copied (a copy would carry the foreign
reference to another repository). A cloned file (``cloned=True``) counts as the
same device for 3-2-1.

Verifying after the copy (a rule's ``verify_after``, on by default) reads the
copy's headers and metadata back from the destination and takes the checksum of
the bytes as they were written, not a second read of every byte (see
VerifyService.verify_copy): a copy runs at the disk's speed, and the copy stays
due for the scheduled verification, which reads it back from the disk.

Files overlap: while one file is checked after its copy (its manifest, its row, the
verification, its lock: on a thread), the next is copied into its partial, and the
disk reads the beginning of the one after. A file is published only once the check of
the file before it is settled; an incremental whose base failed its check is withdrawn
(its partial removed, its row as it was before), so nothing lands on top of a base that
failed and the job ends with the same sentences as if the files had gone one by one.
Measured on this project's machines (a 1 GiB chain of 3 files, ext4 on a virtual disk,
cache dropped), the check took 50-90 ms a file and the job 0.3-0.4 s more than its
copies before the overlap.

Locking is a step of the copy: once a copy is complete (and verified) it is
locked when its destination is immutable or its rule has ``lock_copies``; a
copy that cannot be locked stays (it is a good copy) and the job ends as
``failed_unprotected`` (``LockService.lock_landed``).

After a crash the job is claimed again (lease lapse) and the file resumes from
its partial (see engine.copier).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from engine.alerts import AlertSink
from engine.bounds import LATEST_COUNT, MAX_AGE_HOURS
from engine.catalog.copies import COPY_DONE, CopyStore, SourceBackup
from engine.catalog.jobs import JobStore
from engine.catalog.models import Copy, CopyRule, Repository
from engine.catalog.policies import ScheduleStore
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.copier import (
    CHUNK_SIZE,
    CopyError,
    CopyNoSpace,
    FileCopyResult,
    SourceChecksumMismatch,
    TokenBucket,
    Withdrawn,
    copy_file,
)
from engine.cron import cron_error
from engine.errors import (
    Action,
    JobCancelled,
    JobUnprotected,
    NotFoundError,
    SendenseError,
    StopReason,
    ValidationError,
)
from engine.events import Event, EventBus
from engine.failpoints import failpoint
from engine.fsutil import discard, partial_path
from engine.jobs import JobContext, JobHandler, JobRunner
from engine.names import name_error
from engine.platform import read_soon
from engine.services import manifests
from engine.services.chains import repo_file
from engine.services.images import ImageGuard, ImageRefused, Layer, PointUnreadable
from engine.services.immutability import LockOutcome, LockService
from engine.services.probe import RepositoryCheckError
from engine.services.verify import VerifyService
from engine.states import JobKind
from engine.units import human_bytes, plural

log = logging.getLogger(__name__)

#: the event a finished backup publishes; immediate rules subscribe to it
BACKUP_LANDED_EVENT = "backup.completed"

SELECTIONS = ("all", "fulls", "latest")
#: stops after which a copy resumes (its partial file kept, its row pending); a cancel
#: or a lost catalog removes the partial
#: bytes of a job's first file the disk reads while the job checks its headers: about
#: what the disk reads in that time (70-120 ms at ~0.6-1 GB/s here), beyond it the
#: copy's own read-ahead has started
FIRST_READ_SOON = 64 * 1024 * 1024
#: bytes of the next file the disk reads while a file is checked after its copy (the
#: job thread meanwhile does the next file's row and header check: the disk would idle)
NEXT_READ_SOON = 16 * 1024 * 1024
KEEPS_PARTIAL = (StopReason.PAUSE, StopReason.SHUTDOWN, StopReason.LOST)
MODES = ("immediate", "scheduled", "manual")


class SourceRefused(CopyError):
    """A header of the source's chain disagrees with the catalog; retrying will not help."""


# ---------------------------------------------------------------------------
# the service


@dataclass
class Alert:
    kind: str  # rule_failing | copy_too_old | verification_overdue
    level: str
    message: str
    rule_id: int | None = None
    repository_id: int | None = None


@dataclass
class RuleStatus:
    rule: CopyRule
    source: str
    destination: str
    completed: int
    failed: int
    in_progress: int
    newest_copy_at: datetime | None
    next_run_at: datetime | None = None
    problems: list[str] = field(default_factory=list)
    #: the state of the rule's newest copy job (None: never run)
    last_run: str | None = None

    @property
    def health(self) -> str:
        """One word for a listing: "alert", "cancelled" or "failed" (its last run),
        else "ok". A run the operator cancelled copied nothing it promised."""
        if self.problems:
            return "alert"
        if self.last_run in ("cancelled", "failed"):
            return self.last_run
        return "ok"


def _throttle(rule: CopyRule | None) -> tuple[TokenBucket | None, int]:
    """The rule's bandwidth limit (None: none) and the chunk size that keeps it smooth."""
    if rule is None or not rule.bandwidth_limit:
        return None, CHUNK_SIZE
    bucket = TokenBucket(rule.bandwidth_limit)
    return bucket, max(64 * 1024, min(CHUNK_SIZE, int(bucket.rate) // 8 // 65536 * 65536))


@dataclass(frozen=True)
class _Landed:
    """A file copied and published under its name, its check after the copy to come."""

    b: SourceBackup
    copy: Copy
    dst_path: Path
    result: FileCopyResult


class _Checking:
    """The step after a copy (manifest, row, verification, lock: _finish_copy) of one
    file, on a thread while the job copies the next file into its partial. The next
    file is published only after this one's check is settled (``result``), and not at
    all when it is an incremental on top of a file whose check failed."""

    def __init__(self, b: SourceBackup, check: Callable[[], LockOutcome]) -> None:
        self.b = b
        self._check = check
        self._lock: LockOutcome | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sendense-copy-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._lock = self._check()
        except BaseException as exc:  # raised in the job's thread by result()
            self._error = exc

    def result(self) -> LockOutcome:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._lock is not None
        return self._lock


@dataclass
class _Run:
    """A copy job's files as it goes: the good ones (copied and checked, or there
    already), bytes done, and what to say at the end."""

    total: int
    verify_after: bool
    good: set[int]
    done: int
    copied: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    unprotected: list[str] = field(default_factory=list)
    checking: _Checking | None = None


class _Replaced(Withdrawn):
    """The point's file was replaced (a merge) while it was copied: the copy is dropped
    and the file it is now is copied."""


def _source_or_none(todo: list[SourceBackup], repos: dict[int, Repository]) -> Path | None:
    """The source file of the first of ``todo``, to read ahead; None when there is none
    or its catalog path leaves its repository (refused at that file's own turn)."""
    if not todo:
        return None
    try:
        return repo_file(repos[todo[0].repository_id], todo[0].path)
    except ValidationError:
        return None


def _skipped(b: SourceBackup) -> str:
    return f"{b.path}: its base was not copied, so it was skipped"


class CopyService:
    """Copy rules and copy jobs. Built by the Engine as ``engine.copies``."""

    #: attempts per file before the copy fails and an event is raised
    max_attempts = 3
    #: first retry waits this long, then twice as long each time
    backoff_seconds = 2.0
    #: copy jobs writing to one destination at the same time (in this engine)
    per_destination = 1
    #: alert when a rule failed this many times in a row
    alert_after_failures = 3

    def __init__(
        self,
        store: CopyStore,
        repositories: RepositoryStore,
        jobs: JobRunner,
        bus: EventBus,
        guard: ImageGuard,
        *,
        locks: LockService,
        clock: Clock = SYSTEM_CLOCK,
        verifier: VerifyService | None = None,
        destination_check: Callable[[Repository], object] | None = None,
        room_check: Callable[[Repository], object] | None = None,
        marks: ScheduleStore | None = None,
        alert_sink: AlertSink | None = None,
    ) -> None:
        self.store = store
        self.repositories = repositories
        self.jobs = jobs
        self.job_store: JobStore = jobs.store
        self.bus = bus
        #: checks the headers of the chain a copied file belongs to
        self.guard = guard
        self.clock = clock
        self.verifier = verifier
        #: the repositories service's "is it mounted and not full" gate, when wired
        self.destination_check = destination_check
        #: the capacity gate ("full" repositories take no new copies), checked before a job
        self.room_check = room_check
        self._slots: dict[int, threading.BoundedSemaphore] = {}
        self._slots_lock = threading.Lock()
        #: schedule marks: the scheduler's next run of a scheduled rule; without them
        #: next_run() computes from the cron
        self.marks = marks
        #: told when a rule's failure count changes, so a failing-rule alert is raised
        #: (or cleared) at once instead of at the scheduler's next alert pass
        self.alert_sink = alert_sink
        #: the lock step of every copy, and the immutability gate of lock_copies rules
        self.locks = locks
        # immediate rules follow landed backups
        self.bus.subscribe(self._on_backup_landed, (BACKUP_LANDED_EVENT,))

    # -- wiring ------------------------------------------------------------------

    def job_handlers(self) -> dict[JobKind, JobHandler]:
        return {JobKind.COPY: JobHandler(self.run_job)}

    def _on_backup_landed(self, event: Event) -> None:
        repo_id = event.repository_id or event.data.get("repository_id")
        if repo_id is None and event.data.get("backup_id") is not None:
            with contextlib.suppress(NotFoundError):
                repo_id = self.store.source_backup(int(event.data["backup_id"])).repository_id
        if repo_id is None:
            return
        for rule in self.store.list_rules(
            source_repository_id=int(repo_id), mode="immediate", enabled_only=True
        ):
            try:
                self.run_rule(rule.id, actor="copy-rule", if_idle=True)
            except SendenseError as exc:
                log.warning("immediate copy rule %s: %s", rule.name, exc)

    # -- rules -------------------------------------------------------------------

    def validate_rule(
        self,
        *,
        name: str,
        source: int | str,
        destination: int | str,
        selection: str = "all",
        latest_count: int | None = None,
        mode: str = "manual",
        schedule: str | None = None,
        priority: int = 100,
        bandwidth_limit: int | None = None,
        max_age_hours: int | None = None,
        lock_copies: bool = False,
    ) -> tuple[Repository, Repository]:
        """Check a rule before it is stored; raises ValidationError with a clear sentence."""
        problem = name_error(name)
        if problem:
            raise ValidationError(f"copy rule name {name!r} is not allowed: {problem}")
        src = self.repositories.get(source)
        dst = self.repositories.get(destination)
        if src.id == dst.id:
            raise ValidationError(
                f"source and destination are both {src.name!r}: a copy must go to another "
                "repository",
                hint="pick a destination on another disk or site",
            )
        self.check_destination(dst)
        if selection not in SELECTIONS:
            raise ValidationError(f"selection must be one of {', '.join(SELECTIONS)}")
        if selection == "latest":
            if latest_count is None:
                raise ValidationError("selection 'latest' needs a count of at least 1 (latest N)")
            LATEST_COUNT.check(latest_count)
        if mode not in MODES:
            raise ValidationError(f"mode must be one of {', '.join(MODES)}")
        if mode == "scheduled":
            problem = cron_error(schedule, now=self.clock.now())
            if problem:
                raise ValidationError(
                    f"the schedule is refused: {problem}",
                    hint="five fields, UTC, e.g. '0 2 * * *' for 02:00 every day",
                )
        # bounded as the catalog's column is: a number typed in the console that
        # would overflow it is refused here, not by the database
        if bandwidth_limit is not None and not 0 <= bandwidth_limit <= 2**63 - 1:
            raise ValidationError("a bandwidth limit is from 0 (none) to 8 EiB a second")
        if max_age_hours is not None:
            MAX_AGE_HOURS.check(max_age_hours)
        if not 0 <= priority <= 1000:
            raise ValidationError("priority must be between 0 and 1000 (lower runs first)")
        if lock_copies:
            self._check_lock_copies(src, dst)
        return src, dst

    def _check_lock_copies(self, src: Repository, dst: Repository) -> None:
        """``lock_copies`` needs a lock period and a destination that can hold the flag.

        The choice: a copy is locked for the destination's lock period when the
        destination is immutable, and at least as long as the original is locked when
        the source is immutable (a copy held for less than its original would be the
        weak link). A rule has no lock period of its own, so with neither side
        immutable there is nothing to lock for and the rule is refused rather than
        saved with a setting that does nothing. The destination's filesystem must
        support the immutable flag (ext4, xfs, btrfs; not tmpfs, NFS or CIFS),
        checked now so the rule is refused with the reason instead of failing later.
        """
        if not dst.immutable and not src.immutable:
            raise ValidationError(
                f"locking copies needs a lock period, and neither {src.name!r} nor "
                f"{dst.name!r} is immutable",
                action=Action(
                    "lock_destination",
                    "make the destination immutable first, or copy from an immutable repository",
                    dst.name,
                ),
            )
        self.locks.check_supported(dst)

    def check_destination(self, dst: Repository) -> None:
        """The destination must pass the repositories' one write gate (enabled,
        mounted, a writable directory); its refusal is a refused input here."""
        if self.destination_check is None:
            return
        try:
            self.destination_check(dst)
        except RepositoryCheckError as exc:
            raise ValidationError(
                f"destination {exc.message}", hint=exc.hint, action=exc.action
            ) from None

    def add_rule(
        self,
        *,
        name: str,
        source: int | str,
        destination: int | str,
        selection: str = "all",
        latest_count: int | None = None,
        mode: str = "manual",
        schedule: str | None = None,
        priority: int = 100,
        lock_copies: bool = False,
        verify_after: bool = True,
        bandwidth_limit: int | None = None,
        max_age_hours: int | None = None,
        actor: str | None = None,
    ) -> CopyRule:
        src, dst = self.validate_rule(
            name=name,
            source=source,
            destination=destination,
            selection=selection,
            latest_count=latest_count,
            mode=mode,
            schedule=schedule,
            priority=priority,
            bandwidth_limit=bandwidth_limit,
            max_age_hours=max_age_hours,
            lock_copies=lock_copies,
        )
        rule = self.store.add_rule(
            name=name,
            now=self.clock.now(),
            source_repository_id=src.id,
            destination_repository_id=dst.id,
            selection=selection,
            latest_count=latest_count if selection == "latest" else None,
            mode=mode,
            schedule=schedule if mode == "scheduled" else None,
            priority=priority,
            lock_copies=lock_copies,
            verify_after=verify_after,
            bandwidth_limit=bandwidth_limit or None,
            max_age_hours=max_age_hours,
        )
        self.bus.publish(
            Event(
                kind="copy.rule_added",
                message=f"copy rule {rule.name}: {src.name} -> {dst.name} ({mode})",
                source="copy",
                repository_id=dst.id,
                actor=actor,
                data={"rule_id": rule.id},
            )
        )
        return rule

    def update_rule(self, ref: int | str, *, actor: str | None = None, **changes: Any) -> CopyRule:
        """Change a rule's settings, checked as ``add_rule`` checks a new one (nothing
        is saved unless all of it is right); its id, state and history stay. A new
        schedule takes effect from its next time (the scheduler's mark remembers the
        schedule it was computed for)."""
        rule = self.store.get_rule(ref)
        wanted: dict[str, Any] = {
            "name": rule.name,
            "source": rule.source_repository_id,
            "destination": rule.destination_repository_id,
            "selection": rule.selection,
            "latest_count": rule.latest_count,
            "mode": rule.mode,
            "schedule": rule.schedule,
            "priority": rule.priority,
            "bandwidth_limit": rule.bandwidth_limit,
            "max_age_hours": rule.max_age_hours,
            "lock_copies": rule.lock_copies,
        }
        unknown = sorted(set(changes) - set(wanted) - {"verify_after"})
        if unknown:
            raise ValidationError(f"a copy rule has no setting {unknown[0]!r}")
        wanted.update({k: v for k, v in changes.items() if k != "verify_after"})
        if wanted["name"] != rule.name and any(
            other.name == wanted["name"] for other in self.store.list_rules()
        ):
            raise ValidationError(f"a copy rule named {wanted['name']!r} already exists")
        src, dst = self.validate_rule(**wanted)
        fields: dict[str, Any] = {
            "name": wanted["name"],
            "source_repository_id": src.id,
            "destination_repository_id": dst.id,
            "selection": wanted["selection"],
            "latest_count": wanted["latest_count"] if wanted["selection"] == "latest" else None,
            "mode": wanted["mode"],
            "schedule": wanted["schedule"] if wanted["mode"] == "scheduled" else None,
            "priority": wanted["priority"],
            "lock_copies": wanted["lock_copies"],
            "bandwidth_limit": wanted["bandwidth_limit"] or None,
            "max_age_hours": wanted["max_age_hours"],
        }
        if "verify_after" in changes:
            fields["verify_after"] = bool(changes["verify_after"])
        updated = self.store.update_rule(rule.id, **fields)
        renamed = f" (was {rule.name})" if updated.name != rule.name else ""
        self.bus.publish(
            Event(
                kind="copy.rule_changed",
                message=f"copy rule {updated.name}{renamed} changed: {src.name} -> {dst.name} "
                f"({updated.mode})",
                source="copy",
                repository_id=dst.id,
                actor=actor,
                data={"rule_id": updated.id},
            )
        )
        return updated

    def set_rule_enabled(
        self, ref: int | str, enabled: bool, *, actor: str | None = None
    ) -> CopyRule:
        """A disabled rule copies nothing (not after backups, not on its schedule)
        until it is enabled again; its copies stay."""
        rule = self.store.update_rule(self.store.get_rule(ref).id, enabled=enabled)
        self.bus.publish(
            Event(
                kind="copy.rule_enabled" if enabled else "copy.rule_disabled",
                message=f"copy rule {rule.name} {'enabled' if enabled else 'disabled'}",
                source="copy",
                actor=actor,
                data={"rule_id": rule.id},
            )
        )
        return rule

    def list_rules(self) -> list[CopyRule]:
        return self.store.list_rules()

    def get_rule(self, ref: int | str) -> CopyRule:
        return self.store.get_rule(ref)

    def remove_rule(self, ref: int | str, *, actor: str | None = None) -> CopyRule:
        rule = self.store.get_rule(ref)
        for job in self._active_jobs():
            if job.params.get("rule_id") == rule.id:
                raise ValidationError(
                    f"copy rule {rule.name!r} has a job running or queued (job {job.id})",
                    action=Action("cancel_job", f"cancel job {job.id} first", str(job.id)),
                )
        self.store.delete_rule(rule.id)
        self.bus.publish(
            Event(
                kind="copy.rule_removed",
                message=f"copy rule {rule.name} removed (copies already made stay)",
                source="copy",
                actor=actor,
                data={"rule_id": rule.id},
            )
        )
        return rule

    def next_run(self, rule: CopyRule, after: datetime | None = None) -> datetime | None:
        """When a scheduled rule runs next: the scheduler's mark when it has one for this
        schedule (a time in the past means "due, starts at the next tick"), else the
        next cron time after ``after`` (default now)."""
        if rule.mode != "scheduled" or not rule.schedule or not rule.enabled:
            return None
        if after is None and self.marks is not None:
            mark = self.marks.get(f"schedule:copy_rule:{rule.id}")
            if mark is not None and mark.message == rule.schedule and mark.due_at is not None:
                return as_utc(mark.due_at)
        from engine.cron import cron_iter

        base = after or self.clock.now()
        return as_utc(cron_iter(rule.schedule, base).get_next(datetime))

    # -- planning ------------------------------------------------------------------

    def select(self, rule: CopyRule) -> list[SourceBackup]:
        """The backups a rule covers, bases before incrementals (ancestors included)."""
        backups = self.store.source_backups(rule.source_repository_id)
        by_id = {b.id: b for b in backups}
        if rule.selection == "fulls":
            chosen = {b.id for b in backups if b.kind == "full"}
        elif rule.selection == "latest":
            per_disk: dict[tuple[str, str], list[SourceBackup]] = {}
            for b in backups:
                per_disk.setdefault((b.vm_name, b.disk_name), []).append(b)
            chosen = set()
            for points in per_disk.values():
                points.sort(key=lambda b: (b.point_time, b.id), reverse=True)
                chosen.update(b.id for b in points[: rule.latest_count or 1])
        else:
            chosen = set(by_id)
        # an incremental is useless without its base: bring the ancestors along
        for backup_id in list(chosen):
            parent = by_id[backup_id].parent_id
            while parent is not None and parent in by_id and parent not in chosen:
                chosen.add(parent)
                parent = by_id[parent].parent_id
        return [b for b in backups if b.id in chosen]

    # -- running -------------------------------------------------------------------

    def _active_jobs(self) -> list[Any]:
        return self.job_store.list(states=("queued", "running", "paused"), kind="copy")

    def active_rule_jobs(self, rule_id: int) -> list[Any]:
        """Copy jobs of this rule that are queued, running or paused."""
        return [j for j in self._active_jobs() if j.params.get("rule_id") == rule_id]

    def run_rule(self, ref: int | str, *, actor: str | None = None, if_idle: bool = False) -> Any:
        """Queue a copy job for a rule. ``if_idle``: not when one is already queued."""
        rule = self.store.get_rule(ref)
        if not rule.enabled:
            raise ValidationError(f"copy rule {rule.name!r} is disabled")
        if if_idle:
            for job in self.job_store.list(states=("queued",), kind="copy"):
                if job.params.get("rule_id") == rule.id:
                    return job
        repos = self.store.repositories_by_id()
        src = repos[rule.source_repository_id]
        dst = repos[rule.destination_repository_id]
        return self.jobs.submit(
            JobKind.COPY,
            f"copy {rule.name}: {src.name} -> {dst.name}",
            {"rule_id": rule.id},
            repository_id=dst.id,
            priority=rule.priority,
            actor=actor,
        )

    def copy_backups(
        self,
        backup_ids: list[int],
        destination: int | str,
        *,
        actor: str | None = None,
        verify_after: bool = True,
    ) -> Any:
        """Queue a one-off copy of some backups (their bases come along) to a repository."""
        dst = self.repositories.get(destination)
        self.check_destination(dst)
        for backup_id in backup_ids:
            b = self.store.source_backup(backup_id)
            if b.repository_id == dst.id:
                raise ValidationError(f"backup {backup_id} already lives in {dst.name!r}")
        return self.jobs.submit(
            JobKind.COPY,
            f"copy {plural(len(backup_ids), 'backup')} -> {dst.name}",
            {
                "backup_ids": list(backup_ids),
                "destination_repository_id": dst.id,
                "verify_after": verify_after,
            },
            repository_id=dst.id,
            actor=actor,
        )

    def rerun(self, copy_id: int, *, actor: str | None = None) -> Any:
        """Run a failed copy again by hand (it resumes from its partial when there is one)."""
        copy = self.store.get_copy(copy_id)
        if copy.state != "failed":
            raise ValidationError(
                f"copy {copy_id} is {copy.state}; only a failed copy can be re-run"
            )
        self.store.update_copy(copy_id, state="pending", error=None)
        dst = self.repositories.get(copy.destination_repository_id)
        params: dict[str, Any] = {
            "backup_ids": [copy.backup_id],
            "destination_repository_id": dst.id,
        }
        if copy.rule_id is not None:
            params["rule_id"] = copy.rule_id
        return self.jobs.submit(
            JobKind.COPY,
            f"re-run copy {copy_id} -> {dst.name}",
            params,
            repository_id=dst.id,
            actor=actor,
        )

    @contextlib.contextmanager
    def _destination_slot(self, repo_id: int, ctx: JobContext) -> Iterator[None]:
        with self._slots_lock:
            slot = self._slots.setdefault(repo_id, threading.BoundedSemaphore(self.per_destination))
        while not slot.acquire(timeout=0.5):
            ctx.check()
        try:
            yield
        finally:
            slot.release()

    def run_job(self, ctx: JobContext) -> dict[str, Any]:
        """The "copy" job handler."""
        params = ctx.params
        rule: CopyRule | None = None
        if params.get("rule_id") is not None:
            try:
                rule = self.store.get_rule(int(params["rule_id"]))
            except NotFoundError:
                if not params.get("backup_ids"):
                    raise
        if params.get("backup_ids"):
            dst = self.repositories.get(int(params["destination_repository_id"]))
            wanted = [self.store.source_backup(int(i)) for i in params["backup_ids"]]
            items = self._with_ancestors(wanted)
            verify_after = bool(params.get("verify_after", rule.verify_after if rule else True))
        elif rule is not None:
            dst = self.repositories.get(rule.destination_repository_id)
            items = self.select(rule)
            verify_after = rule.verify_after
        else:
            raise ValidationError("a copy job needs a rule or a list of backups")
        try:
            # the capacity gate first: it reads with a timeout and refuses a destination
            # that does not answer, which the directory checks would hang on
            if self.room_check is not None:
                self.room_check(dst)
            self.check_destination(dst)
            result = self._copy_items(ctx, items, dst, rule, verify_after)
        except JobCancelled:
            raise
        except SendenseError as exc:
            self._rule_failed(rule, exc.message)
            raise
        if rule is not None:
            before = rule.failures_in_row
            self.store.record_rule_outcome(rule.id, ok=True)
            if before:
                self._alerts_changed()
        return result

    def _alerts_changed(self) -> None:
        if self.alert_sink is not None:
            self.alert_sink.changed(("rule_failing",))

    def _with_ancestors(self, wanted: list[SourceBackup]) -> list[SourceBackup]:
        found: dict[int, SourceBackup] = {}
        for b in wanted:
            for member in self.store.chain_backups(b.chain_id):
                if member.position <= b.position and member.state == "complete":
                    found[member.id] = member
        return sorted(found.values(), key=lambda b: (b.chain_id, b.position, b.id))

    def _rule_failed(self, rule: CopyRule | None, why: str) -> None:
        if rule is None:
            return
        count = self.store.record_rule_outcome(rule.id, ok=False)
        # the alert itself (once, until the rule succeeds again) comes from the
        # scheduler's alert pass; the hook runs that pass for copy alerts now
        log.info("copy rule %s failed %d time(s) in a row: %s", rule.name, count, why)
        if count >= self.alert_after_failures:
            self._alerts_changed()

    def _copy_items(
        self,
        ctx: JobContext,
        items: list[SourceBackup],
        dst: Repository,
        rule: CopyRule | None,
        verify_after: bool,
    ) -> dict[str, Any]:
        repos = self.store.repositories_by_id()
        total = sum(b.file_size for b in items)
        existing = {b.id: self.store.find_copy(b.id, dst.id) for b in items}
        good = {bid for bid, c in existing.items() if c is not None and c.state == COPY_DONE}
        done = sum(b.file_size for b in items if b.id in good)
        ctx.progress(
            done, total, message=f"{plural(len(items) - len(good), 'file')} to copy", force=True
        )
        out = _Run(total, verify_after, good, done)
        todo = [b for b in items if b.id not in good]
        with self._destination_slot(dst.id, ctx), self._headers_ahead(todo, repos):
            try:
                for i, b in enumerate(todo):
                    ctx.check()
                    then_path = _source_or_none(todo[i + 1 :], repos)
                    self._copy_item(
                        ctx, b, repos[b.repository_id], dst, rule, existing, out, then_path
                    )
                self._settle(out)
            finally:
                if out.checking is not None:
                    # stopped or failed while the file before was checked: that file
                    # still gets its check and its row, as if it had been checked first
                    # (an error of that check is logged: the one on its way out is said)
                    path = out.checking.b.path
                    try:
                        self._settle(out)
                    except Exception:
                        log.exception("the check of %s after its copy failed", path)
        copied, failures, unprotected = out.copied, out.failures, out.unprotected
        result = {
            "copied": len(copied),
            "already_there": len(items) - len(copied) - len(failures),
            "failed": len(failures),
            "destination": dst.name,
            "bytes": total,
            "unprotected": unprotected,
        }
        if failures:
            raise CopyError(
                f"{len(failures)} of {plural(len(items), 'file')} could not be copied to "
                f"{dst.name}: " + "; ".join(failures[:3]) + (" …" if len(failures) > 3 else ""),
                action=Action("failed_copies", "list the failed copies; each can be re-run alone"),
            )
        if unprotected:
            raise JobUnprotected(
                f"{len(unprotected)} copied file(s) on {dst.name} are NOT protected: "
                + "; ".join(unprotected[:3])
                + (" …" if len(unprotected) > 3 else ""),
                result=result,
                action=Action(
                    "check_locks_copies",
                    "the copies are good; fix the cause, then a lock check sets the flag "
                    "(the lock job retries it too)",
                ),
            )
        return result

    def _copy_item(
        self,
        ctx: JobContext,
        b: SourceBackup,
        src_repo: Repository,
        dst: Repository,
        rule: CopyRule | None,
        existing: dict[int, Copy | None],
        out: _Run,
        then: Path | None,
    ) -> None:
        """Copy one file of the job while the file before it is checked (out.checking);
        it is published once that check is settled, and withdrawn (its partial removed,
        its row as it was) when it is an incremental on a base whose check failed.
        ``then``: the source of the file copied next, whose beginning the disk reads
        while this one is checked and the next one's rows and headers are done."""
        on_checked_base = out.checking is not None and out.checking.b.id == b.parent_id
        if b.parent_id is not None and b.parent_id not in out.good and not on_checked_base:
            out.failures.append(_skipped(b))
            return

        def settle() -> None:
            self._settle(out)
            if b.parent_id is not None and b.parent_id not in out.good:
                raise Withdrawn

        total = out.total
        try:
            landed = self._copy_one(
                ctx, b, src_repo, dst, rule, existing.get(b.id), out.done, total, settle
            )
        except Withdrawn:
            out.failures.append(_skipped(b))
            return
        except CopyNoSpace:
            raise
        except CopyError as exc:  # SourceChecksumMismatch too
            self._settle(out)
            out.failures.append(exc.message)
            out.done += b.file_size
            return
        out.done += b.file_size
        ctx.progress(out.done, total, force=True)

        def check() -> LockOutcome:
            if then is not None:
                read_soon(then, NEXT_READ_SOON)
            return self._finish_copy(
                ctx,
                b,
                src_repo,
                dst,
                rule,
                landed.copy,
                landed.dst_path,
                landed.result,
                out.verify_after,
            )

        out.checking = _Checking(b, check)

    def _settle(self, out: _Run) -> None:
        """Wait for the check of the file copied before and count it: good, failed (its
        sentence kept for the job's) or good but not locked."""
        checking, out.checking = out.checking, None
        if checking is None:
            return
        try:
            lock = checking.result()
        except CopyError as exc:
            out.failures.append(exc.message)
            return
        out.good.add(checking.b.id)
        out.copied.append(checking.b.id)
        if lock.failure is not None:
            out.unprotected.append(f"{checking.b.path}: {lock.failure}")

    @contextlib.contextmanager
    def _headers_ahead(
        self, todo: list[SourceBackup], repos: dict[int, Repository]
    ) -> Iterator[None]:
        """Work ahead of the job on a thread. First the disk starts reading the first
        file's beginning (read_soon) while the job checks that file's headers, so the
        copy does not start on an idle disk. Then, while the first file copies, the
        headers of the chains of the files after it are read into the guard's memory (a
        header read stays good only while its file is unchanged), so that each later
        file's own check before it is copied finds them there instead of starting a
        ``qemu-img info`` between two copies. Nothing is decided here: a problem found
        ahead is found again, and said, by the check of the file it belongs to."""
        done = threading.Event()

        def read() -> None:
            first = _source_or_none(todo, repos)
            if first is not None:
                read_soon(first, FIRST_READ_SOON)
            for b in todo[1:]:
                if done.is_set():
                    return
                try:
                    lineage = reversed(self.store.lineage(b.id))
                    layers = [Layer(x.id, x.path, x.file_size) for x in lineage]
                    self.guard.chain_spec(
                        repos[b.repository_id], b.chain_directory, layers, announce=False
                    )
                except Exception as exc:  # said by that file's own check, if it holds
                    log.debug("reading the headers of %s ahead: %s", b.path, exc)

        reader = threading.Thread(target=read, name="sendense-copy-ahead", daemon=True)
        if todo:
            reader.start()
        try:
            yield
        finally:
            done.set()
            if todo:
                # at most the header being read (a daemon thread: a repository that
                # stopped answering does not hold the job past its own timeout)
                reader.join(timeout=5)

    def _copy_one(
        self,
        ctx: JobContext,
        b: SourceBackup,
        src_repo: Repository,
        dst: Repository,
        rule: CopyRule | None,
        copy: Copy | None,
        base_done: int,
        total: int,
        settle: Callable[[], None],
    ) -> _Landed:
        """Copy one file and publish it once ``settle()`` (before_publish) allows; its
        check, row and lock follow in _finish_copy. A copy withdrawn by ``settle``
        leaves its row as it was before (a new row is removed)."""
        before = copy
        copy, parent_copy_id = self._copy_row(ctx, b, dst, rule, copy)
        headers_checked = self._headers_first(copy, b, src_repo, dst)
        src_path = repo_file(src_repo, b.path)
        dst_path = repo_file(dst, b.path)
        bucket, chunk = _throttle(rule)
        label = f"repository {dst.name} ({dst.path})"
        attempt = 0
        while True:
            attempt += 1
            self.store.update_copy(
                copy.id,
                state="copying",
                error=None,
                attempts=(copy.attempts or 0) + attempt,
                job_id=ctx.job_id,
                rule_id=rule.id if rule else copy.rule_id,
                parent_copy_id=parent_copy_id,
            )

            def progress(file_done: int, file_total: int, _path: str = b.path) -> None:
                # ctx.progress checks for cancel/pause when it writes (on the engine's
                # clock); poll on real time too, so a fixed clock cannot hide a cancel
                if ctx.should_stop():
                    ctx.raise_stop()
                ctx.progress(
                    base_done + file_done,
                    total,
                    message=f"{_path}: {human_bytes(file_done)} of {human_bytes(file_total)}",
                    resume_point={"copy_id": copy.id, "offset": file_done},
                )

            try:
                headers_checked = self._ready(b, src_repo, src_path, headers_checked)
                result = copy_file(
                    src_path,
                    dst_path,
                    expected_checksum=b.checksum,
                    chunk_size=chunk,
                    progress=progress,
                    bucket=bucket,
                    label=label,
                    # a copy is not read again soon (the check after it reads metadata
                    # only): its pages would only push the console's out of the cache
                    drop_cache=True,
                    before_publish=functools.partial(self._before_publish, b, settle),
                )
                break
            except _Replaced:
                # a merge made this point the full while it was copied (the file before
                # was being checked meanwhile): copy the file it is now
                self._restore_row(copy, before)
                fresh = self.store.source_backup(b.id)
                return self._copy_one(
                    ctx, fresh, src_repo, dst, rule, before, base_done, total, settle
                )
            except Withdrawn:
                self._restore_row(copy, before)
                raise
            except JobCancelled as exc:
                if (ctx.stopped or exc).reason in KEEPS_PARTIAL:
                    self.store.update_copy(copy.id, state="pending")
                    raise
                discard(partial_path(dst_path))
                self.store.update_copy(copy.id, state="failed", error="cancelled by the operator")
                raise
            except SourceChecksumMismatch as exc:
                fresh = self.store.source_backup(b.id)
                if fresh.state != "deleted" and fresh.checksum != b.checksum:
                    # not rot: a merge replaced this point's file while the job ran
                    # (the point became the full); copy the file it is now
                    return self._copy_one(
                        ctx, fresh, src_repo, dst, rule, copy, base_done, total, settle
                    )
                self._fail_copy(copy.id, b, dst, exc, level="critical")
                self._mark_source_bad(b)
                raise
            except SourceRefused as exc:
                self._fail_copy(copy.id, b, dst, exc)
                raise
            except CopyNoSpace as exc:
                self._fail_copy(copy.id, b, dst, exc)
                raise
            except CopyError as exc:
                if attempt >= self.max_attempts:
                    self._fail_copy(copy.id, b, dst, exc, attempts=attempt)
                    raise
                wait = self.backoff_seconds * 2 ** (attempt - 1)
                log.warning("copy of %s failed (%s); retrying in %.0f s", b.path, exc, wait)
                self._sleep(ctx, wait)
        failpoint("copy.after_rename")
        return _Landed(b, copy, dst_path, result)

    def _ready(
        self, b: SourceBackup, src_repo: Repository, src_path: Path, headers_checked: bool
    ) -> bool:
        """Before an attempt: the source is there and its chain's headers are checked
        (once they could be read); True once they are."""
        if not src_path.is_file():
            raise CopyError(f"source file {src_path} is missing")
        if not headers_checked:
            self._check_headers(b, src_repo)
        return True

    def _before_publish(self, b: SourceBackup, settle: Callable[[], None]) -> None:
        """The file before settles first; then the point must still be the file that was
        copied (a merge may have replaced it meanwhile: _Replaced)."""
        settle()
        fresh = self.store.source_backup(b.id)
        if fresh.state != "deleted" and fresh.checksum != b.checksum:
            raise _Replaced

    def _restore_row(self, copy: Copy, before: Copy | None) -> None:
        """A withdrawn copy leaves the catalog as the job found it: the row it made is
        removed, a row from an earlier run gets its state back."""
        if before is None:
            self.store.delete_copy(copy.id)
            return
        self.store.update_copy(
            copy.id,
            state=before.state,
            error=before.error,
            attempts=before.attempts,
            job_id=before.job_id,
        )

    def _headers_first(
        self, copy: Copy, b: SourceBackup, src_repo: Repository, dst: Repository
    ) -> bool:
        """The chain's headers first: a foreign one is refused before any path of it is
        used; False: a file is missing, checked again with each attempt (a repository
        may come back)."""
        try:
            self._check_headers(b, src_repo)
        except SourceRefused as exc:
            self._fail_copy(copy.id, b, dst, exc)
            raise
        except CopyError:
            return False
        return True

    def _copy_row(
        self,
        ctx: JobContext,
        b: SourceBackup,
        dst: Repository,
        rule: CopyRule | None,
        copy: Copy | None,
    ) -> tuple[Copy, int | None]:
        """The copy's row (created unless resumed) and the copy its file will be backed
        by at the destination (its lineage, kept even when the source chain is
        consolidated later)."""
        base = self.store.find_copy(b.parent_id, dst.id) if b.parent_id is not None else None
        parent_copy_id = base.id if base is not None else None
        if copy is None:
            copy = self.store.create_copy(
                backup_id=b.id,
                destination_repository_id=dst.id,
                path=b.path,
                size=b.file_size,
                now=self.clock.now(),
                rule_id=rule.id if rule else None,
                job_id=ctx.job_id,
                parent_copy_id=parent_copy_id,
            )
        return copy, parent_copy_id

    def _finish_copy(
        self,
        ctx: JobContext,
        b: SourceBackup,
        src_repo: Repository,
        dst: Repository,
        rule: CopyRule | None,
        copy: Copy,
        dst_path: Path,
        result: FileCopyResult,
        verify_after: bool,
    ) -> LockOutcome:
        """After the file landed under its name: its manifest, its row, the verification
        if asked, its lock, and the event that says so."""
        try:
            # the copy describes itself like its original (engine.services.manifests)
            self._write_manifest(b, src_repo, dst_path)
        except OSError as exc:
            error = CopyError(
                f"the manifest of {b.path} could not be written to {dst.name}: {exc.strerror}",
                hint="check the destination (space, permissions); the copy is retried",
            )
            self._fail_copy(copy.id, b, dst, error)
            raise error from None
        self.store.update_copy(
            copy.id,
            state="verifying" if verify_after else COPY_DONE,
            size=result.size,
            bytes_done=result.size,
            checksum=result.checksum,
            cloned=result.cloned,
            **({} if verify_after else {"completed_at": self.clock.now()}),
        )
        failpoint("copy.after_record")
        if verify_after and self.verifier is not None:
            outcome = self.verifier.verify_copy(
                copy.id, job_id=ctx.job_id, written_checksum=result.checksum
            )
            if outcome != "ok":
                self.store.update_copy(
                    copy.id, state="failed", error=f"verification after the copy: {outcome}"
                )
                raise CopyError(f"{b.path} at {dst.name} failed verification after the copy")
            self.store.update_copy(copy.id, state=COPY_DONE, completed_at=self.clock.now())
        elif verify_after:
            self.store.update_copy(copy.id, state=COPY_DONE, completed_at=self.clock.now())
        lock = self.locks.lock_landed(
            dst, b.path, copy_id=copy.id, days=self._rule_lock_days(rule), job_id=ctx.job_id
        )
        self.bus.publish(
            Event(
                kind="copy.completed",
                message=f"copied {b.path} to {dst.name} ({human_bytes(result.size)}"
                + (", cloned" if result.cloned else "")
                + (
                    f", resumed at {human_bytes(result.resumed_from)}"
                    if result.resumed_from
                    else ""
                )
                + ")"
                + (" but NOT locked" if lock.failure else ""),
                source="copy",
                repository_id=dst.id,
                job_id=ctx.job_id,
                data={
                    "copy_id": copy.id,
                    "backup_id": b.id,
                    "cloned": result.cloned,
                    "locked_until": lock.until.isoformat() if lock.until else None,
                    "unprotected": lock.failure,
                },
            )
        )
        return lock

    def _rule_lock_days(self, rule: CopyRule | None) -> int | None:
        """A rule with ``lock_copies`` holds its copies at least as long as the original
        is locked (the source repository's lock period); the destination's own period
        applies on top when it is immutable (``lock_landed`` takes the longer). The rule
        is refused at validation when neither side has a lock period."""
        if rule is None or not rule.lock_copies:
            return None
        source = self.repositories.get(rule.source_repository_id)
        return source.immutable_days if source.immutable else None

    def _check_headers(self, b: SourceBackup, src_repo: Repository) -> None:
        """Refuse to copy a file whose chain's headers disagree with the catalog (the
        guard raises the critical event); a missing link is retried like a missing
        file. The chain is the catalog's as it is now (its parent links), not as the
        job listed it: a merge may have replaced the point's file meanwhile, and the
        copy then takes the file it is now (see the checksum check in _copy_one)."""
        lineage = self.store.lineage(b.id)  # the point first, down to its full
        layers = [Layer(x.id, x.path, x.file_size) for x in reversed(lineage)]
        try:
            self.guard.chain_spec(src_repo, b.chain_directory, layers)
        except ImageRefused as exc:
            raise SourceRefused(
                f"{b.path} was not copied: {exc.message}", hint=exc.hint, action=exc.action
            ) from None
        except PointUnreadable as exc:
            raise CopyError(
                f"{b.path} was not copied: {exc.message}", hint=exc.hint, action=exc.action
            ) from None

    def _write_manifest(self, b: SourceBackup, src_repo: Repository, dst_path: Path) -> None:
        backup, chain, _repo = self.store.chains.locate(b.id)
        parent = (
            Path(self.store.chains.get_backup(b.parent_id).path).name
            if b.parent_id is not None and backup.kind != "full"
            else None
        )
        manifests.write_manifest(
            dst_path,
            manifests.point_manifest(backup, chain, parent=parent, copy_of=src_repo.name),
        )

    def _sleep(self, ctx: JobContext, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ctx.check()
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def _fail_copy(
        self,
        copy_id: int,
        b: SourceBackup,
        dst: Repository,
        exc: SendenseError,
        *,
        level: str = "error",
        attempts: int | None = None,
    ) -> None:
        self.store.update_copy(copy_id, state="failed", error=exc.message)
        tries = f" after {attempts} attempts" if attempts else ""
        self.bus.publish(
            Event(
                kind="copy.failed",
                message=f"copy of {b.path} to {dst.name} failed{tries}: {exc.message}",
                level=level,
                source="copy",
                repository_id=dst.id,
                data={"copy_id": copy_id, "backup_id": b.id},
            )
        )

    def _mark_source_bad(self, b: SourceBackup) -> None:
        self.store.set_backup_verified(b.id, "mismatch", self.clock.now(), mark_bad=True)

    # -- status and alerts -------------------------------------------------------------

    def status(self) -> list[RuleStatus]:
        repos = self.store.repositories_by_id()
        last_run: dict[int, str] = {}
        for job in self.jobs.store.list(kind="copy", limit=1000):  # newest first
            rule_id = (job.params or {}).get("rule_id")
            if isinstance(rule_id, int):
                last_run.setdefault(rule_id, job.state)
        out = []
        for rule in self.store.list_rules():
            copies = self.store.list_copies(rule_id=rule.id, limit=100000)
            newest = self.store.newest_completed_copy(rule.id)
            status = RuleStatus(
                rule=rule,
                source=repos[rule.source_repository_id].name,
                destination=repos[rule.destination_repository_id].name,
                completed=sum(1 for c in copies if c.state == COPY_DONE),
                failed=sum(1 for c in copies if c.state == "failed"),
                in_progress=sum(1 for c in copies if c.state in ("copying", "verifying")),
                newest_copy_at=newest.completed_at if newest else None,
                next_run_at=self.next_run(rule),
                last_run=last_run.get(rule.id),
            )
            status.problems = [a.message for a in self._rule_alerts(rule, status)]
            out.append(status)
        return out

    def list_copies(self, **filters: Any) -> list[Copy]:
        return self.store.list_copies(**filters)

    def _rule_alerts(self, rule: CopyRule, status: RuleStatus) -> list[Alert]:
        """A rule failing N times in a row (warning; critical at 2N) and a destination
        whose newest copy is older than ``max_age_hours`` (warning; critical at twice
        the age). A rule younger than its max age is not blamed for having no copy."""
        alerts = []
        if rule.failures_in_row >= self.alert_after_failures:
            level = (
                "critical" if rule.failures_in_row >= 2 * self.alert_after_failures else "warning"
            )
            alerts.append(
                Alert(
                    "rule_failing",
                    level,
                    f"copy rule {rule.name} ({status.source} -> {status.destination}) failed "
                    f"{rule.failures_in_row} times in a row",
                    rule_id=rule.id,
                    repository_id=rule.destination_repository_id,
                )
            )
        if rule.max_age_hours and rule.enabled:
            now = self.clock.now()
            limit = now - timedelta(hours=rule.max_age_hours)
            newest = as_utc(status.newest_copy_at)
            since = newest if newest is not None else as_utc(rule.created_at)
            if since is not None and since < limit:
                age = (
                    "has no copy yet"
                    if newest is None
                    else f"newest copy is from {newest:%Y-%m-%d %H:%M} UTC"
                )
                twice = now - timedelta(hours=2 * rule.max_age_hours)
                alerts.append(
                    Alert(
                        "copy_too_old",
                        "critical" if since < twice else "warning",
                        f"destination {status.destination} (copy rule {rule.name}) {age}; "
                        f"the rule allows {rule.max_age_hours} h",
                        rule_id=rule.id,
                        repository_id=rule.destination_repository_id,
                    )
                )
        return alerts

    def alerts(self) -> list[Alert]:
        """What anchors miss: failing rules and destinations whose copies are too old."""
        out: list[Alert] = []
        for status in self.status():
            out.extend(self._rule_alerts(status.rule, status))
        return out

    def protection(self, backup_id: int) -> dict[str, Any]:
        """3-2-1 facts of one backup: copies, distinct devices, an offsite one."""
        b = self.store.source_backup(backup_id)
        repos = self.store.repositories_by_id()
        copies = [c for c in self.store.list_copies(backup_id=backup_id) if c.state == COPY_DONE]
        devices = {("repo", b.repository_id)}
        for c in copies:
            devices.add(
                ("repo", b.repository_id) if c.cloned else ("repo", c.destination_repository_id)
            )
        offsite = repos[b.repository_id].offsite or any(
            repos[c.destination_repository_id].offsite for c in copies
        )
        return {"copies": 1 + len(copies), "devices": len(devices), "offsite": offsite}
