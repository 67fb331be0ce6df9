"""indexes for the listings and reports at fleet scale (issue 16)

Every filter and sort the CLI, the API and the reports use at 100,000 restore
points: chains in listing order (VM, disk, id), a chain's points in order, jobs by
state or kind newest first, the audit log by source or level newest first.

Revision ID: listing_indexes
Revises: notifications
"""

from __future__ import annotations

from alembic import op

revision = "listing_indexes"
down_revision = "notifications"
branch_labels = None
depends_on = None

#: (name, table, columns), the same as engine/catalog/models.py declares
INDEXES = (
    ("ix_chains_listing", "chains", ["vm_name", "disk_name", "id"]),
    ("ix_backups_chain_position", "backups", ["chain_id", "position"]),
    ("ix_jobs_state_id", "jobs", ["state", "id"]),
    ("ix_jobs_kind_id", "jobs", ["kind", "id"]),
    ("ix_audit_log_source_id", "audit_log", ["source", "id"]),
    ("ix_audit_log_level_id", "audit_log", ["level", "id"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _columns in reversed(INDEXES):
        op.drop_index(name, table_name=table)
