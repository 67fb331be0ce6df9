"""Chains and their backups (restore points): the rows behind backup, restore and consolidation.

Rows are handed back detached (the session closes); their attributes stay loaded.
A chain lives in its own directory under the repository root; its backups are
ordered by ``position`` (the full is the lowest live position, usually 0).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, func, or_, select, update

from engine.catalog.db import IN_BATCH, Catalog, count_rows, in_batches, rows_changed
from engine.catalog.locks import HOLDING_STATES
from engine.catalog.models import Backup, Chain, Copy, ImmutabilityLock, MergeIntent, Repository
from engine.errors import Action, CatalogError, NotFoundError
from engine.states import BackupKind, BackupState, ChainState

#: backup states that are restore points (files that should exist)
LIVE_STATES = (BackupState.COMPLETE, BackupState.BAD)
#: merge intent steps a restart has to settle (finish or roll back)
OPEN_INTENT_STEPS = ("started", "converted", "recorded")
#: lock states that forbid changing or deleting a file
LOCKING_STATES = HOLDING_STATES
#: chains read at once while a page of restore points is gathered
CHAIN_BATCH = 50

#: a chain's place in listings: VM, disk, chain id (the ix_chains_listing index)
ChainKey = tuple[str, str, int]
#: a restore point's place in listings: its chain's key and its position
PointKey = tuple[str, str, int, int]


def _after_chain(key: ChainKey, *, inclusive: bool = False) -> Any:
    """Chains after ``key`` in listing order (and that chain itself if ``inclusive``).
    The leading ``vm_name >=`` lets both backends seek the index instead of scanning
    it from the start."""
    vm, disk, chain_id = key
    last = Chain.id >= chain_id if inclusive else Chain.id > chain_id
    return and_(
        Chain.vm_name >= vm,
        or_(
            Chain.vm_name > vm,
            and_(Chain.vm_name == vm, Chain.disk_name > disk),
            and_(Chain.vm_name == vm, Chain.disk_name == disk, last),
        ),
    )


class RetentionPoint(NamedTuple):
    """What a retention plan needs of a complete restore point (``retention_points``;
    a tuple: a plan over 1,000 disks makes 100,000 of them)."""

    id: int
    chain_id: int
    position: int
    kind: str
    point_time: datetime
    path: str
    vm_name: str
    disk_name: str


def chain_key(chain: Chain) -> ChainKey:
    return (chain.vm_name, chain.disk_name, chain.id)


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
                    action=Action("list_chains", "the list of chains shows them"),
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
                Chain.state != ChainState.RETIRED,
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
                    action=Action("list_points", "the list of restore points shows them"),
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
                    action=Action("list_points", "the list of restore points shows them"),
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

    def backups_by_chain(
        self, *, repository_id: int | None = None, include_deleted: bool = False
    ) -> dict[int, list[Backup]]:
        """Every chain's backups in chain order, in one query (an overview of a thousand
        chains is one round trip, not a thousand)."""
        query = select(Backup)
        if repository_id is not None:
            query = query.join(Chain, Backup.chain_id == Chain.id).where(
                Chain.repository_id == repository_id
            )
        if not include_deleted:
            query = query.where(Backup.state.in_(LIVE_STATES))
        query = query.order_by(Backup.chain_id, Backup.position, Backup.id)
        found: dict[int, list[Backup]] = {}
        with self.catalog.session() as session:
            for backup in session.scalars(query):
                found.setdefault(backup.chain_id, []).append(backup)
        return found

    def backups_of_vms(self, vm_names: Sequence[str]) -> dict[int, list[Backup]]:
        """``backups_by_chain`` for the live points of a few VMs only (the Chains tree
        loads a VM's points when it is opened)."""
        query = (
            select(Backup)
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Chain.vm_name.in_(list(vm_names)), Backup.state.in_(LIVE_STATES))
            .order_by(Backup.chain_id, Backup.position, Backup.id)
        )
        found: dict[int, list[Backup]] = {}
        with self.catalog.session() as session:
            for backup in session.scalars(query):
                found.setdefault(backup.chain_id, []).append(backup)
        return found

    def point_totals_by_vm(self) -> dict[str, tuple[int, int, datetime | None]]:
        """VM -> (live points, bytes in their files, newest point time), summed in SQL."""
        query = (
            select(
                Chain.vm_name,
                func.count(Backup.id),
                func.coalesce(func.sum(Backup.file_size), 0),
                func.max(Backup.point_time),
            )
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Backup.state.in_(LIVE_STATES))
            .group_by(Chain.vm_name)
        )
        with self.catalog.session() as session:
            return {
                vm: (int(count), int(size), newest)
                for vm, count, size, newest in session.execute(query)
            }

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

    # -- pages (keyset, in listing order) ------------------------------------------

    @staticmethod
    def _chain_filters(
        query: Any,
        repository_id: int | None,
        vm_name: str | None,
        include_retired: bool = True,
        chain_id: int | None = None,
    ) -> Any:
        if repository_id is not None:
            query = query.where(Chain.repository_id == repository_id)
        if vm_name is not None:
            query = query.where(Chain.vm_name == vm_name)
        if not include_retired:
            query = query.where(Chain.state != ChainState.RETIRED)
        if chain_id is not None:
            query = query.where(Chain.id == chain_id)
        return query

    def chain_page(
        self,
        *,
        after: ChainKey | None,
        limit: int,
        repository_id: int | None = None,
        vm_name: str | None = None,
        include_retired: bool = True,
        chain_id: int | None = None,
    ) -> list[Chain]:
        """Up to ``limit`` chains after ``after`` in listing order (VM, disk, id)."""
        query = self._chain_filters(
            select(Chain), repository_id, vm_name, include_retired, chain_id
        )
        if after is not None:
            query = query.where(_after_chain(after))
        query = query.order_by(Chain.vm_name, Chain.disk_name, Chain.id).limit(limit)
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def count_chains(
        self,
        *,
        after: ChainKey | None,
        repository_id: int | None = None,
        vm_name: str | None = None,
        include_retired: bool = True,
        chain_id: int | None = None,
        at_most: int | None = None,
    ) -> int:
        """How many chains ``chain_page`` has left after ``after`` (counting stops at
        ``at_most``)."""
        query = self._chain_filters(
            select(Chain.id), repository_id, vm_name, include_retired, chain_id
        )
        if after is not None:
            query = query.where(_after_chain(after))
        with self.catalog.session() as session:
            return int(session.scalar(count_rows(query, at_most=at_most)) or 0)

    def live_backups_of(self, chain_ids: Sequence[int]) -> dict[int, list[Backup]]:
        """The live backups of these chains (a page's), each chain's in chain order."""
        found: dict[int, list[Backup]] = {cid: [] for cid in chain_ids}
        if not chain_ids:
            return found
        with self.catalog.session() as session:
            for batch in in_batches(chain_ids):
                query = (
                    select(Backup)
                    .where(Backup.chain_id.in_(batch), Backup.state.in_(LIVE_STATES))
                    .order_by(Backup.chain_id, Backup.position, Backup.id)
                )
                for backup in session.scalars(query):
                    found[backup.chain_id].append(backup)
        return found

    def retention_points(self, repository_id: int, vm_names: Sequence[str]) -> list[RetentionPoint]:
        """Every complete point of these VMs' chains in one repository, oldest chain
        first and each chain in chain order: what a retention plan of a policy reads, in
        one query per ``IN_BATCH`` VMs instead of two per disk (columns, not mapped rows:
        a plan over 1,000 disks reads 100,000 of them)."""
        query = (
            select(
                Backup.id,
                Backup.chain_id,
                Backup.position,
                Backup.kind,
                Backup.point_time,
                Backup.path,
                Chain.vm_name,
                Chain.disk_name,
            )
            .join(Chain, Backup.chain_id == Chain.id)
            .where(Chain.repository_id == repository_id, Backup.state == BackupState.COMPLETE)
        )
        found: list[RetentionPoint] = []
        with self.catalog.session() as session:
            for names in in_batches(vm_names):
                batch = query.where(Chain.vm_name.in_(names))
                found.extend(RetentionPoint._make(row) for row in session.execute(batch))
        found.sort(key=lambda p: (p.chain_id, p.position, p.id))
        return found

    def point_page(
        self,
        *,
        after: PointKey | None,
        limit: int,
        repository_id: int | None = None,
        vm_name: str | None = None,
    ) -> list[tuple[Backup, Chain]]:
        """Up to ``limit`` live restore points after ``after`` in listing order (VM,
        disk, chain, position): chains are walked in index order a batch at a time
        and each one's points read by (chain, position), so a page reads about the
        rows it shows whatever the catalog's size, on SQLite and MariaDB alike."""
        found: list[tuple[Backup, Chain]] = []
        key: ChainKey | None = after[:3] if after is not None else None
        position = after[3] if after is not None else None
        with self.catalog.session() as session:
            while len(found) < limit:
                query = self._chain_filters(select(Chain), repository_id, vm_name)
                if key is not None:
                    query = query.where(_after_chain(key, inclusive=position is not None))
                query = query.order_by(Chain.vm_name, Chain.disk_name, Chain.id)
                chains = list(session.scalars(query.limit(CHAIN_BATCH)))
                for chain in chains:
                    points = select(Backup).where(
                        Backup.chain_id == chain.id, Backup.state.in_(LIVE_STATES)
                    )
                    if position is not None and key is not None and chain.id == key[2]:
                        points = points.where(Backup.position > position)
                    points = points.order_by(Backup.position, Backup.id)
                    rows = session.scalars(points.limit(limit - len(found)))
                    found.extend((b, chain) for b in rows)
                    if len(found) >= limit:
                        break
                if len(chains) < CHAIN_BATCH:
                    break
                key, position = chain_key(chains[-1]), None
        return found

    def count_points(
        self,
        *,
        after: PointKey | None,
        repository_id: int | None = None,
        vm_name: str | None = None,
        at_most: int | None = None,
    ) -> int:
        """How many live restore points ``point_page`` has left after ``after``
        (counting stops at ``at_most``)."""
        query = self._chain_filters(
            select(Backup.id).join(Chain, Backup.chain_id == Chain.id),
            repository_id,
            vm_name,
        ).where(Backup.state.in_(LIVE_STATES))
        if after is not None:
            query = query.where(
                or_(
                    _after_chain(after[:3]),
                    and_(Chain.id == after[2], Backup.position > after[3]),
                )
            )
        with self.catalog.session() as session:
            return int(session.scalar(count_rows(query, at_most=at_most)) or 0)

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
                if old is not None and old.state != ChainState.RETIRED:
                    old.state = ChainState.RETIRED
                    old.state_detail = retire_detail or old.state_detail
            chain = Chain(
                repository_id=repository_id,
                vm_name=vm_name,
                disk_name=disk_name,
                directory=directory,
                state=ChainState.OK,
                created_at=now,
            )
            session.add(chain)
            session.flush()
            row = Backup(
                chain_id=chain.id,
                parent_id=None,
                kind=BackupKind.FULL,
                position=0,
                created_at=now,
                **backup,
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
                kind=BackupKind.INCREMENTAL,
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
                state=ChainState.OK,
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
        """In one transaction, however many (a retention pass marks thousands)."""
        ids = list(backup_ids)
        if not ids:
            return
        with self.catalog.session() as session:
            for batch in in_batches(ids):
                session.execute(
                    update(Backup)
                    .where(Backup.id.in_(batch))
                    .values(state=BackupState.DELETED, state_detail=detail)
                    .execution_options(synchronize_session=False)
                )

    def retire_chains(self, chain_ids: Iterable[int], detail: str) -> None:
        """Chains whose points are all gone, in one transaction."""
        with self.catalog.session() as session:
            for batch in in_batches(list(chain_ids)):
                session.execute(
                    update(Chain)
                    .where(Chain.id.in_(batch))
                    .values(state=ChainState.RETIRED, state_detail=detail)
                    .execution_options(synchronize_session=False)
                )

    def backups_by_id(self, backup_ids: Sequence[int]) -> dict[int, Backup]:
        found: dict[int, Backup] = {}
        with self.catalog.session() as session:
            for batch in in_batches(backup_ids):
                found.update(
                    (b.id, b) for b in session.scalars(select(Backup).where(Backup.id.in_(batch)))
                )
        return found

    def chains_by_id(self, chain_ids: Sequence[int]) -> dict[int, Chain]:
        found: dict[int, Chain] = {}
        with self.catalog.session() as session:
            for batch in in_batches(chain_ids):
                found.update(
                    (c.id, c) for c in session.scalars(select(Chain).where(Chain.id.in_(batch)))
                )
        return found

    def promote_to_full(
        self,
        *,
        backup_id: int,
        path: str,
        fields: dict[str, Any],
        deleted_ids: Iterable[int],
        detail: str,
        other_updates: dict[int, dict[str, Any]] | None = None,
        intent_id: int | None = None,
        intent_owner: str | None = None,
        now: datetime | None = None,
    ) -> Backup:
        """Consolidation's catalog step, in one transaction: ``backup_id`` becomes the
        chain's full (file ``path``), the points merged into it are marked deleted, and
        the merge intent ``intent_id`` (when given) moves to "recorded" (refused with
        nothing changed when ``intent_owner`` no longer holds it).

        Copies of the target made before the merge still hold the incremental they
        copied: they keep their own lineage (``Copy.parent_copy_id``, filled in here
        where a copy predates that column), so they verify as what they are."""
        deleted = list(deleted_ids)
        with self.catalog.session() as session:
            intent = session.get(MergeIntent, intent_id) if intent_id is not None else None
            if intent is not None and intent_owner is not None and intent.owner != intent_owner:
                raise CatalogError(
                    f"merge intent {intent_id} is held by {intent.owner}, not {intent_owner}"
                )
            target = session.get(Backup, backup_id)
            if target is None:
                raise NotFoundError(f"restore point {backup_id} does not exist")
            old_parent = target.parent_id
            if old_parent is not None:
                for copy in session.scalars(
                    select(Copy).where(Copy.backup_id == backup_id, Copy.parent_copy_id.is_(None))
                ):
                    copy.parent_copy_id = session.scalar(
                        select(Copy.id)
                        .where(
                            Copy.backup_id == old_parent,
                            Copy.destination_repository_id == copy.destination_repository_id,
                            Copy.state == "completed",
                        )
                        .order_by(Copy.id.desc())
                        .limit(1)
                    )
            for row in session.scalars(select(Backup).where(Backup.id.in_(deleted))):
                row.state = BackupState.DELETED
                row.state_detail = detail
            target.kind = BackupKind.FULL
            target.parent_id = None
            target.path = path
            for key, value in fields.items():
                setattr(target, key, value)
            for other_id, updates in (other_updates or {}).items():
                other = session.get(Backup, other_id)
                if other is not None:
                    for key, value in updates.items():
                        setattr(other, key, value)
            if intent is not None:
                intent.step = "recorded"
                if now is not None:
                    intent.updated_at = now
            return target

    # -- merge intents -----------------------------------------------------------

    def add_intent(
        self,
        *,
        chain_id: int,
        target_id: int,
        merged_ids: Sequence[int],
        partial_name: str,
        old_checksum: str | None,
        owner: str,
        now: datetime,
    ) -> MergeIntent:
        with self.catalog.session() as session:
            row = MergeIntent(
                chain_id=chain_id,
                target_id=target_id,
                merged_ids=list(merged_ids),
                partial_name=partial_name,
                old_checksum=old_checksum,
                step="started",
                owner=owner,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return row

    def get_intent(self, intent_id: int) -> MergeIntent:
        with self.catalog.session() as session:
            row = session.get(MergeIntent, intent_id)
            if row is None:
                raise NotFoundError(f"merge intent {intent_id} does not exist")
            return row

    def open_intents(self, chain_id: int | None = None) -> list[MergeIntent]:
        """Merges not finished nor rolled back (oldest first)."""
        query = select(MergeIntent).where(MergeIntent.step.in_(OPEN_INTENT_STEPS))
        if chain_id is not None:
            query = query.where(MergeIntent.chain_id == chain_id)
        with self.catalog.session() as session:
            return list(session.scalars(query.order_by(MergeIntent.id)))

    def update_intent(self, intent_id: int, owner: str, now: datetime, **fields: Any) -> bool:
        """Move an intent on (a step, its result, or just the heartbeat), only while
        ``owner`` holds it; False when another engine took it over."""
        with self.catalog.session() as session:
            result = session.execute(
                update(MergeIntent)
                .where(MergeIntent.id == intent_id, MergeIntent.owner == owner)
                .values(updated_at=now, **fields)
                .execution_options(synchronize_session=False)
            )
            return bool(rows_changed(result) == 1)

    def take_over_intent(
        self, intent_id: int, old_owner: str, seen_at: datetime, new_owner: str, now: datetime
    ) -> bool:
        """Claim an abandoned intent (compare-and-set on owner and heartbeat): of two
        engines settling the same crashed merge, exactly one wins."""
        with self.catalog.session() as session:
            result = session.execute(
                update(MergeIntent)
                .where(
                    MergeIntent.id == intent_id,
                    MergeIntent.owner == old_owner,
                    MergeIntent.updated_at == seen_at,
                    MergeIntent.step.in_(OPEN_INTENT_STEPS),
                )
                .values(owner=new_owner, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return bool(rows_changed(result) == 1)

    # -- locks -------------------------------------------------------------------

    def active_locks(
        self, backup_ids: Iterable[int], now: datetime, *, paths: Iterable[str] = ()
    ) -> list[ImmutabilityLock]:
        """Locks holding these backups (by id, or by repository-relative path).

        A lock holds until the lock job has released it, even after its expiry: only
        the release checks that the clock can be trusted (``now`` is kept for callers
        that word the reason)."""
        ids = list(backup_ids)
        path_list = list(paths)
        if len(ids) > IN_BATCH and not path_list:
            # a retention pass asks about thousands of points: in batches
            found: list[ImmutabilityLock] = []
            for batch in in_batches(ids):
                found += self.active_locks(batch, now)
            return found
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
            return list(session.scalars(query))

    def holding_locks_of(self, chain_ids: Sequence[int]) -> dict[int, ImmutabilityLock]:
        """``lock_counts`` for the live backups of these chains only (a page's badges):
        selected by the page's few chain ids, not by thousands of point ids."""
        if not chain_ids:
            return {}
        query = (
            select(ImmutabilityLock)
            .join(Backup, Backup.id == ImmutabilityLock.backup_id)
            .where(
                Backup.chain_id.in_(list(chain_ids)),
                Backup.state.in_(LIVE_STATES),
                ImmutabilityLock.state.in_(LOCKING_STATES),
                ImmutabilityLock.copy_id.is_(None),
            )
            .order_by(ImmutabilityLock.expires_at, ImmutabilityLock.id)
        )
        found: dict[int, ImmutabilityLock] = {}
        with self.catalog.session() as session:
            for row in session.scalars(query):
                if row.backup_id is not None:
                    found[row.backup_id] = row
        return found

    def lock_counts(self, now: datetime) -> dict[int, ImmutabilityLock]:
        """The holding lock per backup id (for badges), the latest expiry if several."""
        query = (
            select(ImmutabilityLock)
            .where(
                ImmutabilityLock.state.in_(LOCKING_STATES),
                ImmutabilityLock.backup_id.is_not(None),
                ImmutabilityLock.copy_id.is_(None),
            )
            .order_by(ImmutabilityLock.expires_at, ImmutabilityLock.id)
        )
        with self.catalog.session() as session:
            rows = list(session.scalars(query))
        found: dict[int, ImmutabilityLock] = {}
        for row in rows:
            if row.backup_id is not None:
                found[row.backup_id] = row
        return found
