"""Whether the catalog changed since a screen last read it, at the cost of a few
index lookups (``ChangeStore.mark``): a console left open re-reads a 100,000-point
catalog only when something moved, not at every refresh tick."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from engine.catalog.db import Catalog
from engine.catalog.jobs import ACTIVE_STATES
from engine.catalog.models import (
    AuditEntry,
    Backup,
    CapacitySample,
    Chain,
    Copy,
    ImmutabilityLock,
    Job,
    NbdExport,
    RestoreMount,
)


class ChangeStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def mark(self) -> tuple[Any, ...]:
        """Numbers that move whenever the catalog changes in a way a screen shows:
        the newest audit event (every engine event is recorded there: a point
        verified, deleted or locked, a repository added), the newest row of each
        listed table, and the jobs in flight with their progress. Equal marks: no
        need to read the screen's data again (a screen still reads now and then,
        for what changes without an event, such as the time)."""
        newest = [
            select(func.max(table.id)).scalar_subquery()
            for table in (
                AuditEntry,
                Job,
                Backup,
                Chain,
                Copy,
                ImmutabilityLock,
                RestoreMount,
                NbdExport,
                CapacitySample,
            )
        ]
        active = Job.state.in_(list(ACTIVE_STATES))
        flight = [
            select(func.count(Job.id)).where(active).scalar_subquery(),
            select(func.coalesce(func.sum(Job.bytes_done), 0)).where(active).scalar_subquery(),
        ]
        with self.catalog.session() as session:
            row = session.execute(select(*newest, *flight)).one()
        return tuple(row)
