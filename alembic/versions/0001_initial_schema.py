"""Initial schema: tables, functions, triggers and views from sql/.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

This baseline applies the canonical sql/schema.sql and sql/views.sql. When
the schema next changes, that change lands as revision 0002 (a delta) and
this baseline is frozen to the text it applied, so existing databases and new
ones end up identical (tests/migrations checks it).
"""

from alembic import op

from angela_queue.queries import schema_ddl

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Straight to psycopg with no parameters, so the text goes to Postgres as
    # is: no bind-parameter or %-placeholder parsing of the PL/pgSQL bodies.
    # Same connection, same transaction as the rest of the upgrade.
    op.get_bind().connection.driver_connection.execute(schema_ddl())


def downgrade() -> None:
    op.execute("DROP SCHEMA angela_queue CASCADE")
