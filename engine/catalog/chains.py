"""Chains and their backups (restore points): the rows behind backup, restore and consolidation.

Rows are handed back detached (the session closes); their attributes stay loaded.
A chain lives in its own directory under the repository root; its backups are
ordered by ``position`` (the full is the lowest live position, usually 0).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select

from engine.catalog.db import Catalog
from engine.catalog.models import Backup, Chain, Copy, ImmutabilityLock, Repository
from engine.errors import NotFoundError

#: backup states that are restore points (files that should exist)
LIVE_STATES = ("complete", "bad")
#: lock states that forbid changing or deleting a file
LOCKING_STATES = ("pending", "active", "drift")


class ChainStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # -- chains ------------------------------------------------------------------

    def get_chain(self, chain_id: int) -> Chain:
        with self.catalog.session() as session:
            chain = session.get(Chain, chain_id)
            if chain is None:
                raise NotFoundError(
                    f"chain {chain_id} does not exist",
                    hint="`sendense chain show` lists the chains",
                )
            return chain

    def list_chains(
        self,
        *,
        repository_id: int | None = None,
        vm_name: str | None = None,
        disk_name: str | None = None,
        states: Sequence[str] | None = None,
    ) -> list[Chain]:
        query = select(Chain).order_by(Chain.vm_name, Chain.disk_name, Chain.id)
        if repository_id is not None:
            query = query.where(Chain.repository_id == repository_id)
        if vm_name is not None:
            query = query.where(Chain.vm_name == vm_name)
        if disk_name is not None:
            query = query.where(Chain.disk_name == disk_name)
        if states is not None:
            query = query.where(Chain.state.in_(list(states)))
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def current_chain(self, repository_id: int, vm_name: str, disk_name: str) -> Chain | None:
        """The newest chain of a disk that is not retired (it may be broken)."""
        query = (
            select(Chain)
            .where(
                Chain.repository_id == repository_id,
                Chain.vm_name == vm_name,
                Chain.disk_name == disk_name,
                Chain.state != "retired",
            )
            .order_by(Chain.id.desc())
            .limit(1)
        )
        with self.catalog.session() as session:
            return session.scalar(query)

    def update_chain(self, chain_id: int, **fields: Any) -> Chain:
        with self.catalog.session() as session:
            chain = session.get(Chain, chain_id)
            if chain is None:
                raise NotFoundError(f"chain {chain_id} does not exist")
            for key, value in fields.items():
                if not hasattr(Chain, key):
                    raise AttributeError(key)
                setattr(chain, key, value)
            return chain

    def directory_taken(self, repository_id: int, directory: str) -> bool:
        query = select(Chain.id).where(
            Chain.repository_id == repository_id, Chain.directory == directory
        )
        with self.catalog.session() as session:
            return session.scalar(query) is not None

    def known_directories(self, repository_id: int) -> set[str]:
        """Directories of a repository the catalog describes: its chains (any state) and
        the directories its copies were written to."""
        chains = select(Chain.directory).where(Chain.repository_id == repository_id)
        copies = select(Copy.path).where(Copy.destination_repository_id == repository_id)
        with self.catalog.session() as session:
            found = set(session.scalars(chains))
            found.update(posixpath.dirname(path) for path in session.scalars(copies))
        return found

    # -- backups -----------------------------------------------------------------

    def get_backup(self, backup_id: int) -> Backup:
        with self.catalog.session() as session:
            backup = session.get(Backup, backup_id)
            if backup is None:
                raise NotFoundError(
                    f"restore point {backup_id} does not exist",
                    hint="`sendense backup list` shows the restore points",
                )
            return backup

    def locate(self, backup_id: int) -> tuple[Backup, Chain, Repository]:
        """A backup with its chain and repository (one query)."""
        query = (
            select(Backup, Chain, Repository)
            .join(Chain, Backup.chain_id == Chain.id)
            .join(Repository, Chain.repository_id == Repository.id)
            .where(Backup.id == backup_id)
        )
        with self.catalog.session() as session:
            row = session.execute(query).first()
            if row is None:
                raise NotFoundError(
                    f"restore point {backup_id} does not exist",
                    hint="`sendense backup list` shows the restore points",
                )
            return row[0], row[1], row[2]

    def backups(self, chain_id: int, *, include_deleted: bool = False) -> list[Backup]:
        """A chain's backups in chain order (full first)."""
        query = select(Backup).where(Backup.chain_id == chain_id)
        if not include_deleted:
            query = query.where(Backup.state.in_(LIVE_STATES))
        query = query.order_by(Backup.position, Backup.id)
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def list_backups(
        self,
        *,
        repository_id: int | None = None,
        vm_name: str | None = None,
        include_deleted: bool = False,
    ) -> list[tuple[Backup, Chain]]:
        query = select(Backup, Chain).join(Chain, Backup.chain_id == Chain.id)
        if repository_id is not None:
            query = query.where(Chain.repository_id == repository_id)
        if vm_name is not None:
            query = query.where(Chain.vm_name == vm_name)
        if not include_deleted:
            query = query.where(Backup.state.in_(LIVE_STATES))
        query = query.order_by(Chain.vm_name, Chain.disk_name, Chain.id, Backup.position)
        with self.catalog.session() as session:
            return [(b, c) for b, c in session.execute(query).all()]

    def add_full(
        self,
        *,
        repository_id: int,
        vm_name: str,
        disk_name: str,
        directory: str,
        now: datetime,
        backup: dict[str, Any],
        retire: Iterable[int] = (),
        retire_detail: str | None = None,
    ) -> tuple[Chain, Backup]:
        """A new chain and its full, in one transaction; ``retire`` chains end there."""
        with self.catalog.session() as session:
            for chain_id in retire:
                old = session.get(Chain, chain_id)
                if old is not None and old.state != "retired":
                    old.state = "retired"
                    old.state_detail = retire_detail or old.state_detail
            chain = Chain(
                repository_id=repository_id,
                vm_name=vm_name,
                disk_name=disk_name,
                directory=directory,
                state="ok",
                created_at=now,
            )
            session.add(chain)
            session.flush()
            row = Backup(
                chain_id=chain.id, parent_id=None, kind="full", position=0, created_at=now, **backup
            )
            session.add(row)
            session.flush()
            return chain, row

    def add_incremental(
        self, *, chain_id: int, parent_id: int, position: int, now: datetime, backup: dict[str, Any]
    ) -> Backup:
        with self.catalog.session() as session:
            row = Backup(
                chain_id=chain_id,
                parent_id=parent_id,
                kind="incremental",
                position=position,
                created_at=now,
                **backup,
            )
            session.add(row)
            session.flush()
            return row

    def chains_by_directory(self, directory: str) -> list[Chain]:
        """Chains of every repository kept in this relative directory (a copied chain
        has the same directory in its destination)."""
        query = select(Chain).where(Chain.directory == directory).order_by(Chain.id)
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def import_chain(
        self,
        *,
        repository_id: int,
        vm_name: str,
        disk_name: str,
        directory: str,
        created_at: datetime,
        points: Sequence[dict[str, Any]],
        state_detail: str | None = None,
    ) -> tuple[Chain, list[Backup]]:
        """A chain read back from its files and its points (full first, each the parent
        of the next), in one transaction: an interrupted import records all or nothing."""
        with self.catalog.session() as session:
            chain = Chain(
                repository_id=repository_id,
                vm_name=vm_name,
                disk_name=disk_name,
                directory=directory,
                state="ok",
                state_detail=state_detail,
                created_at=created_at,
            )
            session.add(chain)
            session.flush()
            rows = self._add_points(session, chain.id, None, points)
            return chain, rows

    def append_points(
        self, *, chain_id: int, parent_id: int, points: Sequence[dict[str, Any]]
    ) -> list[Backup]:
        """Incrementals read back from their files, after ``parent_id``, in one transaction."""
        with self.catalog.session() as session:
            return self._add_points(session, chain_id, parent_id, points)

    @staticmethod
    def _add_points(
        session: Any, chain_id: int, parent_id: int | None, points: Sequence[dict[str, Any]]
    ) -> list[Backup]:
        rows: list[Backup] = []
        for fields in points:
            row = Backup(chain_id=chain_id, parent_id=parent_id, **fields)
            session.add(row)
            session.flush()
            rows.append(row)
            parent_id = row.id
        return rows

    def update_backup(self, backup_id: int, **fields: Any) -> Backup:
        with self.catalog.session() as session:
            row = session.get(Backup, backup_id)
            if row is None:
                raise NotFoundError(f"restore point {backup_id} does not exist")
            for key, value in fields.items():
                if not hasattr(Backup, key):
                    raise AttributeError(key)
                setattr(row, key, value)
            return row

    def mark_deleted(self, backup_ids: Iterable[int], detail: str) -> None:
        ids = list(backup_ids)
        if not ids:
            return
        with self.catalog.session() as session:
            for row in session.scalars(select(Backup).where(Backup.id.in_(ids))):
                row.state = "deleted"
                row.state_detail = detail

    def promote_to_full(
        self,
        *,
        backup_id: int,
        path: str,
        fields: dict[str, Any],
        deleted_ids: Iterable[int],
        detail: str,
        other_updates: dict[int, dict[str, Any]] | None = None,
    ) -> Backup:
        """Consolidation's catalog step: ``backup_id`` becomes the chain's full (new file
        ``path``) and the points merged into it are marked deleted, in one transaction."""
        with self.catalog.session() as session:
            for row in session.scalars(select(Backup).where(Backup.id.in_(list(deleted_ids)))):
                row.state = "deleted"
                row.state_detail = detail
            target = session.get(Backup, backup_id)
            if target is None:
                raise NotFoundError(f"restore point {backup_id} does not exist")
            target.kind = "full"
            target.parent_id = None
            target.path = path
            for key, value in fields.items():
                setattr(target, key, value)
            for other_id, updates in (other_updates or {}).items():
                other = session.get(Backup, other_id)
                if other is not None:
                    for key, value in updates.items():
                        setattr(other, key, value)
            return target

    # -- locks -------------------------------------------------------------------

    def active_locks(
        self, backup_ids: Iterable[int], now: datetime, *, paths: Iterable[str] = ()
    ) -> list[ImmutabilityLock]:
        """Locks in force on these backups (by id, or by repository-relative path)."""
        ids = list(backup_ids)
        path_list = list(paths)
        conditions = []
        if ids:
            conditions.append(ImmutabilityLock.backup_id.in_(ids))
        if path_list:
            conditions.append(ImmutabilityLock.path.in_(path_list))
        if not conditions:
            return []
        query = select(ImmutabilityLock).where(
            or_(*conditions),
            ImmutabilityLock.state.in_(LOCKING_STATES),
            ImmutabilityLock.copy_id.is_(None),
        )
        with self.catalog.session() as session:
            rows = list(session.scalars(query))
        result = []
        for row in rows:
            expires = (
                row.expires_at
                if row.expires_at.tzinfo
                else row.expires_at.replace(tzinfo=now.tzinfo)
            )
            if expires > now:
                result.append(row)
        return result

    def lock_counts(self, now: datetime) -> dict[int, ImmutabilityLock]:
        """The lock in force per backup id (for badges)."""
        query = select(ImmutabilityLock).where(
            ImmutabilityLock.state.in_(LOCKING_STATES),
            ImmutabilityLock.backup_id.is_not(None),
            ImmutabilityLock.copy_id.is_(None),
        )
        with self.catalog.session() as session:
            rows = list(session.scalars(query))
        found: dict[int, ImmutabilityLock] = {}
        for row in rows:
            expires = (
                row.expires_at
                if row.expires_at.tzinfo
                else row.expires_at.replace(tzinfo=now.tzinfo)
            )
            if expires > now and row.backup_id is not None:
                found[row.backup_id] = row
        return found
