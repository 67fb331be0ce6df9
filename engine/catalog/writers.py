"""Disk writer leases: one writer per VM disk and repository (``models.DiskWriter``).

A lease is taken with one compare-and-set UPDATE on the disk's row (the row is
inserted the first time; a racing insert loses on the primary key), so on
SQLite and on MariaDB two engines racing for one disk cannot both win. Reads
and the UPDATE are separate transactions: an SQLite reader that later writes
would fail with "database is locked" instead of waiting for the other writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.exc import IntegrityError

from engine.catalog.db import Catalog, rows_changed
from engine.catalog.models import DiskWriter
from engine.clock import as_utc


@dataclass(frozen=True, order=True)
class DiskKey:
    """One VM disk in one repository: what a writer lease covers."""

    repository_id: int
    vm: str
    disk: str

    def __str__(self) -> str:
        return f"{self.vm}/{self.disk}"


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a disk's lease, as the catalog says."""

    key: DiskKey
    token: str
    operation: str
    job_id: int | None
    owner: str
    actor: str | None
    acquired_at: datetime
    expires_at: datetime
    #: the partial file it was writing, relative to the repository root
    output: str | None

    def lapsed(self, now: datetime) -> bool:
        return self.expires_at < now


def _holder(row: DiskWriter) -> Holder | None:
    if row.token is None or row.expires_at is None or row.acquired_at is None:
        return None
    return Holder(
        key=DiskKey(row.repository_id, row.vm_name, row.disk_name),
        token=row.token,
        operation=row.operation or "write",
        job_id=row.job_id,
        owner=row.owner or "?",
        actor=row.actor,
        acquired_at=as_utc(row.acquired_at),  # type: ignore[arg-type]
        expires_at=as_utc(row.expires_at),  # type: ignore[arg-type]
        output=row.output,
    )


def _where(key: DiskKey) -> list[ColumnElement[bool]]:
    return [
        DiskWriter.repository_id == key.repository_id,
        DiskWriter.vm_name == key.vm,
        DiskWriter.disk_name == key.disk,
    ]


class WriterStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def get(self, key: DiskKey) -> Holder | None:
        """The holder of ``key`` (live or lapsed); None when nobody holds it."""
        with self.catalog.session() as session:
            row = session.scalars(select(DiskWriter).where(*_where(key))).one_or_none()
            return _holder(row) if row is not None else None

    def held_by_job(self, job_id: int) -> list[Holder]:
        query = select(DiskWriter).where(DiskWriter.job_id == job_id, DiskWriter.token.is_not(None))
        with self.catalog.session() as session:
            return [h for row in session.scalars(query) if (h := _holder(row)) is not None]

    def holders(self) -> list[Holder]:
        """Every held lease, live or lapsed (for listings)."""
        query = select(DiskWriter).where(DiskWriter.token.is_not(None))
        with self.catalog.session() as session:
            return [h for row in session.scalars(query) if (h := _holder(row)) is not None]

    def take(
        self,
        key: DiskKey,
        *,
        token: str,
        operation: str,
        job_id: int | None,
        owner: str,
        actor: str | None,
        now: datetime,
        lease: timedelta,
    ) -> tuple[bool, Holder | None]:
        """Try to become the writer of ``key``: (won, previous holder).

        Not won: the previous holder is the live writer in the way. Won with a
        previous holder: its lease had lapsed (its engine died); its ``output`` is
        kept on the row until the caller has cleaned it up (``set_output``).
        """
        values = {
            "token": token,
            "operation": operation,
            "job_id": job_id,
            "owner": owner[:128],
            "actor": actor[:128] if actor else None,
            "acquired_at": now,
            "expires_at": now + lease,
        }
        for _ in range(5):
            current = self._row(key)
            if current is None:
                try:
                    with self.catalog.session() as session:
                        session.add(
                            DiskWriter(
                                repository_id=key.repository_id,
                                vm_name=key.vm,
                                disk_name=key.disk,
                                output=None,
                                **values,
                            )
                        )
                    return True, None
                except IntegrityError:
                    continue  # another writer inserted the row first: read it again
            previous = _holder(current)
            if previous is not None and not previous.lapsed(now):
                return False, previous
            same = (
                DiskWriter.token.is_(None)
                if previous is None
                else (DiskWriter.token == previous.token) & (DiskWriter.expires_at < now)
            )
            with self.catalog.session() as session:
                result = session.execute(
                    update(DiskWriter)
                    .where(*_where(key), same)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
            if rows_changed(result) == 1:
                return True, previous
        held = self.get(key)
        return False, held

    def _row(self, key: DiskKey) -> DiskWriter | None:
        with self.catalog.session() as session:
            return session.scalars(select(DiskWriter).where(*_where(key))).one_or_none()

    def renew(self, key: DiskKey, token: str, now: datetime, lease: timedelta) -> bool:
        """Extend our lease; False: it is not ours any more (another writer took it)."""
        with self.catalog.session() as session:
            result = session.execute(
                update(DiskWriter)
                .where(*_where(key), DiskWriter.token == token)
                .values(expires_at=now + lease)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result) == 1

    def set_output(self, key: DiskKey, token: str, output: str | None) -> bool:
        """Record the partial file we are about to write (None: nothing pending)."""
        with self.catalog.session() as session:
            result = session.execute(
                update(DiskWriter)
                .where(*_where(key), DiskWriter.token == token)
                .values(output=output[:1024] if output else None)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result) == 1

    def release(self, key: DiskKey, token: str) -> bool:
        with self.catalog.session() as session:
            result = session.execute(
                update(DiskWriter)
                .where(*_where(key), DiskWriter.token == token)
                .values(token=None, job_id=None, expires_at=None, output=None)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result) == 1

    def expire(self, key: DiskKey, token: str, now: datetime) -> None:
        """Give a lease back as lapsed, keeping its ``output``: a takeover that could
        not clean up leaves the cleanup to the next writer."""
        with self.catalog.session() as session:
            session.execute(
                update(DiskWriter)
                .where(*_where(key), DiskWriter.token == token)
                .values(expires_at=now - timedelta(seconds=1))
                .execution_options(synchronize_session=False)
            )
