"""The aggregate queries behind ``/metrics``: a few GROUP BY statements per scrape.

A scrape must stay cheap on a catalog of thousands of disks and a hundred thousand
points, so every figure here is summed, counted or maximised by the database and
comes back as one row per repository, disk, copy rule or job kind: nothing walks
the points in Python. The rows are plain dataclasses (no ORM objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, exists, func, select

from engine.catalog.capacity import (
    ACTIVE_LOCK_STATES,
    LIVE_BACKUP_STATES,
    LIVE_COPY_STATES,
    RELEASED_COPY_STATES,
    RELEASED_STATES,
)
from engine.catalog.chains import LIVE_STATES
from engine.catalog.copies import COPY_DONE
from engine.catalog.db import Catalog
from engine.catalog.locks import HOLDING_STATES
from engine.catalog.models import (
    Backup,
    CapacitySample,
    Chain,
    Copy,
    CopyRule,
    ImmutabilityLock,
    Job,
)
from engine.clock import as_utc

#: verify states that mean a file is damaged or could not be read
BAD_VERIFY_STATES = ("mismatch", "missing", "check_failed", "chain_broken")


@dataclass(frozen=True)
class DiskFacts:
    """One VM disk in one repository."""

    repository_id: int
    vm: str
    disk: str
    #: the point time of the newest complete point (None: no complete point)
    last_backup_at: datetime | None = None
    #: how long the newest complete point held the source plus its checksum (None: unknown)
    last_backup_seconds: float | None = None
    #: bytes the newest complete point wrote (its file size when not recorded)
    last_backup_bytes: int | None = None
    #: restore points (complete or bad) in the disk's current chain
    chain_length: int = 0
    #: newest verification of any of its points
    last_verified_at: datetime | None = None
    #: points whose verification found them damaged, and one such state
    bad_points: int = 0
    bad_state: str | None = None


@dataclass(frozen=True)
class SpaceFacts:
    """Catalog bytes of one repository (the same rules as CapacityStore.breakdown)."""

    reclaimable: int = 0
    locked: int = 0


@dataclass(frozen=True)
class RuleFacts:
    rule_id: int
    name: str
    enabled: bool
    max_age_hours: int | None
    failures_in_row: int
    created_at: datetime | None
    newest_copy_at: datetime | None


@dataclass(frozen=True)
class LockFacts:
    repository_id: int
    state: str
    count: int
    #: the soonest expiry of those locks
    next_expiry: datetime | None


@dataclass(frozen=True)
class CoverageFacts:
    """Files (restore points and completed copies) of one repository."""

    files: int = 0
    files_verified: int = 0
    bytes_total: int = 0
    bytes_verified: int = 0
    files_bad: int = 0


@dataclass(frozen=True)
class FinishedJob:
    id: int
    kind: str
    state: str
    started_at: datetime | None
    finished_at: datetime


@dataclass(frozen=True)
class LatestSample:
    taken_at: datetime
    total_bytes: int
    used_bytes: int
    free_bytes: int


def _disk_key(repository_id: int, vm: str, disk: str) -> tuple[int, str, str]:
    return (int(repository_id), str(vm), str(disk))


class MetricsStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # -- disks -------------------------------------------------------------------------

    def disks(self) -> list[DiskFacts]:
        """Every VM disk with points, in three GROUP BY queries."""
        by_disk = (Chain.repository_id, Chain.vm_name, Chain.disk_name)
        newest = (
            select(
                func.max(Backup.id).label("id"),
                func.max(Backup.point_time).label("at"),
            )
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Backup.state == "complete")
            .group_by(*by_disk)
            .subquery()
        )
        tracking = Backup.tracking
        last = (
            select(
                *by_disk,
                newest.c.at,
                tracking["source_held_seconds"].as_float(),
                tracking["checksum_seconds"].as_float(),
                tracking["bytes_written"].as_integer(),
                Backup.file_size,
            )
            .join_from(Backup, newest, Backup.id == newest.c.id)
            .join(Chain, Backup.chain_id == Chain.id)
        )
        current = (
            select(func.max(Chain.id).label("id"))
            .where(Chain.state != "retired")
            .group_by(*by_disk)
            .subquery()
        )
        lengths = (
            select(*by_disk, func.count(Backup.id))
            .join_from(Chain, current, Chain.id == current.c.id)
            .outerjoin(Backup, and_(Backup.chain_id == Chain.id, Backup.state.in_(LIVE_STATES)))
            .group_by(Chain.id, *by_disk)
        )
        bad = Backup.verify_state.in_(BAD_VERIFY_STATES)
        verified = (
            select(
                *by_disk,
                func.max(Backup.verified_at),
                func.sum(case((bad, 1), else_=0)),
                func.max(case((bad, Backup.verify_state), else_=None)),
            )
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Backup.state.in_(LIVE_STATES))
            .group_by(*by_disk)
        )
        facts: dict[tuple[int, str, str], dict[str, object]] = {}
        with self.catalog.session() as session:
            for repo_id, vm, disk, at, held, checksum, written, size in session.execute(last):
                seconds = (
                    None if held is None and checksum is None else (held or 0) + (checksum or 0)
                )
                facts.setdefault(_disk_key(repo_id, vm, disk), {}).update(
                    last_backup_at=as_utc(at),
                    last_backup_seconds=None if seconds is None else float(seconds),
                    last_backup_bytes=int(written if written is not None else size or 0),
                )
            for repo_id, vm, disk, count in session.execute(lengths):
                facts.setdefault(_disk_key(repo_id, vm, disk), {})["chain_length"] = int(count)
            for repo_id, vm, disk, at, bad_count, bad_state in session.execute(verified):
                facts.setdefault(_disk_key(repo_id, vm, disk), {}).update(
                    last_verified_at=as_utc(at),
                    bad_points=int(bad_count or 0),
                    bad_state=bad_state,
                )
        return [
            DiskFacts(repository_id=key[0], vm=key[1], disk=key[2], **values)  # type: ignore[arg-type]
            for key, values in sorted(facts.items())
        ]

    # -- repositories ------------------------------------------------------------------

    def space(self, now: datetime) -> dict[int, SpaceFacts]:
        """Reclaimable-now and locked bytes per repository, summed by the database with
        the rules of ``CapacityStore.breakdown`` (released and not held by an unexpired
        lock: reclaimable; held by one: locked)."""

        def held(*match: Any) -> Any:
            return exists().where(
                *match,
                ImmutabilityLock.state.in_(ACTIVE_LOCK_STATES),
                ImmutabilityLock.expires_at > now,
            )

        backup_locked = held(
            ImmutabilityLock.backup_id == Backup.id,
            ImmutabilityLock.repository_id == Chain.repository_id,
        )
        backups = (
            select(
                Chain.repository_id,
                func.sum(
                    case(
                        (and_(Backup.state.in_(RELEASED_STATES), ~backup_locked), Backup.file_size),
                        else_=0,
                    )
                ),
                func.sum(case((backup_locked, Backup.file_size), else_=0)),
            )
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Backup.state.in_(LIVE_BACKUP_STATES))
            .group_by(Chain.repository_id)
        )
        copy_locked = held(
            ImmutabilityLock.copy_id == Copy.id,
            ImmutabilityLock.repository_id == Copy.destination_repository_id,
        )
        copies = (
            select(
                Copy.destination_repository_id,
                func.sum(
                    case(
                        (and_(Copy.state.in_(RELEASED_COPY_STATES), ~copy_locked), Copy.size),
                        else_=0,
                    )
                ),
                func.sum(case((copy_locked, Copy.size), else_=0)),
            )
            .where(Copy.state.in_(LIVE_COPY_STATES))
            .group_by(Copy.destination_repository_id)
        )
        out: dict[int, SpaceFacts] = {}
        with self.catalog.session() as session:
            for query in (backups, copies):
                for repo_id, reclaimable, locked in session.execute(query):
                    before = out.get(int(repo_id), SpaceFacts())
                    out[int(repo_id)] = SpaceFacts(
                        reclaimable=before.reclaimable + int(reclaimable or 0),
                        locked=before.locked + int(locked or 0),
                    )
        return out

    def latest_samples(self) -> dict[int, LatestSample]:
        """Each repository's newest stored capacity sample (what an engine whose monitor
        has not read yet, a CLI one-shot, knows of its space)."""
        newest = (
            select(func.max(CapacitySample.id).label("id"))
            .group_by(CapacitySample.repository_id)
            .subquery()
        )
        query = select(CapacitySample).join(newest, CapacitySample.id == newest.c.id)
        with self.catalog.session() as session:
            return {
                row.repository_id: LatestSample(
                    taken_at=as_utc(row.taken_at),  # type: ignore[arg-type]
                    total_bytes=int(row.total_bytes),
                    used_bytes=int(row.used_bytes),
                    free_bytes=int(row.free_bytes),
                )
                for row in session.scalars(query)
            }

    # -- copies, locks, verification -----------------------------------------------------

    def rules(self) -> list[RuleFacts]:
        """Every copy rule with the completion time of its newest completed copy."""
        newest = (
            select(Copy.rule_id, func.max(Copy.completed_at).label("at"))
            .where(Copy.state == COPY_DONE, Copy.rule_id.is_not(None))
            .group_by(Copy.rule_id)
            .subquery()
        )
        query = (
            select(
                CopyRule.id,
                CopyRule.name,
                CopyRule.enabled,
                CopyRule.max_age_hours,
                CopyRule.failures_in_row,
                CopyRule.created_at,
                newest.c.at,
            )
            .outerjoin(newest, newest.c.rule_id == CopyRule.id)
            .order_by(CopyRule.name)
        )
        with self.catalog.session() as session:
            return [
                RuleFacts(
                    rule_id=int(rule_id),
                    name=str(name),
                    enabled=bool(enabled),
                    max_age_hours=max_age,
                    failures_in_row=int(failures or 0),
                    created_at=as_utc(created),
                    newest_copy_at=as_utc(at),
                )
                for rule_id, name, enabled, max_age, failures, created, at in session.execute(query)
            ]

    def locks(self) -> list[LockFacts]:
        """Holding locks per repository and state, with the soonest expiry of each."""
        query = (
            select(
                ImmutabilityLock.repository_id,
                ImmutabilityLock.state,
                func.count(ImmutabilityLock.id),
                func.min(ImmutabilityLock.expires_at),
            )
            .where(ImmutabilityLock.state.in_(HOLDING_STATES))
            .group_by(ImmutabilityLock.repository_id, ImmutabilityLock.state)
        )
        with self.catalog.session() as session:
            return [
                LockFacts(int(repo_id), str(state), int(count), as_utc(soonest))
                for repo_id, state, count, soonest in session.execute(query)
            ]

    def coverage(self, verified_since: datetime) -> dict[int, CoverageFacts]:
        """Per repository: restore points (complete or bad) and completed copies, and
        how many of them (and their bytes) verified good at or after ``verified_since``
        (the files ``verify report`` counts)."""

        def sums(state: Any, verified_at: Any, size: Any) -> list[Any]:
            good = and_(state == "ok", verified_at >= verified_since)
            return [
                func.count(),
                func.sum(case((good, 1), else_=0)),
                func.sum(size),
                func.sum(case((good, size), else_=0)),
                func.sum(case((state.in_(BAD_VERIFY_STATES), 1), else_=0)),
            ]

        backups = (
            select(
                Chain.repository_id,
                *sums(Backup.verify_state, Backup.verified_at, Backup.file_size),
            )
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Backup.state.in_(LIVE_STATES))
            .group_by(Chain.repository_id)
        )
        copies = (
            select(
                Copy.destination_repository_id,
                *sums(Copy.verify_state, Copy.verified_at, Copy.size),
            )
            .where(Copy.state == COPY_DONE)
            .group_by(Copy.destination_repository_id)
        )
        out: dict[int, CoverageFacts] = {}
        with self.catalog.session() as session:
            for query in (backups, copies):
                for repo_id, files, good, total, good_bytes, bad in session.execute(query):
                    before = out.get(int(repo_id), CoverageFacts())
                    out[int(repo_id)] = CoverageFacts(
                        files=before.files + int(files or 0),
                        files_verified=before.files_verified + int(good or 0),
                        bytes_total=before.bytes_total + int(total or 0),
                        bytes_verified=before.bytes_verified + int(good_bytes or 0),
                        files_bad=before.files_bad + int(bad or 0),
                    )
        return out

    # -- jobs --------------------------------------------------------------------------

    def job_counts(self) -> list[tuple[str, str, int]]:
        """(kind, state, jobs) over every job in the catalog."""
        query = select(Job.kind, Job.state, func.count(Job.id)).group_by(Job.kind, Job.state)
        with self.catalog.session() as session:
            return [(str(k), str(s), int(n)) for k, s, n in session.execute(query)]

    def jobs_finished_since(
        self, since: datetime, states: Sequence[str], *, limit: int = 10_000
    ) -> list[FinishedJob]:
        """Jobs that reached one of ``states`` at or after ``since``, oldest first (a
        scrape reads only those finished since the one before)."""
        query = (
            select(Job.id, Job.kind, Job.state, Job.started_at, Job.finished_at)
            .where(Job.finished_at >= since, Job.state.in_(list(states)))
            .order_by(Job.finished_at, Job.id)
            .limit(limit)
        )
        with self.catalog.session() as session:
            return [
                FinishedJob(int(i), str(k), str(s), as_utc(start), as_utc(end))  # type: ignore[arg-type]
                for i, k, s, start, end in session.execute(query)
            ]


__all__ = [
    "BAD_VERIFY_STATES",
    "CoverageFacts",
    "DiskFacts",
    "FinishedJob",
    "LatestSample",
    "LockFacts",
    "MetricsStore",
    "RuleFacts",
    "SpaceFacts",
]
