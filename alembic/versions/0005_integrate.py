"""Integrate: @task defaults reach every producer; finished tasks are announced.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

angela_queue.kinds records each registered kind's defaults (queue,
priority, max_attempts, timeout, backoff, batch) and queues gain their own
defaults; the insert trigger fills a column an insert leaves unset from the
kind, then the queue, then the global default, so a raw SQL insert gets what
the @task decorator says. notify_done sends one NOTIFY per statement that
finishes tasks, which Client.wait listens for. Frozen: the SQL beside this
file never changes once shipped.
"""

from alembic import op

from angela_queue.migrations import apply_revision_sql, apply_role_sql, revision_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0005_integrate.sql")
    apply_role_sql(op.get_bind().connection.driver_connection, revision_sql("0005_roles.sql"))


def downgrade() -> None:
    apply_revision_sql("0005_integrate.down.sql")
