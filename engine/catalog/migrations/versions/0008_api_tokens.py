"""HTTP API tokens: name, role, and a digest of the secret (never the secret)

Revision ID: api_tokens
Revises: tracking
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engine.catalog.models

revision = "api_tokens"
down_revision = "tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", engine.catalog.models.UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        sa.Column("expires_at", engine.catalog.models.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", engine.catalog.models.UTCDateTime(), nullable=True),
        sa.Column("last_used_at", engine.catalog.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("prefix"),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
