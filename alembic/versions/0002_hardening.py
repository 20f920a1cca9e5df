"""Hardening: no row, setting or rule can wedge a queue.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Validated, readable times (finite, 1900-9999; created_at set by the
trigger), finite timeouts, bounded rates, grace and boosts; aging and
deadlines counted from greatest(run_at, created_at); an index for
retention by finished_at; workers record the kinds they serve. Rows the new
rules would refuse are repaired first (see the SQL), so nothing stored is
lost. Frozen: the SQL beside this file never changes once shipped.
"""

from angela_queue.migrations import apply_revision_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0002_hardening.sql")


def downgrade() -> None:
    apply_revision_sql("0002_hardening.down.sql")
