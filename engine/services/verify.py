"""Verification: do the backup files (and their copies) still hold what was written?

``qemu-img check`` reads metadata only and cannot see damaged data, so integrity
rests on our own checksums: every file is re-read and its sha256 compared with
the one recorded when it was written. Then the chain's headers: the files a
point is read through are exactly those the catalog's parent links name
(``CopyStore.lineage``; positions are only an order and keep their numbers when
older points are merged away), each file's backing name must be exactly its
parent's, no data file (the header guard of engine.services.images, which never
opens what a header names); then ``qemu-img check`` (metadata) of that one file,
opened with no backing. A copy is held to the lineage it was made with
(``CopyStore.copy_lineage``): a merge at the source leaves copied files as they
were, and the copies of merged-away points they read through are verified with
them. Reads are large and sequential; hashing runs in threads with one stream per
device (two streams on one disk would only make it seek).

A mismatch marks the point bad (``Backup.state = "bad"`` for a source file,
``Copy.verify_state = "mismatch"`` for a copy), raises a critical event, and the
report names the copies of that point that are still good.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from engine import hashing
from engine.alerts import VERIFY_ALERT_KINDS, AlertSink
from engine.catalog.copies import COPY_DONE, CopyStore, SourceBackup
from engine.catalog.models import Copy, Repository
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.errors import Action, JobCancelled, NotFoundError, SendenseError, ValidationError
from engine.events import Event, EventBus
from engine.jobs import JobContext, JobHandler, JobRunner
from engine.safepath import is_within
from engine.services.images import ImageGuard, ImageRefused, Layer, PointUnreadable
from engine.states import JobKind
from engine.tools import qemu_img
from engine.tools.base import ToolError
from engine.tools.blockspec import ImageSpec
from engine.units import plural

log = logging.getLogger(__name__)

READ_SIZE = 8 * 1024 * 1024
SCOPES = ("backup", "chain", "repository", "all")
OUTCOMES = ("ok", "mismatch", "missing", "check_failed", "chain_broken")


class VerifyStopped(JobCancelled):
    """The verification was asked to stop between chunks."""


def hash_file(
    path: Path,
    *,
    read_size: int = READ_SIZE,
    on_bytes: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[str, int]:
    """sha256 of a file and the bytes read (engine.hashing.hash_file); a stop raises
    VerifyStopped."""
    return hashing.hash_file(
        path,
        read_size=read_size,
        on_bytes=on_bytes,
        should_stop=should_stop,
        cancelled=lambda: VerifyStopped(f"verification of {path} was stopped"),
    )


@dataclass
class Target:
    """One file to verify: a backup in its own repository, or a copy of it."""

    backup: SourceBackup
    repository: Repository
    copy: Copy | None = None

    @property
    def path(self) -> Path:
        rel = self.copy.path if self.copy is not None else self.backup.path
        return Path(self.repository.path) / rel

    @property
    def expected(self) -> str | None:
        if self.copy is not None and self.copy.checksum:
            return self.copy.checksum
        return self.backup.checksum

    @property
    def size(self) -> int:
        return self.copy.size if self.copy is not None and self.copy.size else self.backup.file_size

    @property
    def key(self) -> tuple[str, int]:
        return ("copy", self.copy.id) if self.copy is not None else ("backup", self.backup.id)

    @property
    def written_at(self) -> datetime:
        """When this file landed: a copy when it was completed, a backup at its point
        time. A file younger than the re-verify window cannot be overdue."""
        if self.copy is not None:
            landed = as_utc(self.copy.completed_at or self.copy.created_at)
        else:
            landed = as_utc(self.backup.point_time)
        assert landed is not None
        return landed

    def describe(self) -> str:
        what = f"copy {self.copy.id}" if self.copy is not None else "original"
        return f"{self.backup.path} in {self.repository.name} ({what})"


@dataclass
class Result:
    target: Target
    outcome: str
    detail: str | None = None
    bytes_read: int = 0
    #: for a bad file: the other places this point is still good
    good_elsewhere: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        t = self.target
        return {
            "backup_id": t.backup.id,
            "copy_id": t.copy.id if t.copy is not None else None,
            "repository": t.repository.name,
            "path": t.backup.path,
            "outcome": self.outcome,
            "detail": self.detail,
            "bytes_read": self.bytes_read,
            "good_elsewhere": self.good_elsewhere,
        }


@dataclass
class Badge:
    """What the Chains screen shows next to a restore point."""

    backup_id: int
    state: str | None  # ok | mismatch | missing | check_failed | chain_broken | None
    verified_at: datetime | None
    overdue: bool
    good_copies: list[str]
    bad_copies: list[str]

    @property
    def label(self) -> str:
        if self.state is None:
            return "unverified"
        if self.state == "ok":
            return "overdue" if self.overdue else "verified"
        return self.state.replace("_", " ")


@dataclass
class Report:
    days: int
    bytes_total: int
    bytes_verified: int
    files_total: int
    files_verified: int
    bad: list[dict[str, Any]]
    overdue: list[dict[str, Any]]

    @property
    def coverage_percent(self) -> float:
        return 100.0 * self.bytes_verified / self.bytes_total if self.bytes_total else 100.0

    def sentence(self) -> str:
        return coverage_sentence(self.coverage_percent, self.days)

    def as_dict(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "coverage_percent": round(self.coverage_percent, 2),
            "bytes_total": self.bytes_total,
            "bytes_verified": self.bytes_verified,
            "files_total": self.files_total,
            "files_verified": self.files_verified,
            "bad": self.bad,
            "overdue": self.overdue,
            "summary": self.sentence(),
        }


@dataclass(frozen=True)
class Coverage:
    """``Report`` in numbers only (the Dashboard's line), counted in SQL: no row per
    file is read, so it costs the same at 100 points and at 100,000."""

    days: int
    files_total: int
    bytes_total: int
    files_verified: int
    bytes_verified: int
    bad: int
    overdue: int

    @property
    def coverage_percent(self) -> float:
        return 100.0 * self.bytes_verified / self.bytes_total if self.bytes_total else 100.0

    def sentence(self) -> str:
        return coverage_sentence(self.coverage_percent, self.days)


def coverage_sentence(percent: float, days: int) -> str:
    return f"{percent:.0f}% of bytes verified in the last {days} days"


class VerifyService:
    """Verification jobs, results and coverage. Built by the Engine as ``engine.verifier``."""

    #: a file verified longer ago than this is due again
    reverify_after_days = 30
    #: the window of the coverage figure
    coverage_days = 30

    def __init__(
        self,
        store: CopyStore,
        repositories: RepositoryStore,
        jobs: JobRunner,
        bus: EventBus,
        guard: ImageGuard,
        *,
        clock: Clock = SYSTEM_CLOCK,
        reverify_days: int | None = None,
        alert_sink: AlertSink | None = None,
    ) -> None:
        self.store = store
        self.repositories = repositories
        self.jobs = jobs
        self.bus = bus
        #: checks each header of a file's chain against the catalog before qemu opens it
        self.guard = guard
        self.clock = clock
        #: told after a verification recorded its results, so a bad file raises its
        #: alert at once (the scheduler subscribes to it)
        self.alert_sink = alert_sink
        if reverify_days is not None:
            #: ``[verify] reverify_days``: a file verified longer ago is due again
            self.reverify_after_days = reverify_days

    def job_handlers(self) -> dict[JobKind, JobHandler]:
        return {JobKind.VERIFY: JobHandler(self.run_job)}

    # -- what to verify -----------------------------------------------------------

    def targets(
        self, scope: str = "all", ref: int | str | None = None, *, include_copies: bool = True
    ) -> list[Target]:
        if scope not in SCOPES:
            raise ValidationError(f"scope must be one of {', '.join(SCOPES)}")
        repos = self.store.repositories_by_id()
        if scope == "repository":
            repo = self.repositories.get(_need(ref, scope))
            out = [Target(b, repo) for b in self.store.all_backups(repository_id=repo.id)]
            # and the copies that landed here from other repositories (those of merged
            # points included: copies made before a merge still read through them)
            for c in self.store.list_copies(
                destination_repository_id=repo.id, states=(COPY_DONE,), limit=1_000_000
            ):
                out.append(Target(self.store.source_backup(c.backup_id), repo, c))
            return out
        if scope == "backup":
            backups = [self.store.source_backup(int(_need(ref, scope)))]
        elif scope == "chain":
            backups = self.store.chain_backups(int(_need(ref, scope)))
            if not backups:
                raise NotFoundError(f"chain {ref} does not exist or holds no backups")
        else:
            backups = self.store.all_backups()
        out = [Target(b, repos[b.repository_id]) for b in backups]
        if include_copies:
            by_id = {b.id: b for b in backups}
            if scope == "all":
                # every completed copy in one query (grouped per point, as below)
                found: dict[int, list[Any]] = {}
                for c in self.store.completed_copies():
                    found.setdefault(c.backup_id, []).append(c)
            else:
                found = self.store.copies_of_backups(list(by_id))
            for backup_id, rows in found.items():
                for c in rows:
                    if c.state == COPY_DONE and backup_id in by_id:
                        out.append(Target(by_id[backup_id], repos[c.destination_repository_id], c))
            if scope != "backup":
                # copies of points merged away that copies made before the merge still
                # read through
                chain_id = int(_need(ref, scope)) if scope == "chain" else None
                merged = self.store.bases_of_merged_points(chain_id=chain_id)
                bases = self.store.source_backups_by_id([c.backup_id for c in merged])
                for c in merged:
                    out.append(Target(bases[c.backup_id], repos[c.destination_repository_id], c))
        return out

    # -- verifying ------------------------------------------------------------------

    def verify_target(
        self,
        target: Target,
        *,
        on_bytes: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        written: str | None = None,
    ) -> Result:
        """Checksum, then the chain's headers against the catalog, then qemu-img check.
        ``written``: the checksum of the bytes as they were written, taken instead of
        reading the file (see verify_copy)."""
        path = target.path
        if not is_within(target.repository.path, path):
            return Result(target, "chain_broken", f"{path} lies outside its repository")
        if not path.is_file():
            return Result(target, "missing", f"{path} does not exist")
        if written is None:
            checksum, read = hash_file(path, on_bytes=on_bytes, should_stop=should_stop)
        else:
            checksum, read = written, 0
        expected = target.expected
        if expected and checksum != expected:
            size = path.stat().st_size
            extra = f", size {size} instead of {target.size}" if size != target.size else ""
            header = self._chain_problem(target)
            return Result(
                target,
                "mismatch",
                f"sha256 {checksum[:16]}… differs from the recorded {expected[:16]}…{extra}"
                + (f"; {header}" if header else ""),
                read,
            )
        problem = self._chain_problem(target)
        if problem:
            return Result(target, "chain_broken", problem, read)
        try:
            check = qemu_img.check(ImageSpec.file(path.resolve()))
        except ToolError as exc:
            return Result(target, "check_failed", f"qemu-img check: {exc.message}", read)
        if not check.clean:
            return Result(
                target,
                "check_failed",
                f"qemu-img check: {plural(check.corruptions, 'corruption')}, "
                f"{plural(check.leaks, 'leak')}, "
                f"{plural(check.check_errors, 'error')}",
                read,
            )
        note = None if expected else "no recorded checksum: metadata and chain checked only"
        if written is not None and note is None:
            note = (
                "checksum of the bytes as they were written; metadata and chain read from "
                "the copy; the data is read back at the next scheduled verification"
            )
        return Result(target, "ok", note, read)

    def _chain_problem(self, target: Target) -> str | None:
        """What is wrong with the headers of the file's chain, in the target's
        repository, against the catalog (None: nothing). The verify event that
        follows a bad result is the critical event, so the guard does not add one."""
        # the files it is read through, oldest first: the catalog's parent links
        # (a copy: the lineage it was made with), never positions
        if target.copy is not None:
            lineage = [(c.backup_id, c.path) for c in self.store.copy_lineage(target.copy.id)]
        else:
            lineage = [(b.id, b.path) for b in self.store.lineage(target.backup.id)]
        layers = [Layer(backup_id, path) for backup_id, path in reversed(lineage)]
        try:
            self.guard.chain_spec(
                target.repository, target.backup.chain_directory, layers, announce=False
            )
        except (ImageRefused, PointUnreadable) as exc:
            return exc.message
        return None

    def _expected_chain(self, target: Target) -> list[str]:
        """Repository-relative paths of the files ``target`` must be read through, itself
        first: the catalog's parent links (copies: the lineage they were made with)."""
        if target.copy is not None:
            return [c.path for c in self.store.copy_lineage(target.copy.id)]
        return [b.path for b in self.store.lineage(target.backup.id)]

    def verify_points(
        self, backup_ids: list[int], *, should_stop: Callable[[], bool] | None = None
    ) -> list[Result]:
        """Re-read these restore points' own files (not their copies) now and record the
        outcome as a verify run does: a damaged point is marked bad and a critical event
        names its good copies. A merge checks its inputs with this first."""
        repos = self.store.repositories_by_id()
        targets = [
            Target(b, repos[b.repository_id]) for b in map(self.store.source_backup, backup_ids)
        ]
        return self.verify_targets(targets, should_stop=should_stop)

    def verify_targets(
        self,
        targets: list[Target],
        *,
        job_id: int | None = None,
        on_bytes: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Result]:
        """Verify files with one stream per device; record each result as it comes."""
        groups: dict[int, list[Target]] = {}
        for t in targets:
            try:
                dev = os.stat(t.repository.path).st_dev
            except OSError:
                dev = -1
            groups.setdefault(dev, []).append(t)
        results: list[Result] = []
        lock = threading.Lock()

        def run_group(items: list[Target]) -> None:
            for t in items:
                if should_stop is not None and should_stop():
                    return
                started = self.clock.now()
                result: Result | None
                try:
                    result = self.verify_target(t, on_bytes=on_bytes, should_stop=should_stop)
                    if result.outcome != "ok" and t.copy is None:
                        result = self._as_the_catalog_says_now(result, on_bytes, should_stop)
                except VerifyStopped:
                    return
                except OSError as exc:
                    result = Result(t, "missing", f"cannot read {t.path}: {exc.strerror}")
                if result is None:
                    continue
                self._record(result, started, job_id)
                with lock:
                    results.append(result)

        if not groups:
            return []
        if len(groups) == 1:
            run_group(next(iter(groups.values())))
        else:
            with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="verify") as pool:
                for future in [pool.submit(run_group, items) for items in groups.values()]:
                    future.result()
        if should_stop is not None and should_stop():
            # asked to stop (SIGTERM, cancel): what was read is recorded; the events
            # naming good copies and the alerts wait for the next run and the
            # scheduler's alert pass (after a mass verify they are one catalog write
            # per bad file: minutes a stopping daemon would spend)
            return results
        self._name_good_copies(results, job_id, should_stop)
        was_bad = any(_verify_state(r.target)[0] not in (None, "ok") for r in results)
        if was_bad or any(r.outcome != "ok" for r in results):
            # a file found bad (or one bad before that reads well now): its alert at once
            self._alerts_changed()
        return results

    def _as_the_catalog_says_now(
        self,
        result: Result,
        on_bytes: Callable[[int], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> Result | None:
        """A point merged or deleted while this run went on is not rot: a merge replaces
        the target's file (new checksum) and removes the merged points. Judge it by the
        catalog's row as it is now: verify the new file, or nothing for a point gone."""
        fresh = self.store.source_backup(result.target.backup.id)
        if fresh.state == "deleted":
            return None
        old = result.target.backup
        if (fresh.checksum, fresh.path) == (old.checksum, old.path):
            return result
        again = Target(fresh, result.target.repository)
        return self.verify_target(again, on_bytes=on_bytes, should_stop=should_stop)

    def _record(
        self, result: Result, started: datetime, job_id: int | None, *, read_back: bool = True
    ) -> None:
        """Store a result. ``read_back`` False: the data was not read from the disk
        (see verify_copy), so a copy's ``verified_at`` is left empty: due at once."""
        t = result.target
        now = self.clock.now()
        self.store.add_verification(
            outcome=result.outcome,
            started_at=started,
            finished_at=now,
            backup_id=t.backup.id if t.copy is None else None,
            copy_id=t.copy.id if t.copy is not None else None,
            job_id=job_id,
            detail=result.detail,
            bytes_read=result.bytes_read,
        )
        if t.copy is None:
            self.store.set_backup_verified(
                t.backup.id,
                result.outcome,
                now,
                mark_bad=result.outcome in ("mismatch", "missing", "check_failed"),
            )
        else:
            self.store.update_copy(
                t.copy.id, verify_state=result.outcome, verified_at=now if read_back else None
            )

    def _name_good_copies(
        self,
        results: list[Result],
        job_id: int | None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """For every bad file: which other copies of that point are good (verifying them
        now when this run did not), and a critical event that names them. A stop is
        looked at before each file (the files are recorded bad already)."""
        by_key = {r.target.key: r for r in results}
        for result in [r for r in results if r.outcome != "ok"]:
            if should_stop is not None and should_stop():
                return
            backup = result.target.backup
            for other in self._places(backup):
                if other.key == result.target.key:
                    continue
                known = by_key.get(other.key)
                if known is None:
                    started = self.clock.now()
                    try:
                        known = self.verify_target(other)
                    except OSError as exc:
                        known = Result(other, "missing", str(exc))
                    self._record(known, started, job_id)
                    by_key[other.key] = known
                if known.outcome == "ok":
                    result.good_elsewhere.append(other.describe())
            still = (
                "still good: " + ", ".join(result.good_elsewhere)
                if result.good_elsewhere
                else "NO good copy of this point is left"
            )
            self.bus.publish(
                Event(
                    kind=f"verify.{result.outcome}",
                    message=f"{result.target.describe()} is {result.outcome.replace('_', ' ')}"
                    f" ({result.detail}); {still}",
                    level="critical",
                    source="verify",
                    repository_id=result.target.repository.id,
                    job_id=job_id,
                    data=result.as_dict(),
                )
            )

    def _places(self, backup: SourceBackup) -> list[Target]:
        repos = self.store.repositories_by_id()
        fresh = self.store.source_backup(backup.id)
        places = [Target(fresh, repos[fresh.repository_id])]
        for c in self.store.list_copies(backup_id=backup.id, states=(COPY_DONE, "verifying")):
            places.append(Target(fresh, repos[c.destination_repository_id], c))
        return places

    def verify_copy(
        self, copy_id: int, *, job_id: int | None = None, written_checksum: str | None = None
    ) -> str:
        """Verify one copy (after it was written); returns the outcome.

        ``written_checksum``: the sha256 the copy computed of the very bytes it wrote
        (engine.copier hashes each buffer, then writes that buffer). Given, the data
        is not read again here: the copy's header and its chain against the catalog
        and ``qemu-img check`` are read from the destination, and the checksum is
        compared with the recorded one. Reading the data back right after writing it
        would be a second pass over every byte (the copy at half the disk's speed)
        that shows the bytes handed to the kernel, which the checksum already says;
        what only a read from the disk can show (the medium keeping them) is left to
        the scheduled verification: the copy's ``verified_at`` stays empty, so it is
        due at once and read back from the disk at its next run.
        """
        copy = self.store.get_copy(copy_id)
        backup = self.store.source_backup(copy.backup_id)
        repo = self.repositories.get(copy.destination_repository_id)
        started = self.clock.now()
        result = self.verify_target(Target(backup, repo, copy), written=written_checksum)
        self._record(result, started, job_id, read_back=written_checksum is None)
        if result.outcome != "ok":
            self._name_good_copies([result], job_id)
            self._alerts_changed()
        return result.outcome

    def _alerts_changed(self) -> None:
        if self.alert_sink is not None:
            self.alert_sink.changed(VERIFY_ALERT_KINDS)

    # -- jobs -------------------------------------------------------------------------

    def submit(
        self,
        scope: str = "all",
        ref: int | str | None = None,
        *,
        include_copies: bool = True,
        actor: str | None = None,
    ) -> Any:
        targets = self.targets(scope, ref, include_copies=include_copies)
        what = scope if ref is None else f"{scope} {ref}"
        return self.jobs.submit(
            JobKind.VERIFY,
            f"verify {what} ({plural(len(targets), 'file')})",
            {"scope": scope, "ref": ref, "include_copies": include_copies},
            bytes_total=sum(t.size for t in targets),
            actor=actor,
        )

    def due_targets(self) -> list[Target]:
        """Files (backups and copies) never verified, or last verified longer ago than
        ``reverify_after_days``: what the scheduled verification reads (a new backup is
        read the next night, long before it could be overdue). Files already found bad
        are not re-read: they are reported as bad until an operator replaces them."""
        due = self.clock.now() - timedelta(days=self.reverify_after_days)
        out = []
        for t in self._all_items():
            state, at = _verify_state(t)
            if state in (None, "ok") and (at is None or at < due):
                out.append(t)
        return out

    def submit_due(self, *, actor: str | None = None) -> Any:
        """Queue a verify job for the files due only (the scheduled verification); None
        when nothing is due."""
        targets = self.due_targets()
        if not targets:
            self.bus.emit(
                "verify",
                "verify.nothing_due",
                f"scheduled verification: every file was verified in the last "
                f"{plural(self.reverify_after_days, 'day')}",
                level="debug",
            )
            return None
        return self.jobs.submit(
            JobKind.VERIFY,
            f"verify {plural(len(targets), 'file')} not verified in the last "
            f"{plural(self.reverify_after_days, 'day')}",
            {
                "scope": "all",
                "ref": None,
                "include_copies": True,
                "trigger": "schedule",
                "only": [list(t.key) for t in targets],
            },
            bytes_total=sum(t.size for t in targets),
            actor=actor,
        )

    def active_scheduled_jobs(self) -> list[Any]:
        """Scheduled verify jobs still queued, running or paused."""
        jobs = self.jobs.store.list(states=("queued", "running", "paused"), kind="verify")
        return [j for j in jobs if (j.params or {}).get("trigger") == "schedule"]

    def run_job(self, ctx: JobContext) -> dict[str, Any]:
        params = ctx.params
        targets = self.targets(
            params.get("scope", "all"),
            params.get("ref"),
            include_copies=bool(params.get("include_copies", True)),
        )
        if params.get("only") is not None:
            # a scheduled job verifies the files that were overdue when it was queued
            only = {(str(kind), int(i)) for kind, i in params["only"]}
            targets = [t for t in targets if t.key in only]
        total = sum(t.size for t in targets)
        done = [0]
        lock = threading.Lock()
        stop = threading.Event()

        def on_bytes(n: int) -> None:
            with lock:
                done[0] += n

        ctx.progress(0, total, message=f"verifying {plural(len(targets), 'file')}", force=True)
        outcome: list[list[Result]] = []
        error: list[BaseException] = []

        def work() -> None:
            try:
                outcome.append(
                    self.verify_targets(
                        targets, job_id=ctx.job_id, on_bytes=on_bytes, should_stop=stop.is_set
                    )
                )
            except BaseException as exc:
                error.append(exc)

        worker = threading.Thread(target=work, name="sendense-verify", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
                with lock:
                    value = done[0]
                ctx.progress(min(value, total), total)
                if ctx.should_stop():  # on real time too: a fixed clock cannot hide it
                    ctx.raise_stop()
        except BaseException:
            stop.set()
            worker.join()
            raise
        if error:
            raise error[0]
        results = outcome[0] if outcome else []
        ctx.progress(total, total, force=True)
        bad = [r for r in results if r.outcome != "ok"]
        summary = {
            "files": len(results),
            "ok": len(results) - len(bad),
            "bad": [r.as_dict() for r in bad],
            "bytes_read": sum(r.bytes_read for r in results),
        }
        if bad:
            first = bad[0]
            raise VerificationFailed(
                f"{len(bad)} of {plural(len(results), 'file')} failed verification; first: "
                f"{first.target.describe()}: {first.outcome} ({first.detail})"
                + (
                    f"; still good: {', '.join(first.good_elsewhere)}"
                    if first.good_elsewhere
                    else "; no good copy left"
                ),
                action=Action(
                    "verify_report",
                    "the verification report lists the bad points and the good copies",
                ),
            )
        return summary

    # -- reporting --------------------------------------------------------------------

    def _all_items(self) -> list[Target]:
        return self.targets("all", include_copies=True)

    def report(self, days: int | None = None) -> Report:
        days = days or self.coverage_days
        now = self.clock.now()
        since = now - timedelta(days=days)
        due = now - timedelta(days=self.reverify_after_days)
        items = self._all_items()
        bytes_total = bytes_verified = files_verified = 0
        bad: list[Target] = []
        overdue: list[dict[str, Any]] = []
        for t in items:
            state, at = _verify_state(t)
            bytes_total += t.size
            if state == "ok" and at is not None and at >= since:
                bytes_verified += t.size
                files_verified += 1
            if state not in (None, "ok"):
                bad.append(t)
            elif _overdue(t, at, due):
                overdue.append(_entry(t))
        return Report(
            days,
            bytes_total,
            bytes_verified,
            len(items),
            files_verified,
            self._with_good_elsewhere(bad),
            overdue,
        )

    def _bad_entries(self) -> list[dict[str, Any]]:
        """``report().bad`` without reading the files that are not bad."""
        backups, copies = self.store.bad_files()
        repos = self.store.repositories_by_id()
        bad = [Target(b, repos[b.repository_id]) for b in backups]
        bad += [Target(b, repos[c.destination_repository_id], c) for c, b in copies]
        return self._with_good_elsewhere(bad)

    def _with_good_elsewhere(self, bad: list[Target]) -> list[dict[str, Any]]:
        """Each bad file's report entry with the other places its point is still good
        (the places of every bad file from one copy query)."""
        if not bad:
            return []
        repos = self.store.repositories_by_id()
        copies = self.store.copies_of_backups([t.backup.id for t in bad])
        entries = []
        for t in bad:
            places = [Target(t.backup, repos[t.backup.repository_id])]
            places += [
                Target(t.backup, repos[c.destination_repository_id], c)
                for c in reversed(copies.get(t.backup.id, []))  # newest first, as listed
                if c.state in (COPY_DONE, "verifying")
            ]
            entry = _entry(t)
            entry["good_elsewhere"] = [
                o.describe() for o in places if o.key != t.key and _verify_state(o)[0] == "ok"
            ]
            entries.append(entry)
        return entries

    def coverage(self, days: int | None = None) -> Coverage:
        """What ``report`` counts (coverage, bad, overdue), without its lists."""
        days = days or self.coverage_days
        now = self.clock.now()
        counts = self.store.verification_counts(
            now - timedelta(days=days), now - timedelta(days=self.reverify_after_days)
        )
        return Coverage(days, *counts.astuple())

    def alerts(self) -> list[dict[str, Any]]:
        """The verification alert conditions now: one ``verification_overdue`` for all
        files, and one critical ``verification_failed`` per bad file (its ``subject``
        names the file: ``backup:ID`` or ``copy:ID``). From the counts in SQL and the
        bad files only: the scheduler asks every few minutes, and a report of every
        file takes seconds at 100,000 points."""
        coverage = self.coverage()
        out = []
        if coverage.overdue:
            out.append(
                {
                    "kind": "verification_overdue",
                    "subject": "all",
                    "level": "warning",
                    "message": f"verification overdue: {plural(coverage.overdue, 'file')} "
                    f"older than {plural(self.reverify_after_days, 'day')} not verified in "
                    f"them ({coverage.sentence()})",
                }
            )
        for entry in self._bad_entries():
            good = entry["good_elsewhere"]
            subject = (
                f"copy:{entry['copy_id']}"
                if entry["copy_id"] is not None
                else f"backup:{entry['backup_id']}"
            )
            out.append(
                {
                    "kind": "verification_failed",
                    "subject": subject,
                    "level": "critical",
                    "message": f"{entry['path']} in {entry['repository']} failed verification "
                    f"({str(entry['verify_state']).replace('_', ' ')}); "
                    + ("still good: " + ", ".join(good) if good else "no good copy is left"),
                }
            )
        return out

    def badges(self, chain_id: int) -> dict[int, Badge]:
        """Verification badges of a chain's restore points, for the Chains screen."""
        backups = self.store.chain_backups(chain_id)
        repos = self.store.repositories_by_id()
        copies = self.store.copies_of_backups([b.id for b in backups])
        due = self.clock.now() - timedelta(days=self.reverify_after_days)
        out: dict[int, Badge] = {}
        for b in backups:
            good: list[str] = []
            bad: list[str] = []
            for c in copies.get(b.id, []):
                if c.state != COPY_DONE:
                    continue
                name = repos[c.destination_repository_id].name
                (good if c.verify_state in (None, "ok") else bad).append(name)
            verified_at = as_utc(b.verified_at)
            out[b.id] = Badge(
                backup_id=b.id,
                state=b.verify_state,
                verified_at=verified_at,
                overdue=_overdue(Target(b, repos[b.repository_id]), verified_at, due),
                good_copies=good,
                bad_copies=bad,
            )
        return out


class VerificationFailed(SendenseError):
    """At least one file did not verify."""


def _entry(t: Target) -> dict[str, Any]:
    """A file's line in a verify report."""
    state, at = _verify_state(t)
    return {
        "backup_id": t.backup.id,
        "copy_id": t.copy.id if t.copy is not None else None,
        "repository": t.repository.name,
        "path": t.backup.path,
        "verify_state": state,
        "verified_at": at.isoformat() if at else None,
    }


def _verify_state(t: Target) -> tuple[str | None, datetime | None]:
    if t.copy is not None:
        return t.copy.verify_state, as_utc(t.copy.verified_at)
    return t.backup.verify_state, as_utc(t.backup.verified_at)


def _overdue(t: Target, verified_at: datetime | None, due: datetime) -> bool:
    """Overdue: the file is older than the re-verify window and was not verified within
    it (``due`` is now minus the window). A backup made minutes ago is not overdue."""
    return t.written_at < due and (verified_at is None or verified_at < due)


def _need(ref: int | str | None, scope: str) -> int | str:
    if ref is None:
        raise ValidationError(f"verifying a {scope} needs its id or name")
    return ref
