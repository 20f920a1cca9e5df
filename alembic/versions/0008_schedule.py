"""Schedule: global concurrency caps and rate limits per kind; periodic tasks.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

kinds.concurrency and kinds.rate_limit/rate_period_s are enforced inside the
claim (angela_queue.claim_room locks a limited kind's row and counts its
running tasks and its starts in a sliding window, angela_queue.kind_starts).
tasks.limited sorts limited kinds' tasks apart in the claim index, so the
walk for every other kind never reads a capped backlog. angela_queue.periodic
holds the tasks the maintenance leader enqueues on a schedule, each slot
once. Frozen: the SQL beside this file never changes once shipped.
"""

from alembic import op

from angela_queue.migrations import apply_revision_sql, apply_role_sql, revision_sql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0008_schedule.sql")
    apply_role_sql(op.get_bind().connection.driver_connection, revision_sql("0008_roles.sql"))


def downgrade() -> None:
    apply_revision_sql("0008_schedule.down.sql")
