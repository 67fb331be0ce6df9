"""The audit log: append and query."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select

from engine.catalog.db import Catalog
from engine.catalog.models import AuditEntry

LEVELS = ("debug", "info", "warning", "error", "critical")


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
        job_id: int | None = None,
        limit: int = 500,
    ) -> list[AuditEntry]:
        """Newest first. ``min_level`` keeps that level and the more severe ones."""
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
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
        if job_id is not None:
            query = query.where(AuditEntry.job_id == job_id)
        with self.catalog.session() as session:
            return list(session.scalars(query))
