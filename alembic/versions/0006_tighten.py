"""Tighten: fixes from the review of least privilege and operate.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A new task's worker-owned columns belong to the insert trigger; failed_at
is range-checked and a waiting task keeps an attempt left (rows that break
either are repaired first); cancel_task locks only the caller's own rows;
find_unfinished_task hides another login's task; the SECURITY DEFINER
functions are not executable by PUBLIC; retries respect the queue bound;
pause_queue refuses an unknown queue; purge_tasks takes a limit; the
attempt history cuts each error. Frozen: the SQL beside this file never
changes once shipped.
"""

from angela_queue.migrations import apply_revision_sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0006_tighten.sql")


def downgrade() -> None:
    apply_revision_sql("0006_tighten.down.sql")
