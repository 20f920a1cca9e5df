"""Initial schema: tables, functions, triggers and views.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Frozen: 0001_initial_schema.sql beside this file is, byte for byte, the
sql/schema.sql and sql/views.sql this revision shipped with (commit 6c37f4f).
It never changes again; every later schema change is a new revision, a delta
on top of it, and tests/test_migrations.py checks that the revisions together
build exactly what sql/schema.sql builds today.
"""

from alembic import op

from angela_queue.migrations import apply_revision_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_revision_sql("0001_initial_schema.sql")


# Drops everything in the schema except Alembic's own version table, which
# lives there too: DROP SCHEMA ... CASCADE took it along, and Alembic's
# closing "DELETE FROM angela_queue.alembic_version" then failed, so
# `downgrade base` could never succeed. Objects are found in the catalog, not
# listed here, so the list cannot drift from schema.sql. Names (not regclass
# values) are captured up front: a CASCADE may drop a later entry first.
DROP_ALL_BUT_VERSION_TABLE = """
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.relname, c.relkind FROM pg_class c
             WHERE c.relnamespace = 'angela_queue'::regnamespace
               AND c.relkind IN ('v', 'm') ORDER BY c.relname LOOP
        EXECUTE format('DROP %s IF EXISTS angela_queue.%I CASCADE',
                       CASE r.relkind WHEN 'v' THEN 'VIEW' ELSE 'MATERIALIZED VIEW' END, r.relname);
    END LOOP;
    FOR r IN SELECT c.relname FROM pg_class c
             WHERE c.relnamespace = 'angela_queue'::regnamespace
               AND c.relkind IN ('r', 'p') AND c.relname <> 'alembic_version' ORDER BY c.relname LOOP
        EXECUTE format('DROP TABLE IF EXISTS angela_queue.%I CASCADE', r.relname);
    END LOOP;
    FOR r IN SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args FROM pg_proc p
             WHERE p.pronamespace = 'angela_queue'::regnamespace ORDER BY p.proname LOOP
        EXECUTE format('DROP ROUTINE IF EXISTS angela_queue.%I(%s) CASCADE', r.proname, r.args);
    END LOOP;
END
$$;
"""


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DROP_ALL_BUT_VERSION_TABLE)
