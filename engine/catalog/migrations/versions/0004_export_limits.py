"""NBD export limits and TLS: idle timeout, maximum age, last activity, why it ended

Revision ID: exportlimits
Revises: lock_clock
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engine.catalog.models

revision = "exportlimits"
down_revision = "lock_clock"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nbd_exports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tls", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("idle_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("last_active_at", engine.catalog.models.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("expires_at", engine.catalog.models.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(sa.Column("stop_reason", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nbd_exports", schema=None) as batch_op:
        batch_op.drop_column("stop_reason")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("last_active_at")
        batch_op.drop_column("idle_seconds")
        batch_op.drop_column("tls")
