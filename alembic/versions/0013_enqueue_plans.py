"""Enqueue plans: angela_queue.enqueue_many plans once per session and does
less per task; angela_queue.commit_fast goes (the client tests durability
inline).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03

enqueue_many runs its statements with generic plans only (they were planned
again at every call), counts each bounded queue's room once, ranks only
bounded queues' tasks, and reads the enabled boost rules once per call.
What a task gets is unchanged. Frozen: the SQL beside this file never
changes once shipped.
"""

from angela_queue.migrations import apply_revision_sql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0013_enqueue_plans.sql")


def downgrade() -> None:
    apply_revision_sql("0013_enqueue_plans.down.sql")
