"""Aggregates over the whole fleet, computed by the database (issue 16): what 3-2-1
compliance needs per VM in three GROUP BY queries, however many VMs and points the
catalog holds, instead of loading every restore point into Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select

from engine.catalog.chains import LIVE_STATES
from engine.catalog.copies import COPY_DONE
from engine.catalog.db import Catalog
from engine.catalog.models import Backup, Chain, Copy, ImmutabilityLock
from engine.states import BackupState

#: verification outcomes that count as an error
BAD_VERIFY = ("mismatch", "missing", "check_failed", "chain_broken")
#: lock states that stand for "a lock in force" in compliance
LOCK_IN_FORCE = ("active", "pending", "drift")
#: VMs named in one IN list at most; more are read whole and filtered here
IN_LIST_MAX = 200


@dataclass
class VmHoldings:
    """Where one VM's good backups and copies are, and how many are bad."""

    #: repositories holding a complete backup or a completed copy
    repository_ids: set[int] = field(default_factory=set)
    #: repositories where a lock in force protects one of its backups or copies
    locked_repository_ids: set[int] = field(default_factory=set)
    #: backups and copies that failed verification (or are bad)
    errors: int = 0


class FleetStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def vm_names(self) -> list[str]:
        """Every VM with a chain (one DISTINCT on the listing index)."""
        query = select(Chain.vm_name).distinct().order_by(Chain.vm_name)
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def holdings(self, vms: Sequence[str] | None = None) -> dict[str, VmHoldings]:
        """Each VM's holdings (``vms``: only these; None: all), in three queries."""
        wanted = set(vms) if vms is not None else None
        narrow = wanted is not None and len(wanted) <= IN_LIST_MAX
        found: dict[str, VmHoldings] = {vm: VmHoldings() for vm in wanted or ()}

        def holding(vm: str) -> VmHoldings | None:
            if wanted is not None and vm not in wanted:
                return None
            return found.setdefault(vm, VmHoldings())

        def only(query: Any) -> Any:
            return query.where(Chain.vm_name.in_(sorted(wanted or ()))) if narrow else query

        with self.catalog.session() as session:
            for vm, repo_id, complete, errors in session.execute(only(self._backups_query())):
                entry = holding(vm)
                if entry is not None:
                    if complete:
                        entry.repository_ids.add(repo_id)
                    entry.errors += int(errors or 0)
            for vm, repo_id, done, errors in session.execute(only(self._copies_query())):
                entry = holding(vm)
                if entry is not None:
                    if done:
                        entry.repository_ids.add(repo_id)
                    entry.errors += int(errors or 0)
            for query in self._lock_queries():
                for vm, repo_id in session.execute(only(query)):
                    entry = holding(vm)
                    if entry is not None:
                        entry.locked_repository_ids.add(repo_id)
        return found

    @staticmethod
    def _backups_query() -> Any:
        """Per VM and repository: complete restore points, and bad ones."""
        bad = (Backup.state == BackupState.BAD) | Backup.verify_state.in_(BAD_VERIFY)
        return (
            select(
                Chain.vm_name,
                Chain.repository_id,
                func.sum(case((Backup.state == BackupState.COMPLETE, 1), else_=0)),
                func.sum(case((bad, 1), else_=0)),
            )
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Backup.state.in_(LIVE_STATES))
            .group_by(Chain.vm_name, Chain.repository_id)
        )

    @staticmethod
    def _copies_query() -> Any:
        """Per VM and destination: completed copies of its restore points, bad ones."""
        return (
            select(
                Chain.vm_name,
                Copy.destination_repository_id,
                func.sum(case((Copy.state == COPY_DONE, 1), else_=0)),
                func.sum(case((Copy.verify_state.in_(BAD_VERIFY), 1), else_=0)),
            )
            .join(Backup, Copy.backup_id == Backup.id)
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Backup.state.in_(LIVE_STATES))
            .group_by(Chain.vm_name, Copy.destination_repository_id)
        )

    @staticmethod
    def _lock_queries() -> list[Any]:
        """(VM, repository) where a lock in force holds one of its restore points, or
        one of its completed copies."""
        on_points = (
            select(Chain.vm_name, ImmutabilityLock.repository_id)
            .join(Backup, ImmutabilityLock.backup_id == Backup.id)
            .join(Chain, Backup.chain_id == Chain.id)
            .where(ImmutabilityLock.state.in_(LOCK_IN_FORCE), Backup.state.in_(LIVE_STATES))
            .distinct()
        )
        on_copies = (
            select(Chain.vm_name, ImmutabilityLock.repository_id)
            .join(Copy, ImmutabilityLock.copy_id == Copy.id)
            .join(Backup, Copy.backup_id == Backup.id)
            .join(Chain, Backup.chain_id == Chain.id)
            .where(
                ImmutabilityLock.state.in_(LOCK_IN_FORCE),
                Copy.state == COPY_DONE,
                Backup.state.in_(LIVE_STATES),
            )
            .distinct()
        )
        return [on_points, on_copies]
