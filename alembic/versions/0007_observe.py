"""Observe: per-minute history kept by the leader; trace context on tasks.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

angela_queue.stats_minute and depth_minute hold per-minute rollups (counts,
percentiles and histogram buckets of waits and run times, depth per tier)
that the maintenance leader writes and keeps 7 days; the dashboard's charts
and /metrics read them. A BRIN index on tasks.created_at lets the rollup
count enqueues without costing inserts. tasks.trace_context carries the
producer's W3C trace context to the handler's span. Frozen: the SQL beside
this file never changes once shipped.
"""

from alembic import op

from angela_queue.migrations import apply_revision_sql, apply_role_sql, revision_sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0007_observe.sql")
    apply_role_sql(op.get_bind().connection.driver_connection, revision_sql("0007_roles.sql"))


def downgrade() -> None:
    apply_revision_sql("0007_observe.down.sql")
