"""Alembic environment: the Catalog hands us an open connection."""

from __future__ import annotations

from alembic import context

from engine.catalog.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only Catalog runs migrations
    raise RuntimeError("Sendense migrations run through engine.catalog.Catalog.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
