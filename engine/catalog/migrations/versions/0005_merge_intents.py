"""merge intents (crash-safe consolidation) and the lineage of copies

Revision ID: merge_intents
Revises: exportlimits
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engine.catalog.models

revision = "merge_intents"
down_revision = "exportlimits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "merge_intents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("merged_ids", sa.JSON(), nullable=False),
        sa.Column("partial_name", sa.String(length=255), nullable=False),
        sa.Column("old_checksum", sa.String(length=128), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("created_at", engine.catalog.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", engine.catalog.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["chain_id"], ["chains.id"]),
        sa.ForeignKeyConstraint(["target_id"], ["backups.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("merge_intents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_merge_intents_chain_id"), ["chain_id"], unique=False)

    with op.batch_alter_table("copies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_copy_id", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_copies_parent_copy_id"), ["parent_copy_id"], unique=False
        )
        batch_op.create_foreign_key(
            "fk_copies_parent_copy_id", "copies", ["parent_copy_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("copies", schema=None) as batch_op:
        batch_op.drop_constraint("fk_copies_parent_copy_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_copies_parent_copy_id"))
        batch_op.drop_column("parent_copy_id")
    with op.batch_alter_table("merge_intents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_merge_intents_chain_id"))
    op.drop_table("merge_intents")
