"""Copy rules, copies and verification results: the rows behind 3-2-1 and integrity.

Rows are handed back detached (the session closes); their attributes stay loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, or_, select, update

from engine.catalog.chains import LIVE_STATES, ChainStore
from engine.catalog.db import Catalog, in_batches
from engine.catalog.models import (
    Backup,
    Chain,
    Copy,
    CopyRule,
    Repository,
    Verification,
)
from engine.catalog.refs import find_by_ref
from engine.errors import Action, NotFoundError, ValidationError

#: copy states a restore can rely on
COPY_DONE = "completed"
COPY_OPEN_STATES = ("pending", "copying", "verifying")


@dataclass(frozen=True)
class SourceBackup:
    """A backup with the facts a copy or a verification needs (chain, repository)."""

    id: int
    chain_id: int
    parent_id: int | None
    kind: str
    position: int
    path: str
    checksum: str | None
    file_size: int
    point_time: datetime
    state: str
    verify_state: str | None
    verified_at: datetime | None
    repository_id: int
    vm_name: str
    disk_name: str
    chain_directory: str


def _source(backup: Backup, chain: Chain) -> SourceBackup:
    return SourceBackup(
        id=backup.id,
        chain_id=backup.chain_id,
        parent_id=backup.parent_id,
        kind=backup.kind,
        position=backup.position,
        path=backup.path,
        checksum=backup.checksum,
        file_size=backup.file_size,
        point_time=backup.point_time,
        state=backup.state,
        verify_state=backup.verify_state,
        verified_at=backup.verified_at,
        repository_id=chain.repository_id,
        vm_name=chain.vm_name,
        disk_name=chain.disk_name,
        chain_directory=chain.directory,
    )


#: SourceBackup's fields, in its order, as columns of a backup joined to its chain
_SOURCE_COLUMNS = (
    Backup.id,
    Backup.chain_id,
    Backup.parent_id,
    Backup.kind,
    Backup.position,
    Backup.path,
    Backup.checksum,
    Backup.file_size,
    Backup.point_time,
    Backup.state,
    Backup.verify_state,
    Backup.verified_at,
    Chain.repository_id,
    Chain.vm_name,
    Chain.disk_name,
    Chain.directory,
)


class CopyStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        #: backup and chain lookups shared with the chain manager
        self.chains = ChainStore(catalog)

    # -- rules -----------------------------------------------------------------

    def add_rule(self, *, name: str, now: datetime, **fields: Any) -> CopyRule:
        with self.catalog.session() as session:
            if session.scalar(select(CopyRule.id).where(CopyRule.name == name)):
                raise ValidationError(f"a copy rule named {name!r} already exists")
            rule = CopyRule(name=name, created_at=now, **fields)
            session.add(rule)
            session.flush()
            return rule

    def get_rule(self, ref: int | str) -> CopyRule:
        """By name, else by ``#ID`` / ``ID`` (``engine.names`` has the rule)."""
        with self.catalog.session() as session:
            rule = find_by_ref(session, CopyRule, ref, name_column=CopyRule.name)
            if rule is None:
                raise NotFoundError(
                    f"copy rule {ref!r} does not exist",
                    action=Action("list_copy_rules", "the list of copy rules shows them"),
                )
            return rule

    def list_rules(
        self,
        *,
        source_repository_id: int | None = None,
        mode: str | None = None,
        enabled_only: bool = False,
    ) -> list[CopyRule]:
        query = select(CopyRule).order_by(CopyRule.priority, CopyRule.name)
        if source_repository_id is not None:
            query = query.where(CopyRule.source_repository_id == source_repository_id)
        if mode is not None:
            query = query.where(CopyRule.mode == mode)
        if enabled_only:
            query = query.where(CopyRule.enabled.is_(True))
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def update_rule(self, rule_id: int, **fields: Any) -> CopyRule:
        with self.catalog.session() as session:
            rule = session.get(CopyRule, rule_id)
            if rule is None:
                raise NotFoundError(f"copy rule {rule_id} does not exist")
            for key, value in fields.items():
                if not hasattr(CopyRule, key):
                    raise AttributeError(key)
                setattr(rule, key, value)
            return rule

    def delete_rule(self, rule_id: int) -> None:
        with self.catalog.session() as session:
            rule = session.get(CopyRule, rule_id)
            if rule is not None:
                session.delete(rule)

    def record_rule_outcome(self, rule_id: int, ok: bool) -> int:
        """Reset or bump the rule's failures-in-a-row counter; returns the new count."""
        with self.catalog.session() as session:
            rule = session.get(CopyRule, rule_id)
            if rule is None:
                return 0
            rule.failures_in_row = 0 if ok else rule.failures_in_row + 1
            return rule.failures_in_row

    # -- source backups ----------------------------------------------------------

    def source_backups(
        self, repository_id: int, *, states: Sequence[str] = ("complete",)
    ) -> list[SourceBackup]:
        """Backups kept in a repository, chain by chain, bases before incrementals."""
        query = (
            select(Backup, Chain)
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Chain.repository_id == repository_id, Backup.state.in_(states))
            .order_by(Chain.id, Backup.position, Backup.id)
        )
        with self.catalog.session() as session:
            return [_source(b, c) for b, c in session.execute(query)]

    def source_backups_by_id(self, backup_ids: Sequence[int]) -> dict[int, SourceBackup]:
        """``source_backup`` for many points (any state), in batches of ``IN_BATCH``."""
        found: dict[int, SourceBackup] = {}
        with self.catalog.session() as session:
            for batch in in_batches(backup_ids):
                query = (
                    select(*_SOURCE_COLUMNS)
                    .join(Chain, Backup.chain_id == Chain.id)
                    .where(Backup.id.in_(batch))
                )
                for row in session.execute(query):
                    found[row[0]] = SourceBackup(*tuple(row))
        return found

    def source_backup(self, backup_id: int) -> SourceBackup:
        backup, chain, _repo = self.chains.locate(backup_id)
        return _source(backup, chain)

    def chain_backups(self, chain_id: int) -> list[SourceBackup]:
        query = (
            select(Backup, Chain)
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Chain.id == chain_id, Backup.state != "deleted")
            .order_by(Backup.position, Backup.id)
        )
        with self.catalog.session() as session:
            return [_source(b, c) for b, c in session.execute(query)]

    def lineage(self, backup_id: int) -> list[Backup]:
        """The files a restore point is read through, by the catalog's parent links: the
        point itself first, then its parent, ... down to the full. This (not positions,
        which keep their numbers when older points are merged away) is what a point's
        chain must look like on disk."""
        found: list[Backup] = []
        seen: set[int] = set()
        next_id: int | None = backup_id
        with self.catalog.session() as session:
            while next_id is not None and next_id not in seen:
                seen.add(next_id)
                row = session.get(Backup, next_id)
                if row is None:
                    raise NotFoundError(f"restore point {next_id} does not exist")
                found.append(row)
                next_id = row.parent_id
        return found

    def copy_lineage(self, copy_id: int) -> list[Copy]:
        """The same for a copy: the copy first, then the copy it is backed by in the same
        repository, ... down to a copy of a full. A copy keeps the lineage it was made
        with (``parent_copy_id``); a copy made before that was recorded follows its
        point's parent. Stops early (shorter list) where a base copy is not recorded."""
        found: list[Copy] = []
        seen: set[int] = set()
        with self.catalog.session() as session:
            row = session.get(Copy, copy_id)
            while row is not None and row.id not in seen:
                seen.add(row.id)
                found.append(row)
                if row.parent_copy_id is not None:
                    row = session.get(Copy, row.parent_copy_id)
                    continue
                backup = session.get(Backup, row.backup_id)
                if backup is None or backup.parent_id is None:
                    break
                row = session.scalar(
                    select(Copy)
                    .where(
                        Copy.backup_id == backup.parent_id,
                        Copy.destination_repository_id == row.destination_repository_id,
                        Copy.state == COPY_DONE,
                    )
                    .order_by(Copy.id.desc())
                    .limit(1)
                )
        return found

    def bases_of_merged_points(
        self, *, destination_repository_id: int | None = None, chain_id: int | None = None
    ) -> list[Copy]:
        """Completed copies of points that were merged away (deleted) at the source but
        still back a completed copy: the copied chain reads through them, so they are
        verified like the copies of live points."""
        needed = (
            select(Copy.parent_copy_id)
            .where(Copy.state == COPY_DONE, Copy.parent_copy_id.is_not(None))
            .scalar_subquery()
        )
        query = (
            select(Copy)
            .join(Backup, Copy.backup_id == Backup.id)
            .where(Copy.state == COPY_DONE, Backup.state == "deleted", Copy.id.in_(needed))
            .order_by(Copy.id)
        )
        if destination_repository_id is not None:
            query = query.where(Copy.destination_repository_id == destination_repository_id)
        if chain_id is not None:
            query = query.where(Backup.chain_id == chain_id)
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def all_backups(self, *, repository_id: int | None = None) -> list[SourceBackup]:
        """Restore points (complete or bad), repository by repository, chain order.

        Read as plain columns, not as catalog records: at 100,000 points building a
        mapped object per row (and its chain) was most of a verify report's time."""
        query = (
            select(*_SOURCE_COLUMNS)
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Backup.state.in_(LIVE_STATES))
            .order_by(Chain.repository_id, Backup.chain_id, Backup.position, Backup.id)
        )
        if repository_id is not None:
            query = query.where(Chain.repository_id == repository_id)
        with self.catalog.session() as session:
            # _SOURCE_COLUMNS are SourceBackup's fields in order
            return [SourceBackup(*tuple(row)) for row in session.execute(query)]

    def set_backup_verified(
        self, backup_id: int, verify_state: str, at: datetime, *, mark_bad: bool = False
    ) -> None:
        values: dict[str, Any] = {"verify_state": verify_state, "verified_at": at}
        if mark_bad:
            values["state"] = "bad"
            values["state_detail"] = f"verification found {verify_state} at {at:%Y-%m-%d %H:%M}"
        with self.catalog.session() as session:
            session.execute(
                update(Backup)
                .where(Backup.id == backup_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    # -- copies ------------------------------------------------------------------

    def find_copy(self, backup_id: int, destination_repository_id: int) -> Copy | None:
        """The newest copy row of a backup in a repository."""
        query = (
            select(Copy)
            .where(
                Copy.backup_id == backup_id,
                Copy.destination_repository_id == destination_repository_id,
            )
            .order_by(Copy.id.desc())
            .limit(1)
        )
        with self.catalog.session() as session:
            return session.scalar(query)

    def create_copy(
        self,
        *,
        backup_id: int,
        destination_repository_id: int,
        path: str,
        size: int,
        now: datetime,
        rule_id: int | None = None,
        job_id: int | None = None,
        parent_copy_id: int | None = None,
    ) -> Copy:
        copy = Copy(
            backup_id=backup_id,
            destination_repository_id=destination_repository_id,
            path=path,
            parent_copy_id=parent_copy_id,
            size=size,
            rule_id=rule_id,
            job_id=job_id,
            state="pending",
            created_at=now,
        )
        with self.catalog.session() as session:
            session.add(copy)
            session.flush()
            return copy

    def get_copy(self, copy_id: int) -> Copy:
        with self.catalog.session() as session:
            copy = session.get(Copy, copy_id)
            if copy is None:
                raise NotFoundError(
                    f"copy {copy_id} does not exist",
                    action=Action("list_copies", "the copy status lists the copies"),
                )
            return copy

    def update_copy(self, copy_id: int, **fields: Any) -> None:
        with self.catalog.session() as session:
            session.execute(
                update(Copy)
                .where(Copy.id == copy_id)
                .values(**fields)
                .execution_options(synchronize_session=False)
            )

    def delete_copy(self, copy_id: int) -> None:
        """Remove a copy row nothing refers to yet (a copy withdrawn before it landed)."""
        with self.catalog.session() as session:
            session.execute(delete(Copy).where(Copy.id == copy_id))

    def list_copies(
        self,
        *,
        rule_id: int | None = None,
        backup_id: int | None = None,
        destination_repository_id: int | None = None,
        states: Sequence[str] | None = None,
        limit: int = 500,
    ) -> list[Copy]:
        query = select(Copy).order_by(Copy.id.desc()).limit(limit)
        if rule_id is not None:
            query = query.where(Copy.rule_id == rule_id)
        if backup_id is not None:
            query = query.where(Copy.backup_id == backup_id)
        if destination_repository_id is not None:
            query = query.where(Copy.destination_repository_id == destination_repository_id)
        if states:
            query = query.where(Copy.state.in_(states))
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def verification_counts(self, since: datetime, due: datetime) -> VerificationCounts:
        """What ``VerifyService.report`` counts, summed in SQL over every file it
        covers (live points and the done copies of them or of merged points they
        still read through): bytes and files, those verified ok since ``since``,
        the bad ones, and the overdue ones (written before ``due`` and not verified
        ok since)."""
        needed = (
            select(Copy.parent_copy_id)
            .where(Copy.state == COPY_DONE, Copy.parent_copy_id.is_not(None))
            .scalar_subquery()
        )
        copy_size = case((func.coalesce(Copy.size, 0) != 0, Copy.size), else_=Backup.file_size)
        sets = [
            (
                select(*_counting(Backup.file_size, Backup.verify_state, Backup.verified_at,
                                  Backup.point_time, since, due))
                .where(Backup.state.in_(LIVE_STATES))
            ),
            (
                select(*_counting(copy_size, Copy.verify_state, Copy.verified_at,
                                  func.coalesce(Copy.completed_at, Copy.created_at), since, due))
                .join(Backup, Copy.backup_id == Backup.id)
                .where(
                    Copy.state == COPY_DONE,
                    or_(
                        Backup.state.in_(LIVE_STATES),
                        (Backup.state == "deleted") & Copy.id.in_(needed),
                    ),
                )
            ),
        ]  # fmt: skip
        counts = VerificationCounts()
        with self.catalog.session() as session:
            for query in sets:
                row = session.execute(query).one()
                counts = counts.plus(*(int(value or 0) for value in row))
        return counts

    def bad_files(self) -> tuple[list[SourceBackup], list[tuple[Copy, SourceBackup]]]:
        """The files a verification found bad among those ``verification_counts``
        covers: restore points, and completed copies (of live points, or of merged
        points a copied chain still reads through) with their points. Two queries
        that read only the bad rows (the verification alerts ask every few minutes)."""
        bad_backup = Backup.verify_state.is_not(None) & (Backup.verify_state != "ok")
        points = (
            select(*_SOURCE_COLUMNS)
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Backup.state.in_(LIVE_STATES), bad_backup)
            .order_by(Chain.repository_id, Backup.chain_id, Backup.position, Backup.id)
        )
        needed = (
            select(Copy.parent_copy_id)
            .where(Copy.state == COPY_DONE, Copy.parent_copy_id.is_not(None))
            .scalar_subquery()
        )
        copies = (
            select(Copy, *_SOURCE_COLUMNS)
            .join(Backup, Copy.backup_id == Backup.id)
            .join(Chain, Backup.chain_id == Chain.id)
            .where(
                Copy.state == COPY_DONE,
                Copy.verify_state.is_not(None),
                Copy.verify_state != "ok",
                or_(
                    Backup.state.in_(LIVE_STATES),
                    (Backup.state == "deleted") & Copy.id.in_(needed),
                ),
            )
            .order_by(Copy.id)
        )
        with self.catalog.session() as session:
            backups = [SourceBackup(*tuple(row)) for row in session.execute(points)]
            found = [(row[0], SourceBackup(*tuple(row)[1:])) for row in session.execute(copies)]
        return backups, found

    def completed_copies(self) -> list[Copy]:
        """Every completed copy, oldest first (a whole-catalog verify or report: one
        query, not an IN list of every restore point)."""
        query = select(Copy).where(Copy.state == COPY_DONE).order_by(Copy.id)
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def copies_of_backups(self, backup_ids: Sequence[int]) -> dict[int, list[Copy]]:
        found: dict[int, list[Copy]] = {}
        with self.catalog.session() as session:
            for batch in in_batches(backup_ids):
                query = select(Copy).where(Copy.backup_id.in_(batch)).order_by(Copy.id)
                for copy in session.scalars(query):
                    found.setdefault(copy.backup_id, []).append(copy)
        return found

    def newest_completed_copy(self, rule_id: int) -> Copy | None:
        query = (
            select(Copy)
            .where(Copy.rule_id == rule_id, Copy.state == COPY_DONE)
            .order_by(Copy.completed_at.desc(), Copy.id.desc())
            .limit(1)
        )
        with self.catalog.session() as session:
            return session.scalar(query)

    # -- verifications -------------------------------------------------------------

    def add_verification(
        self,
        *,
        outcome: str,
        started_at: datetime,
        finished_at: datetime,
        backup_id: int | None = None,
        copy_id: int | None = None,
        job_id: int | None = None,
        detail: str | None = None,
        bytes_read: int = 0,
    ) -> Verification:
        row = Verification(
            backup_id=backup_id,
            copy_id=copy_id,
            job_id=job_id,
            outcome=outcome,
            started_at=started_at,
            finished_at=finished_at,
            detail=detail,
            bytes_read=bytes_read,
        )
        with self.catalog.session() as session:
            session.add(row)
            session.flush()
            return row

    def verifications(
        self,
        *,
        backup_id: int | None = None,
        copy_id: int | None = None,
        job_id: int | None = None,
        since: datetime | None = None,
        limit: int = 500,
    ) -> list[Verification]:
        query = select(Verification).order_by(Verification.id.desc()).limit(limit)
        if backup_id is not None:
            query = query.where(Verification.backup_id == backup_id)
        if copy_id is not None:
            query = query.where(Verification.copy_id == copy_id)
        if job_id is not None:
            query = query.where(Verification.job_id == job_id)
        if since is not None:
            query = query.where(Verification.started_at >= since)
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def repositories_by_id(self) -> dict[int, Repository]:
        with self.catalog.session() as session:
            return {r.id: r for r in session.scalars(select(Repository))}


@dataclass(frozen=True)
class VerificationCounts:
    """Verification coverage in numbers (CopyStore.verification_counts)."""

    files: int = 0
    bytes_total: int = 0
    files_verified: int = 0
    bytes_verified: int = 0
    bad: int = 0
    overdue: int = 0

    def plus(self, *values: int) -> VerificationCounts:
        return VerificationCounts(*(a + b for a, b in zip(self.astuple(), values, strict=True)))

    def astuple(self) -> tuple[int, ...]:
        return (
            self.files,
            self.bytes_total,
            self.files_verified,
            self.bytes_verified,
            self.bad,
            self.overdue,
        )


def _counting(
    size: Any, state: Any, at: Any, written: Any, since: datetime, due: datetime
) -> list[Any]:
    """The VerificationCounts columns of one set of files (sums of CASEs)."""
    recent_ok = (state == "ok") & at.is_not(None) & (at >= since)
    bad = state.is_not(None) & (state != "ok")
    overdue = ~bad & (written < due) & (at.is_(None) | (at < due))
    return [
        func.count(),
        func.coalesce(func.sum(size), 0),
        func.sum(case((recent_ok, 1), else_=0)),
        func.coalesce(func.sum(case((recent_ok, size), else_=0)), 0),
        func.sum(case((bad, 1), else_=0)),
        func.sum(case((overdue, 1), else_=0)),
    ]
