"""Capacity samples (with downsampling for history) and the per-repository space breakdown.

Raw samples are kept for ``RAW_KEEP``; older ones are folded into one row per
hour (resolution "hour"), and hour rows older than ``HOUR_KEEP`` into one per
day ("day"). ``history`` returns evenly spaced averages for a sparkline.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select

from engine.catalog.db import Catalog, rows_changed
from engine.catalog.locks import HOLDING_STATES
from engine.catalog.models import Backup, CapacitySample, Chain, Copy, ImmutabilityLock
from engine.clock import as_utc

RAW_KEEP = timedelta(hours=48)
HOUR_KEEP = timedelta(days=90)

#: backup states that still occupy space
LIVE_BACKUP_STATES = ("pending", "complete", "bad", "expired", "released")
#: backup states meaning "retention let go of this point; the file may be deleted".
#: The retention slice sets one of these; until then nothing is reclaimable.
RELEASED_STATES = ("expired", "released")
#: copy states whose file is a whole copy on disk. Not pending/copying (a partial, not
#: a backup yet) nor failed (cancelled, refused or damaged: its file is gone or bad)
LIVE_COPY_STATES = ("verifying", "completed", "expired")
RELEASED_COPY_STATES = ("expired", "released")
ACTIVE_LOCK_STATES = HOLDING_STATES


@dataclass(frozen=True)
class Sample:
    taken_at: datetime
    total_bytes: int
    used_bytes: int
    free_bytes: int


@dataclass
class SpaceBreakdown:
    """Four numbers per repository, from catalog rows (not from the filesystem)."""

    #: bytes of backups and copies the catalog knows in this repository
    used: int = 0
    #: retention released them and no lock holds them: deletable now
    reclaimable_now: int = 0
    #: released but still locked: deletable when the lock expires
    reclaimable_later: int = 0
    #: the earliest date something in ``reclaimable_later`` unlocks
    reclaimable_later_at: datetime | None = None
    #: bytes under an immutability lock that has not expired
    locked: int = 0
    #: the last date a lock in this repository expires
    locked_until: datetime | None = None
    #: (date, bytes) that become reclaimable then, soonest first (for the forecast)
    scheduled_releases: list[tuple[datetime, int]] = field(default_factory=list)
    #: the first date a lock counted here expires: these figures change then
    first_expiry: datetime | None = None


class CapacityStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def add(
        self,
        repository_id: int,
        *,
        taken_at: datetime,
        total_bytes: int,
        used_bytes: int,
        free_bytes: int,
        resolution: str = "raw",
    ) -> None:
        with self.catalog.session() as session:
            session.add(
                CapacitySample(
                    repository_id=repository_id,
                    taken_at=taken_at,
                    total_bytes=total_bytes,
                    used_bytes=used_bytes,
                    free_bytes=free_bytes,
                    resolution=resolution,
                )
            )

    def forget_before(self, before: datetime) -> int:
        """Remove every sample taken before ``before`` (the demo's history was backed up
        at made-up past times: readings stamped with them would invent growth)."""
        with self.catalog.session() as session:
            result = session.execute(delete(CapacitySample).where(CapacitySample.taken_at < before))
            return rows_changed(result)

    def latest(self, repository_id: int) -> Sample | None:
        query = (
            select(CapacitySample)
            .where(CapacitySample.repository_id == repository_id)
            .order_by(CapacitySample.taken_at.desc(), CapacitySample.id.desc())
            .limit(1)
        )
        with self.catalog.session() as session:
            row = session.scalar(query)
            return _sample(row) if row else None

    def samples(
        self, repository_id: int, *, since: datetime, until: datetime | None = None
    ) -> list[Sample]:
        """Every stored sample in the range (all resolutions), oldest first."""
        query = (
            select(CapacitySample)
            .where(
                CapacitySample.repository_id == repository_id,
                CapacitySample.taken_at >= since,
            )
            .order_by(CapacitySample.taken_at, CapacitySample.id)
        )
        if until is not None:
            query = query.where(CapacitySample.taken_at <= until)
        with self.catalog.session() as session:
            return [_sample(row) for row in session.scalars(query)]

    def history(
        self, repository_id: int, *, since: datetime, until: datetime, buckets: int = 60
    ) -> list[Sample | None]:
        """``buckets`` evenly spaced averages from ``since`` to ``until``; None where no sample."""
        rows = self.samples(repository_id, since=since, until=until)
        return history_of(rows, since=since, until=until, buckets=buckets)

    def latest_by_repository(self) -> dict[int, Sample]:
        """``latest`` of every repository that has a sample, in one query."""
        newest = (
            select(
                CapacitySample.repository_id.label("repository_id"),
                func.max(CapacitySample.taken_at).label("taken_at"),
            )
            .group_by(CapacitySample.repository_id)
            .subquery()
        )
        query = (
            select(CapacitySample)
            .join(
                newest,
                (CapacitySample.repository_id == newest.c.repository_id)
                & (CapacitySample.taken_at == newest.c.taken_at),
            )
            .order_by(CapacitySample.id)
        )
        with self.catalog.session() as session:
            # two samples taken at the same time: the later row wins, as in ``latest``
            return {row.repository_id: _sample(row) for row in session.scalars(query)}

    def samples_by_repository(self, *, since: datetime, until: datetime) -> dict[int, list[Sample]]:
        """``samples`` of every repository in the range, in one query."""
        query = (
            select(CapacitySample)
            .where(CapacitySample.taken_at >= since, CapacitySample.taken_at <= until)
            .order_by(CapacitySample.repository_id, CapacitySample.taken_at, CapacitySample.id)
        )
        found: dict[int, list[Sample]] = defaultdict(list)
        with self.catalog.session() as session:
            for row in session.scalars(query):
                found[row.repository_id].append(_sample(row))
        return dict(found)

    def landings_by_repository(
        self, *, since: datetime, until: datetime
    ) -> dict[int, list[datetime]]:
        """``landings`` of every repository in the range, in two queries (not two per
        repository: 50 repositories of a 100,000-point catalog took 0.3 s)."""
        found: dict[int, list[datetime]] = defaultdict(list)
        with self.catalog.session() as session:
            backups = session.execute(
                select(Chain.repository_id, Backup.created_at)
                .join(Chain, Backup.chain_id == Chain.id)
                .where(Backup.created_at > since, Backup.created_at <= until)
            ).all()
            copies = session.execute(
                select(Copy.destination_repository_id, Copy.completed_at).where(
                    Copy.completed_at > since, Copy.completed_at <= until
                )
            ).all()
        for repository_id, at in [*backups, *copies]:
            landed = as_utc(at)
            if landed is not None:
                found[repository_id].append(landed)
        return {repository_id: sorted(times) for repository_id, times in found.items()}

    def count(self, repository_id: int, resolution: str | None = None) -> int:
        query = select(func.count(CapacitySample.id)).where(
            CapacitySample.repository_id == repository_id
        )
        if resolution:
            query = query.where(CapacitySample.resolution == resolution)
        with self.catalog.session() as session:
            return int(session.scalar(query) or 0)

    def downsample(self, now: datetime) -> int:
        """Fold old raw samples into hours and old hours into days. Returns rows removed."""
        removed = self._fold("raw", "hour", now - RAW_KEEP, timedelta(hours=1))
        removed += self._fold("hour", "day", now - HOUR_KEEP, timedelta(days=1))
        return removed

    def _fold(self, source: str, target: str, before: datetime, width: timedelta) -> int:
        with self.catalog.session() as session:
            rows = list(
                session.scalars(
                    select(CapacitySample).where(
                        CapacitySample.resolution == source, CapacitySample.taken_at < before
                    )
                )
            )
            if not rows:
                return 0
            groups: dict[tuple[int, int], list[CapacitySample]] = defaultdict(list)
            seconds = int(width.total_seconds())
            for row in rows:
                stamp = int(as_utc(row.taken_at).timestamp()) // seconds  # type: ignore[union-attr]
                groups[(row.repository_id, stamp)].append(row)
            for (repo_id, _), group in groups.items():
                avg = _average([_sample(r) for r in group], min(as_utc(r.taken_at) for r in group))  # type: ignore[type-var]
                session.add(
                    CapacitySample(
                        repository_id=repo_id,
                        taken_at=avg.taken_at,
                        total_bytes=avg.total_bytes,
                        used_bytes=avg.used_bytes,
                        free_bytes=avg.free_bytes,
                        resolution=target,
                    )
                )
            session.execute(
                delete(CapacitySample).where(CapacitySample.id.in_([r.id for r in rows]))
            )
            return len(rows) - len(groups)

    # -- the four numbers ---------------------------------------------------------

    def landings(self, repository_id: int, *, since: datetime, until: datetime) -> list[datetime]:
        """When backups and copies landed in this repository in the range, oldest first
        (a forecast needs its history to span at least one backup cycle)."""
        with self.catalog.session() as session:
            backups = session.scalars(
                select(Backup.created_at)
                .join(Chain, Backup.chain_id == Chain.id)
                .where(
                    Chain.repository_id == repository_id,
                    Backup.created_at > since,
                    Backup.created_at <= until,
                )
            ).all()
            copies = session.scalars(
                select(Copy.completed_at).where(
                    Copy.destination_repository_id == repository_id,
                    Copy.completed_at > since,
                    Copy.completed_at <= until,
                )
            ).all()
        return sorted(t for t in (as_utc(v) for v in [*backups, *copies]) if t is not None)

    def breakdown(self, repository_id: int, now: datetime) -> SpaceBreakdown:
        """Used / reclaimable now / reclaimable later / locked, from Backup, Copy and
        ImmutabilityLock rows of this repository."""
        return self.breakdowns(now, repository_id=repository_id).get(
            repository_id, SpaceBreakdown()
        )

    def breakdowns(
        self, now: datetime, *, repository_id: int | None = None
    ) -> dict[int, SpaceBreakdown]:
        """``breakdown`` of every repository (or one) at once, summed in SQL: sizes
        grouped by repository, released or not and the lock holding them (a 100,000-
        point catalog is a few hundred rows here, not a row per file)."""
        rows: list[tuple[int, int, datetime | None, int]] = []
        with self.catalog.session() as session:
            for query in _breakdown_queries(now, repository_id):
                rows.extend(session.execute(query).all())
        found: dict[int, SpaceBreakdown] = {}
        releases: dict[int, dict[datetime, int]] = defaultdict(lambda: defaultdict(int))
        for repo_id, released, until, size in rows:
            out = found.setdefault(repo_id, SpaceBreakdown())
            lock = as_utc(until)
            size = int(size or 0)
            out.used += size
            if lock is not None:
                out.locked += size
                out.locked_until = max(lock, out.locked_until or lock)
                out.first_expiry = min(lock, out.first_expiry or lock)
            if released and lock is None:
                out.reclaimable_now += size
            elif released and lock is not None:
                out.reclaimable_later += size
                releases[repo_id][lock] += size
        for repo_id, out in found.items():
            out.scheduled_releases = sorted(releases[repo_id].items())
            if out.scheduled_releases:
                out.reclaimable_later_at = out.scheduled_releases[0][0]
        return found


def _breakdown_queries(now: datetime, repository_id: int | None) -> list[Any]:
    """(repository id, released 0/1, lock expiry or None, bytes) of backups, then of
    copies; a file's lock is the latest expiry among the locks holding it now."""

    def held(column: Any) -> Any:
        return (
            select(
                column.label("ref"),
                ImmutabilityLock.repository_id.label("repository_id"),
                func.max(ImmutabilityLock.expires_at).label("until"),
            )
            .where(
                column.is_not(None),
                ImmutabilityLock.state.in_(ACTIVE_LOCK_STATES),
                ImmutabilityLock.expires_at > now,
            )
            .group_by(column, ImmutabilityLock.repository_id)
            .subquery()
        )

    backup_lock, copy_lock = held(ImmutabilityLock.backup_id), held(ImmutabilityLock.copy_id)
    backup_released = case((Backup.state.in_(RELEASED_STATES), 1), else_=0)
    copy_released = case((Copy.state.in_(RELEASED_COPY_STATES), 1), else_=0)
    backups = (
        select(
            Chain.repository_id, backup_released, backup_lock.c.until, func.sum(Backup.file_size)
        )
        .join(Chain, Backup.chain_id == Chain.id)
        .outerjoin(
            backup_lock,
            (backup_lock.c.ref == Backup.id) & (backup_lock.c.repository_id == Chain.repository_id),
        )
        .where(Backup.state.in_(LIVE_BACKUP_STATES))
        .group_by(Chain.repository_id, backup_released, backup_lock.c.until)
    )
    copies = (
        select(
            Copy.destination_repository_id, copy_released, copy_lock.c.until, func.sum(Copy.size)
        )
        .outerjoin(
            copy_lock,
            (copy_lock.c.ref == Copy.id)
            & (copy_lock.c.repository_id == Copy.destination_repository_id),
        )
        .where(Copy.state.in_(LIVE_COPY_STATES))
        .group_by(Copy.destination_repository_id, copy_released, copy_lock.c.until)
    )
    if repository_id is not None:
        backups = backups.where(Chain.repository_id == repository_id)
        copies = copies.where(Copy.destination_repository_id == repository_id)
    return [backups, copies]


