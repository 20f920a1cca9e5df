"""Bulk enqueue: the insert trigger's work done set-based for a whole list.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

angela_queue.enqueue_many(tasks jsonb, trace_context jsonb) builds complete
rows for many tasks in two statements (defaults, queues, boosts, bound and
checks as the insert trigger gives them), and the trigger now fires only
for an INSERT that leaves enqueued_by unset: a producer's grant on tasks no
longer names that column. Frozen: the SQL beside this file never changes
once shipped.
"""

from alembic import op

from angela_queue.migrations import apply_revision_sql, apply_role_sql, revision_sql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0012_bulk_enqueue.sql")
    apply_role_sql(op.get_bind().connection.driver_connection, revision_sql("0012_roles.sql"))


def downgrade() -> None:
    apply_revision_sql("0012_bulk_enqueue.down.sql")
