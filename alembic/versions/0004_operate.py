"""Operate: retry, cancel running tasks, pause and resume, purge; attempt history; operator views.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

SQL functions are the one implementation of each operation (retry_task,
retry_tasks, cancel_task for running tasks too, pause_queue, resume_queue,
purge_tasks); every reclaim goes through reclaim_tasks; failed attempts
keep a history (tasks.errors, failed_at); queues can be paused
(queues.paused_at); the views tier_sla, throughput, recent_failures and
kind_stats. Also the hardening review's bounds (kind, queue and dedup_key
lengths, attempts, finished rows carry finished_at), with the rows they
would refuse repaired first. Frozen: the SQL beside this file never changes
once shipped.
"""

from alembic import op

from angela_queue.migrations import apply_revision_sql, apply_role_sql, revision_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0004_operate.sql")
    apply_role_sql(op.get_bind().connection.driver_connection, revision_sql("0004_roles.sql"))


def downgrade() -> None:
    apply_revision_sql("0004_operate.down.sql")
