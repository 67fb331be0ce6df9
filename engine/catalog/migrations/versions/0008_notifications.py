"""notification rules and their deliveries

Revision ID: notifications
Revises: tracking
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engine.catalog.models

revision = "notifications"
down_revision = "api_tokens"  # chained after api-core when merged into webconsole
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("min_level", sa.String(length=16), nullable=True),
        sa.Column("levels", sa.JSON(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("target", sa.String(length=16), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("dedup_minutes", sa.Integer(), nullable=False),
        sa.Column("max_per_hour", sa.Integer(), nullable=True),
        sa.Column("digest_at", sa.String(length=5), nullable=True),
        sa.Column("digest_sent_for", engine.catalog.models.UTCDateTime(), nullable=True),
        sa.Column("created_at", engine.catalog.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", engine.catalog.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "notification_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.JSON(), nullable=False),
        sa.Column("kind", sa.String(length=96), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("folded_into", sa.Integer(), nullable=True),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("created_at", engine.catalog.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", engine.catalog.models.UTCDateTime(), nullable=False),
        sa.Column("next_attempt_at", engine.catalog.models.UTCDateTime(), nullable=True),
        sa.Column("sent_at", engine.catalog.models.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["rule_id"], ["notification_rules.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("notification_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notification_deliveries_rule_id"), ["rule_id"], unique=False
        )
        batch_op.create_index(
            "ix_notification_deliveries_rule_time", ["rule_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_notification_deliveries_state_due", ["state", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    op.drop_table("notification_deliveries")
    op.drop_table("notification_rules")
