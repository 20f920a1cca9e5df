"""Durability per queue: 'durable' (the default) or 'fast'.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

angela_queue.queues.durability, and angela_queue.commit_fast: the client's
own enqueues into a fast queue, and workers serving only fast queues, commit
with synchronous_commit = off. Frozen: the SQL beside this file never changes
once shipped.
"""

from alembic import op

from angela_queue.migrations import apply_revision_sql, apply_role_sql, revision_sql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0010_durability.sql")
    apply_role_sql(op.get_bind().connection.driver_connection, revision_sql("0010_roles.sql"))


def downgrade() -> None:
    apply_revision_sql("0010_durability.down.sql")
