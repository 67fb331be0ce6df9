"""The audit log: append and query."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select

from engine.catalog.db import Catalog, count_rows
from engine.catalog.models import AuditEntry
from engine.states import AUDIT_LEVELS

LEVELS = AUDIT_LEVELS


class AuditStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def append(
        self,
        *,
        at: datetime,
        level: str,
        source: str,
        kind: str,
        message: str,
        repository_id: int | None = None,
        job_id: int | None = None,
        actor: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> AuditEntry:
        entry = AuditEntry(
            at=at,
            level=level,
            source=source[:64],
            kind=kind[:96],
            message=message,
            repository_id=repository_id,
            job_id=job_id,
            actor=actor,
            data=data or {},
        )
        with self.catalog.session() as session:
            session.add(entry)
            session.flush()
        return entry

    def query(
        self,
        *,
        min_level: str | None = None,
        levels: Sequence[str] | None = None,
        source: str | None = None,
        text: str | None = None,
        since: datetime | None = None,
        after_id: int | None = None,
        before_id: int | None = None,
        job_id: int | None = None,
        limit: int = 500,
    ) -> list[AuditEntry]:
        """Newest first. ``min_level`` keeps that level and the more severe ones;
        ``after_id``/``before_id``: only entries newer/older than that one (a page of
        the listing starts below the last id the previous page showed)."""
        query = self._filtered(
            select(AuditEntry),
            min_level=min_level,
            levels=levels,
            source=source,
            text=text,
            since=since,
            after_id=after_id,
            before_id=before_id,
            job_id=job_id,
        )
        query = query.order_by(AuditEntry.id.desc()).limit(limit)
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def count(
        self,
        *,
        min_level: str | None = None,
        source: str | None = None,
        text: str | None = None,
        before_id: int | None = None,
        job_id: int | None = None,
        at_most: int | None = None,
    ) -> int:
        """How many entries ``query`` with these filters would list without a limit
        (counting stops at ``at_most``)."""
        query = self._filtered(
            select(AuditEntry.id),
            min_level=min_level,
            source=source,
            text=text,
            before_id=before_id,
            job_id=job_id,
        )
        with self.catalog.session() as session:
            return int(session.scalar(count_rows(query, at_most=at_most)) or 0)

    @staticmethod
    def _filtered(
        query: Any,
        *,
        min_level: str | None = None,
        levels: Sequence[str] | None = None,
        source: str | None = None,
        text: str | None = None,
        since: datetime | None = None,
        after_id: int | None = None,
        before_id: int | None = None,
        job_id: int | None = None,
    ) -> Any:
        if min_level:
            query = query.where(AuditEntry.level.in_(LEVELS[LEVELS.index(min_level) :]))
        if levels:
            query = query.where(AuditEntry.level.in_(levels))
        if source:
            query = query.where(AuditEntry.source == source)
        if text:
            pattern = f"%{text}%"
            query = query.where(
                or_(AuditEntry.message.like(pattern), AuditEntry.kind.like(pattern))
            )
        if since:
            query = query.where(AuditEntry.at >= since)
        if after_id:
            query = query.where(AuditEntry.id > after_id)
        if before_id is not None:
            query = query.where(AuditEntry.id < before_id)
        if job_id is not None:
            query = query.where(AuditEntry.job_id == job_id)
        return query
