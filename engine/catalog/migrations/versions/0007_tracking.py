"""changed-block incrementals: each point records how its changes were found

Revision ID: tracking
Revises: writers
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "tracking"
down_revision = "writers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("backups") as batch:
        batch.add_column(sa.Column("tracking", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backups") as batch:
        batch.drop_column("tracking")
