"""claim_room under generic plans: its count of a capped kind's running
tasks names limited_kind <> '' too, so a generic plan walks
tasks_limited_running_idx instead of every running task.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03

Frozen: the SQL beside this file never changes once shipped.
"""

from angela_queue.migrations import apply_revision_sql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0014_claim_room_generic.sql")


def downgrade() -> None:
    apply_revision_sql("0014_claim_room_generic.down.sql")
