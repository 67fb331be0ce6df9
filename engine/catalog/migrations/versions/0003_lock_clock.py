"""lock clock checks (wall clock, boot clock and boot id at each lock check) and room
for the ``failed_unprotected`` job state

Revision ID: lock_clock
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engine.catalog.models

revision = "lock_clock"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lock_clock_checks",
        sa.Column("boot_id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("anchor_wall", engine.catalog.models.UTCDateTime(), nullable=True),
        sa.Column("anchor_boot_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_wall", engine.catalog.models.UTCDateTime(), nullable=False),
        sa.Column("last_boot_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_ok", sa.Boolean(), nullable=False),
        sa.Column("last_detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("boot_id"),
    )
    # "failed_unprotected" is longer than the 16 characters the state had
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column(
            "state",
            existing_type=sa.String(length=16),
            type_=sa.String(length=32),
            existing_nullable=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column(
            "state",
            existing_type=sa.String(length=32),
            type_=sa.String(length=16),
            existing_nullable=False,
        )
    op.drop_table("lock_clock_checks")
