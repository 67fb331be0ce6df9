"""one writer per disk: the disk_writers lease table; jobs remember takeovers and actor

Revision ID: writers
Revises: merge_intents
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engine.catalog.models

revision = "writers"
down_revision = "merge_intents"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "disk_writers",
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("vm_name", sa.String(length=128), nullable=False),
        sa.Column("disk_name", sa.String(length=128), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=True),
        sa.Column("operation", sa.String(length=32), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=True),
        sa.Column("acquired_at", engine.catalog.models.UTCDateTime(), nullable=True),
        sa.Column("expires_at", engine.catalog.models.UTCDateTime(), nullable=True),
        sa.Column("output", sa.String(length=1024), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["repository_id"], ["repositories.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("repository_id", "vm_name", "disk_name"),
    )
    with op.batch_alter_table("disk_writers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_disk_writers_job_id"), ["job_id"], unique=False)
    # existing jobs were never taken over; the default only fills them in
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("takeovers", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("actor", sa.String(length=128), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("takeovers", existing_type=sa.Integer(), server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("actor")
        batch_op.drop_column("takeovers")
    with op.batch_alter_table("disk_writers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_disk_writers_job_id"))
    op.drop_table("disk_writers")
