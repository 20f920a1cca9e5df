"""Least privilege: producer, worker and reader roles; producers see only their own tasks.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

The insert trigger runs as the owner (SECURITY DEFINER, pinned
search_path), so a login that may only INSERT into tasks can enqueue;
row-level security shows a producer only the tasks it enqueued (the new
enqueued_by column); the dedup lookup and cancel are SECURITY DEFINER
functions. The three group roles are created when the migrating login may
create roles, and granted to when they exist (else `angela-queue roles
--sql` prints the SQL for a DBA). Frozen: the SQL beside this file never
changes once shipped.
"""

from alembic import op

from angela_queue.migrations import apply_revision_sql, apply_role_sql, revision_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0003_least_privilege.sql")
    apply_role_sql(op.get_bind().connection.driver_connection, revision_sql("0003_roles.sql"))


def downgrade() -> None:
    apply_revision_sql("0003_least_privilege.down.sql")
