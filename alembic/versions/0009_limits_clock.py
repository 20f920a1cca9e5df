"""Limits on the clock: a rate limit's window counted at the claim's lock.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

angela_queue.claim_room counts and prunes a rate-limited kind's window by
clock_timestamp() (the claim stamps its starts with it too), not by now(),
the start of the claim's transaction. Frozen: the SQL beside this file never
changes once shipped.
"""


from angela_queue.migrations import apply_revision_sql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0009_limits_clock.sql")


def downgrade() -> None:
    apply_revision_sql("0009_limits_clock.down.sql")