def _sample(row: CapacitySample) -> Sample:
    return Sample(
        taken_at=as_utc(row.taken_at),  # type: ignore[arg-type]
        total_bytes=int(row.total_bytes),
        used_bytes=int(row.used_bytes),
        free_bytes=int(row.free_bytes),
    )


def _average(rows: Iterable[Sample], at: datetime) -> Sample:
    rows = list(rows)
    n = len(rows)
    return Sample(
        taken_at=at,
        total_bytes=sum(r.total_bytes for r in rows) // n,
        used_bytes=sum(r.used_bytes for r in rows) // n,
        free_bytes=sum(r.free_bytes for r in rows) // n,
    )


def history_of(
    rows: list[Sample], *, since: datetime, until: datetime, buckets: int
) -> list[Sample | None]:
    """``CapacityStore.history`` of samples already read (oldest first)."""
    span = (until - since).total_seconds() or 1.0
    groups: dict[int, list[Sample]] = defaultdict(list)
    for row in rows:
        if since <= row.taken_at <= until:
            index = min(buckets - 1, int((row.taken_at - since).total_seconds() / span * buckets))
            groups[index].append(row)
    out: list[Sample | None] = []
    for i in range(buckets):
        group = groups.get(i)
        out.append(
            _average(group, since + timedelta(seconds=span * i / buckets)) if group else None
        )
    return out
