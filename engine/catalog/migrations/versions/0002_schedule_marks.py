"""schedule marks: scheduled copy rules, the verify schedule and raised alerts

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engine.catalog.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedule_marks",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("due_at", engine.catalog.models.UTCDateTime(), nullable=True),
        sa.Column("level", sa.String(length=16), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("updated_at", engine.catalog.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("schedule_marks")
