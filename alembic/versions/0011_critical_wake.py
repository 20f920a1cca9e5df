"""Critical wake-up: a second NOTIFY channel for critical inserts.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

The insert trigger also sends 'angela_queue_critical' (payload: the queue)
when a statement queues a task of priority >= 9, so a worker whose every
ordinary slot is busy claims it into its critical slot at once, without
probing the queue on every other insert. Frozen: the SQL beside this file
never changes once shipped.
"""

from angela_queue.migrations import apply_revision_sql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0011_critical_wake.sql")


def downgrade() -> None:
    apply_revision_sql("0011_critical_wake.down.sql")
