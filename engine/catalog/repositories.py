"""Repository rows and the numbers shown next to them."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update

from engine.catalog.db import Catalog
from engine.catalog.locks import HOLDING_STATES
from engine.catalog.models import (
    Backup,
    CapacitySample,
    Chain,
    Copy,
    CopyRule,
    ImmutabilityLock,
    NbdExport,
    Policy,
    Repository,
    RestoreMount,
    Verification,
)
from engine.catalog.refs import find_by_ref
from engine.errors import Action, NotFoundError, ValidationError
from engine.units import plural


class RepositoryStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def add(self, *, name: str, kind: str, path: str, now: datetime, **fields: Any) -> Repository:
        with self.catalog.session() as session:
            if session.scalar(select(Repository.id).where(Repository.name == name)):
                raise ValidationError(f"a repository named {name!r} already exists")
            repo = Repository(
                name=name, kind=kind, path=path, created_at=now, updated_at=now, **fields
            )
            session.add(repo)
            session.flush()
            return repo

    def get(self, ref: int | str) -> Repository:
        """By name, else by ``#ID`` / ``ID`` (``engine.names`` has the rule)."""
        with self.catalog.session() as session:
            repo = find_by_ref(session, Repository, ref, name_column=Repository.name)
            if repo is None:
                raise NotFoundError(
                    f"repository {ref!r} does not exist",
                    action=Action("list_repositories", "the list of repositories shows them"),
                )
            return repo

    def list(self, *, enabled_only: bool = False) -> list[Repository]:
        query = select(Repository).order_by(Repository.name)
        if enabled_only:
            query = query.where(Repository.enabled.is_(True))
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def update(self, repo_id: int, now: datetime, **fields: Any) -> Repository:
        with self.catalog.session() as session:
            repo = session.get(Repository, repo_id)
            if repo is None:
                raise NotFoundError(f"repository {repo_id} does not exist")
            for key, value in fields.items():
                if not hasattr(Repository, key):
                    raise AttributeError(key)
                setattr(repo, key, value)
            repo.updated_at = now
            return repo

    def delete(self, repo_id: int) -> None:
        with self.catalog.session() as session:
            repo = session.get(Repository, repo_id)
            if repo is not None:
                session.delete(repo)

    def backup_count(self, repo_id: int) -> int:
        """Restore points held here: its own backups and the completed copies that
        landed here from other repositories (each one a backup an operator can restore)."""
        own = (
            select(func.count(Backup.id))
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Chain.repository_id == repo_id, Backup.state != "deleted")
        )
        copies = select(func.count(Copy.id)).where(
            Copy.destination_repository_id == repo_id, Copy.state == "completed"
        )
        with self.catalog.session() as session:
            return int(session.scalar(own) or 0) + int(session.scalar(copies) or 0)

    def backup_counts(self) -> dict[int, int]:
        """``backup_count`` of every repository with a restore point, in two grouped
        queries (a list of 50 repositories asked 100 of them)."""
        own = (
            select(Chain.repository_id, func.count(Backup.id))
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Backup.state != "deleted")
            .group_by(Chain.repository_id)
        )
        copies = (
            select(Copy.destination_repository_id, func.count(Copy.id))
            .where(Copy.state == "completed")
            .group_by(Copy.destination_repository_id)
        )
        counts: dict[int, int] = {}
        with self.catalog.session() as session:
            for repo_id, count in [*session.execute(own).all(), *session.execute(copies).all()]:
                counts[repo_id] = counts.get(repo_id, 0) + int(count or 0)
        return counts

    def copy_rules_targeting(self, repo_id: int) -> builtins.list[CopyRule]:
        query = select(CopyRule).where(CopyRule.destination_repository_id == repo_id)
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def policies_targeting(self, repo_id: int) -> builtins.list[Policy]:
        query = select(Policy).where(Policy.target_repository_id == repo_id)
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def delete_with_contents(self, repo_id: int) -> None:
        """Forget a repository and every catalog row about what it holds (forced removal:
        the files themselves are not touched). Policies must be moved away first; a
        holding lock on any of it refuses the whole removal (ValidationError)."""
        with self.catalog.session() as session:
            chain_ids = select(Chain.id).where(Chain.repository_id == repo_id)
            backup_ids = select(Backup.id).where(Backup.chain_id.in_(chain_ids))
            copy_ids = select(Copy.id).where(
                or_(Copy.destination_repository_id == repo_id, Copy.backup_id.in_(backup_ids))
            )
            its_locks = or_(
                ImmutabilityLock.repository_id == repo_id,
                ImmutabilityLock.backup_id.in_(backup_ids),
                ImmutabilityLock.copy_id.in_(copy_ids),
            )
            holding = session.scalar(
                select(func.count(ImmutabilityLock.id)).where(
                    its_locks, ImmutabilityLock.state.in_(HOLDING_STATES)
                )
            )
            if holding:
                # the service refuses first with the dates; this guards the transaction
                raise ValidationError(
                    f"files of this repository are still held by {plural(holding, 'lock')}; "
                    f"nothing removed",
                    action=Action("list_repository_locks", "the list of locks shows them"),
                )
            # only released rows go; a lock added meanwhile stays (and its foreign key
            # then stops the removal of the repository row: nothing is dropped early)
            session.execute(
                delete(ImmutabilityLock).where(
                    its_locks, ImmutabilityLock.state.not_in(HOLDING_STATES)
                )
            )
            session.execute(delete(Verification).where(Verification.copy_id.in_(copy_ids)))
            session.execute(delete(Copy).where(Copy.id.in_(copy_ids)))
            session.execute(
                delete(CopyRule).where(
                    or_(
                        CopyRule.destination_repository_id == repo_id,
                        CopyRule.source_repository_id == repo_id,
                    )
                )
            )
            session.execute(delete(Verification).where(Verification.backup_id.in_(backup_ids)))
            session.execute(delete(RestoreMount).where(RestoreMount.backup_id.in_(backup_ids)))
            session.execute(delete(NbdExport).where(NbdExport.backup_id.in_(backup_ids)))
            # incrementals point at their parent: clear the links before deleting
            session.execute(
                update(Backup).where(Backup.chain_id.in_(chain_ids)).values(parent_id=None)
            )
            session.execute(delete(Backup).where(Backup.chain_id.in_(chain_ids)))
            session.execute(delete(Chain).where(Chain.repository_id == repo_id))
            session.execute(delete(CapacitySample).where(CapacitySample.repository_id == repo_id))
            repo = session.get(Repository, repo_id)
            if repo is not None:
                session.delete(repo)
