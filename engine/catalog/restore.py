"""Rows for file-level restore and NBD exports, and the restore-point lookups they need."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, func, or_, select, update

from engine.catalog.chains import ChainStore
from engine.catalog.db import Catalog, in_batches, rows_changed
from engine.catalog.models import Backup, Chain, NbdExport, Repository, RestoreMount
from engine.catalog.refs import find_by_ref
from engine.errors import Action, NotFoundError

#: mount rows in these states hold (or may hold) kernel mounts and processes
LIVE_MOUNT_STATES = ("mounting", "mounted", "unmounting", "failed")


@dataclass(frozen=True)
class PointLocation:
    """Where a restore point's QCOW2 file is, and what it is a backup of."""

    backup_id: int
    path: str
    repository: str
    vm_name: str
    disk_name: str
    kind: str
    position: int
    point_time: datetime
    state: str
    virtual_size: int

    @property
    def label(self) -> str:
        return f"{self.vm_name}/{self.disk_name} @ {self.point_time:%Y-%m-%d %H:%M} ({self.kind})"


def _location(backup: Backup, chain: Chain, repo: Repository) -> PointLocation:
    return PointLocation(
        backup_id=backup.id,
        path=os.path.join(repo.path, backup.path),
        repository=repo.name,
        vm_name=chain.vm_name,
        disk_name=chain.disk_name,
        kind=backup.kind,
        position=backup.position,
        point_time=backup.point_time,
        state=backup.state,
        virtual_size=backup.virtual_size,
    )


class RestoreStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        #: backup and chain lookups shared with the chain manager
        self.chains = ChainStore(catalog)

    # -- restore points ----------------------------------------------------------

    def locate(self, backup_id: int) -> PointLocation:
        return _location(*self.chains.locate(backup_id))

    def points(
        self, *, vm_name: str | None = None, disk_name: str | None = None
    ) -> list[PointLocation]:
        """Complete restore points, newest first (optionally for one VM / disk)."""
        query = (
            select(Backup, Chain, Repository)
            .join(Chain, Backup.chain_id == Chain.id)
            .join(Repository, Chain.repository_id == Repository.id)
            .where(Backup.state == "complete")
            .order_by(Chain.vm_name, Chain.disk_name, Backup.point_time.desc(), Backup.id.desc())
        )
        if vm_name is not None:
            query = query.where(Chain.vm_name == vm_name)
        if disk_name is not None:
            query = query.where(Chain.disk_name == disk_name)
        with self.catalog.session() as session:
            return [_location(*row) for row in session.execute(query)]

    def points_page(
        self, *, offset: int, limit: int, words: Sequence[str] = ()
    ) -> tuple[list[PointLocation], int]:
        """One page of ``points`` (same order) and how many there are in all; each of
        ``words`` must appear in the VM, the disk, the kind or the time (any case)."""
        where = [Backup.state == "complete"]
        for word in words:
            where.append(
                or_(
                    *(
                        func.lower(column).contains(word.casefold(), autoescape=True)
                        for column in (
                            Chain.vm_name,
                            Chain.disk_name,
                            Backup.kind,
                            # "2026-01-05 01:06:00.000000" on both backends: holds the
                            # time as a list shows it (YYYY-MM-DD HH:MM, UTC)
                            cast(Backup.point_time, String),
                        )
                    )
                )
            )
        query = (
            select(Backup, Chain, Repository)
            .join(Chain, Backup.chain_id == Chain.id)
            .join(Repository, Chain.repository_id == Repository.id)
            .where(*where)
            .order_by(Chain.vm_name, Chain.disk_name, Backup.point_time.desc(), Backup.id.desc())
            .offset(max(0, offset))
            .limit(limit)
        )
        count = select(func.count(Backup.id)).join(Chain, Backup.chain_id == Chain.id).where(*where)
        with self.catalog.session() as session:
            total = int(session.scalar(count) or 0)
            return [_location(*row) for row in session.execute(query)], total

    # -- mounts --------------------------------------------------------------------

    def add_mount(self, **fields: Any) -> RestoreMount:
        with self.catalog.session() as session:
            row = RestoreMount(**fields)
            session.add(row)
            session.flush()
            return row

    def get_mount(self, mount_id: int) -> RestoreMount:
        with self.catalog.session() as session:
            row = session.get(RestoreMount, mount_id)
            if row is None:
                raise NotFoundError(
                    f"restore mount {mount_id} does not exist (it may have expired)",
                    action=Action("mount_restore", "mount the restore point again"),
                )
            return row

    def update_mount(self, mount_id: int, **fields: Any) -> RestoreMount:
        with self.catalog.session() as session:
            row = session.get(RestoreMount, mount_id)
            if row is None:
                raise NotFoundError(f"restore mount {mount_id} does not exist")
            for key, value in fields.items():
                if not hasattr(RestoreMount, key):
                    raise AttributeError(key)
                setattr(row, key, value)
            return row

    def delete_mount(self, mount_id: int) -> None:
        with self.catalog.session() as session:
            row = session.get(RestoreMount, mount_id)
            if row is not None:
                session.delete(row)

    def anything_live(self) -> bool:
        """Whether any restore mount is live or any NBD export running (anywhere): what
        an engine's start-up clean-up would have to look at."""
        with self.catalog.session() as session:
            for query in (
                select(RestoreMount.id).where(RestoreMount.state.in_(LIVE_MOUNT_STATES)),
                select(NbdExport.id).where(NbdExport.state == "running"),
            ):
                if session.scalars(query.limit(1)).first() is not None:
                    return True
        return False

    def mounts(self, *, states: tuple[str, ...] = LIVE_MOUNT_STATES) -> list[RestoreMount]:
        query = select(RestoreMount).where(RestoreMount.state.in_(states))
        with self.catalog.session() as session:
            return list(session.scalars(query.order_by(RestoreMount.id)))

    def mounts_of(self, backup_id: int, *, states: tuple[str, ...]) -> list[RestoreMount]:
        query = select(RestoreMount).where(
            RestoreMount.backup_id == backup_id, RestoreMount.state.in_(states)
        )
        with self.catalog.session() as session:
            return list(session.scalars(query.order_by(RestoreMount.id)))

    def mounts_of_many(
        self, backup_ids: Sequence[int], *, states: tuple[str, ...]
    ) -> dict[int, list[RestoreMount]]:
        """``mounts_of`` for many points, in batches of ``IN_BATCH``."""
        found: dict[int, list[RestoreMount]] = {}
        with self.catalog.session() as session:
            for batch in in_batches(backup_ids):
                query = select(RestoreMount).where(
                    RestoreMount.backup_id.in_(batch), RestoreMount.state.in_(states)
                )
                for mount in session.scalars(query.order_by(RestoreMount.id)):
                    found.setdefault(mount.backup_id, []).append(mount)
        return found

    def expired_mounts(self, now: datetime) -> list[RestoreMount]:
        query = select(RestoreMount).where(
            RestoreMount.expires_at < now, RestoreMount.state.in_(LIVE_MOUNT_STATES)
        )
        with self.catalog.session() as session:
            return list(session.scalars(query.order_by(RestoreMount.id)))

    # -- exports -------------------------------------------------------------------

    def add_export(self, **fields: Any) -> NbdExport:
        with self.catalog.session() as session:
            row = NbdExport(**fields)
            session.add(row)
            session.flush()
            return row

    def get_export(self, export_id: int) -> NbdExport:
        with self.catalog.session() as session:
            row = session.get(NbdExport, export_id)
            if row is None:
                raise NotFoundError(
                    f"NBD export {export_id} does not exist",
                    action=Action("list_exports", "the list of NBD exports shows them"),
                )
            return row

    def update_export(self, export_id: int, **fields: Any) -> NbdExport:
        with self.catalog.session() as session:
            row = session.get(NbdExport, export_id)
            if row is None:
                raise NotFoundError(f"NBD export {export_id} does not exist")
            for key, value in fields.items():
                if not hasattr(NbdExport, key):
                    raise AttributeError(key)
                setattr(row, key, value)
            return row

    def end_running_export(self, export_id: int, **fields: Any) -> bool:
        """Set ``fields`` on an export only while it is still ``running`` (a compare-and-
        set): False when another engine ended it first, whose reason then stands (an
        idle export its keeper stopped is not later called dead by an engine that
        read it as running a moment before)."""
        with self.catalog.session() as session:
            done = session.execute(
                update(NbdExport)
                .where(NbdExport.id == export_id, NbdExport.state == "running")
                .values(**fields)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(done) > 0

    def exports(self, *, states: tuple[str, ...] | None = None) -> list[NbdExport]:
        query = select(NbdExport).order_by(NbdExport.id)
        if states is not None:
            query = query.where(NbdExport.state.in_(states))
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def export_by_ref(self, ref: int | str, *, name_states: tuple[str, ...]) -> NbdExport:
        """An export by name (among rows in ``name_states``: names repeat over time, the
        newest wins), else by ``#ID`` / ``ID``."""
        with self.catalog.session() as session:
            row = find_by_ref(
                session,
                NbdExport,
                ref,
                name_column=NbdExport.export_name,
                where=(NbdExport.state.in_(name_states),),
            )
            if row is None:
                raise NotFoundError(
                    f"no NBD export named {ref!r}"
                    if isinstance(ref, str)
                    else f"NBD export {ref} does not exist",
                    action=Action("list_exports", "the list of NBD exports shows them"),
                )
            return row

    def export_named(self, name: str, *, states: tuple[str, ...]) -> NbdExport | None:
        query = select(NbdExport).where(NbdExport.export_name == name, NbdExport.state.in_(states))
        with self.catalog.session() as session:
            return session.scalars(query).first()
