"""Immutability lock rows: one per locked file (a backup or a copy), with its expiry.

States: ``pending`` (landed, inside the repository's grace period, not yet
``chattr +i``), ``active`` (flag set), ``drift`` (the flag was found removed
and could not be re-applied), ``failed`` (the flag could not be set when it was
due: the file is unprotected; the lock job keeps trying), ``released`` (expired
and the flag removed). A row leaves the holding states only through
``mark_released``; nothing deletes a holding row.

Also the clock readings of the lock checks (``LockClockCheck``), one row per boot.
Rows are handed back detached.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from engine.catalog.db import IN_BATCH, Catalog, rows_changed
from engine.catalog.models import AuditEntry, Backup, Chain, Copy, ImmutabilityLock, LockClockCheck
from engine.errors import Action, NotFoundError

#: states in which the file must not be changed or deleted
HOLDING_STATES = ("pending", "active", "drift", "failed")
#: holding states whose flag should be set by now (pending ones wait for their grace)
FLAGGED_STATES = ("active", "drift", "failed")
#: holding states in which the file is NOT protected by the kernel flag
UNPROTECTED_STATES = ("drift", "failed")


class LockStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def add(
        self,
        *,
        repository_id: int,
        path: str,
        expires_at: datetime,
        now: datetime,
        state: str = "active",
        backup_id: int | None = None,
        copy_id: int | None = None,
    ) -> ImmutabilityLock:
        row = ImmutabilityLock(
            repository_id=repository_id,
            path=path,
            expires_at=expires_at,
            state=state,
            locked_at=now if state == "active" else None,
            backup_id=backup_id,
            copy_id=copy_id,
            created_at=now,
        )
        with self.catalog.session() as session:
            session.add(row)
            session.flush()
            return row

    def get(self, lock_id: int) -> ImmutabilityLock:
        with self.catalog.session() as session:
            row = session.get(ImmutabilityLock, lock_id)
            if row is None:
                raise NotFoundError(
                    f"lock {lock_id} does not exist",
                    action=Action("list_locks", "the list of locks shows them"),
                )
            return row

    def holding(self, repository_id: int, path: str) -> ImmutabilityLock | None:
        """The lock that holds this file now (newest expiry), if any."""
        query = (
            select(ImmutabilityLock)
            .where(
                ImmutabilityLock.repository_id == repository_id,
                ImmutabilityLock.path == path,
                ImmutabilityLock.state.in_(HOLDING_STATES),
            )
            .order_by(ImmutabilityLock.expires_at.desc())
            .limit(1)
        )
        with self.catalog.session() as session:
            return session.scalar(query)

    def holding_many(self, repository_id: int, paths: Sequence[str]) -> dict[str, ImmutabilityLock]:
        """``holding`` for many files of one repository (a retention plan asks about
        every point it would remove): an ``IN`` list for a few, else every holding lock
        of the repository in one query, kept for the files asked about."""
        query = (
            select(ImmutabilityLock)
            .where(
                ImmutabilityLock.repository_id == repository_id,
                ImmutabilityLock.state.in_(HOLDING_STATES),
            )
            .order_by(ImmutabilityLock.expires_at)
        )
        wanted = set(paths)
        if len(wanted) <= IN_BATCH:
            query = query.where(ImmutabilityLock.path.in_(list(wanted)))
        found: dict[str, ImmutabilityLock] = {}
        if not wanted:
            return found
        with self.catalog.session() as session:
            for lock in session.scalars(query):
                if lock.path in wanted:
                    found[lock.path] = lock  # the newest expiry wins, as in holding()
        return found

    def list(
        self,
        *,
        states: Sequence[str] | None = None,
        repository_id: int | None = None,
        backup_ids: Sequence[int] | None = None,
        limit: int = 10_000,
    ) -> list[ImmutabilityLock]:
        query = select(ImmutabilityLock).order_by(ImmutabilityLock.expires_at, ImmutabilityLock.id)
        if states:
            query = query.where(ImmutabilityLock.state.in_(list(states)))
        if repository_id is not None:
            query = query.where(ImmutabilityLock.repository_id == repository_id)
        if backup_ids is not None:
            query = query.where(ImmutabilityLock.backup_id.in_(list(backup_ids)))
        with self.catalog.session() as session:
            return list(session.scalars(query.limit(limit)))

    def expired(self, now: datetime) -> builtins.list[ImmutabilityLock]:
        """Holding locks whose expiry has passed."""
        query = (
            select(ImmutabilityLock)
            .where(
                ImmutabilityLock.state.in_(FLAGGED_STATES),
                ImmutabilityLock.expires_at <= now,
            )
            .order_by(ImmutabilityLock.expires_at, ImmutabilityLock.id)
        )
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def update(self, lock_id: int, **fields: Any) -> ImmutabilityLock:
        with self.catalog.session() as session:
            row = session.get(ImmutabilityLock, lock_id)
            if row is None:
                raise NotFoundError(f"lock {lock_id} does not exist")
            for key, value in fields.items():
                if not hasattr(ImmutabilityLock, key):
                    raise AttributeError(key)
                setattr(row, key, value)
            return row

    def mark_released(self, lock_id: int, now: datetime) -> bool:
        """Compare-and-set: only one engine releases a lock."""
        with self.catalog.session() as session:
            result = session.execute(
                update(ImmutabilityLock)
                .where(
                    ImmutabilityLock.id == lock_id,
                    ImmutabilityLock.state.in_(FLAGGED_STATES),
                )
                .values(state="released", released_at=now)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result) == 1

    def extend(self, lock_id: int, expires_at: datetime) -> bool:
        """Move the expiry later; never earlier (the WHERE makes it a no-op)."""
        with self.catalog.session() as session:
            result = session.execute(
                update(ImmutabilityLock)
                .where(
                    ImmutabilityLock.id == lock_id,
                    ImmutabilityLock.expires_at < expires_at,
                )
                .values(expires_at=expires_at)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result) == 1

    def holding_for_repository(self, repository_id: int) -> builtins.list[ImmutabilityLock]:
        """Every holding lock a forced removal of this repository would take with it:
        on its files, on its backups, and on copies of its backups or into it
        (wherever they are), newest expiry first."""
        backup_ids = (
            select(Backup.id)
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Chain.repository_id == repository_id)
        )
        copy_ids = select(Copy.id).where(
            or_(Copy.destination_repository_id == repository_id, Copy.backup_id.in_(backup_ids))
        )
        query = (
            select(ImmutabilityLock)
            .where(
                ImmutabilityLock.state.in_(HOLDING_STATES),
                or_(
                    ImmutabilityLock.repository_id == repository_id,
                    ImmutabilityLock.backup_id.in_(backup_ids),
                    ImmutabilityLock.copy_id.in_(copy_ids),
                ),
            )
            .order_by(ImmutabilityLock.expires_at.desc(), ImmutabilityLock.id)
        )
        with self.catalog.session() as session:
            return list(session.scalars(query))

    # -- clock checks ---------------------------------------------------------------------

    def clock_check(self, boot_id: str) -> LockClockCheck | None:
        with self.catalog.session() as session:
            return session.get(LockClockCheck, boot_id)

    def any_clock_check(self) -> bool:
        """Whether any lock check was ever recorded (by any boot of any machine)."""
        with self.catalog.session() as session:
            return session.scalar(select(LockClockCheck.boot_id).limit(1)) is not None

    def record_clock_check(
        self,
        *,
        boot_id: str,
        host: str,
        wall: datetime,
        boot_ms: int,
        ok: bool,
        detail: str | None,
        anchor: bool,
    ) -> LockClockCheck:
        """Record a check; with ``anchor`` its reading becomes the one the next check of
        this boot is compared with."""
        for attempt in (1, 2):
            try:
                with self.catalog.session() as session:
                    row = session.get(LockClockCheck, boot_id)
                    if row is None:
                        row = LockClockCheck(boot_id=boot_id)
                        session.add(row)
                    row.host = host[:255]
                    row.last_wall = wall
                    row.last_boot_ms = boot_ms
                    row.last_ok = ok
                    row.last_detail = detail
                    if anchor:
                        row.anchor_wall = wall
                        row.anchor_boot_ms = boot_ms
                    session.flush()
                    return row
            except IntegrityError:
                # another process of this boot added the row first: update it instead
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def newest_recorded_time(self) -> datetime | None:
        """The latest time anything in the catalog was recorded at (audit log and
        locks): a clock that reads earlier than this has jumped backwards."""
        with self.catalog.session() as session:
            times = [
                session.scalar(select(func.max(AuditEntry.at))),
                session.scalar(select(func.max(ImmutabilityLock.created_at))),
                session.scalar(select(func.max(ImmutabilityLock.locked_at))),
                session.scalar(select(func.max(ImmutabilityLock.released_at))),
            ]
        found = [_aware(t) for t in times if t is not None]
        return max(found) if found else None


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)
