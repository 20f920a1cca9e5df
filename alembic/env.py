"""Alembic environment for angela-queue.

Run through ``angela-queue migrate`` (angela_queue.migrations), which passes
the DSN in ``config.attributes["dsn"]``. Migrations are plain SQL deltas; no
models, no autogenerate.
"""

from alembic import context
from sqlalchemy import create_engine, pool, text

import psycopg

from angela_queue.migrations import MIGRATION_LOCK_KEY

SCHEMA = "angela_queue"


def run_migrations_online() -> None:
    dsn = context.config.attributes["dsn"]
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn),
                           poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        # The version table lives in our schema, which must exist before
        # Alembic looks for it.
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        context.configure(connection=connection, version_table_schema=SCHEMA,
                          transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
        # SQLAlchemy 2 autobegan the transaction with the lock; commit it.
        connection.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("angela-queue migrations run online only: use `angela-queue migrate`")
run_migrations_online()
