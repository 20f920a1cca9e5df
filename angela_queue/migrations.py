"""Schema migrations: ``angela-queue migrate`` upgrades to head with Alembic.

The Alembic scripts ship inside the package (the top-level alembic/ folder is
mapped to ``angela_queue.alembic``), so an installed wheel migrates without
the source checkout.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import psycopg
import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from .db import describe_dsn, first_line
from .errors import DatabaseUnavailable, SchemaMismatch


# pg_advisory_xact_lock key: two `migrate` runs at once take turns (the
# second then finds the schema at head and does nothing), and so do their
# grants (two GRANTs on one object at once fail: "tuple concurrently updated").
MIGRATION_LOCK_KEY = 0x616E67656C61  # "angela"


def script_location() -> Path:
    """Where the Alembic scripts are: inside the installed package, or, for an
    editable install (which cannot map a folder without __init__.py), in the
    checkout beside the package. alembic/ has no __init__.py on purpose: in a
    checkout it would shadow the alembic library itself."""
    try:
        package = importlib.import_module("angela_queue.alembic")
        return Path(next(iter(package.__path__)))
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parent.parent / "alembic"
        if (checkout / "env.py").is_file():
            return checkout
        raise


def revision_sql(filename: str) -> str:
    """The text of a frozen SQL file beside the revisions (alembic/versions/)."""
    return (script_location() / "versions" / filename).read_text(encoding="utf-8")


def apply_revision_sql(filename: str) -> None:
    """Run one of those files inside the running migration's transaction.

    Straight to psycopg with no parameters, so the text goes to Postgres as
    is: no bind-parameter or %-placeholder parsing of the PL/pgSQL bodies.
    """
    from alembic import op
    op.get_bind().connection.driver_connection.execute(revision_sql(filename))


def apply_role_sql(conn, text: str) -> bool:
    """Create and grant the group roles as far as this login may (see roles.py)."""
    from .roles import apply_role_sql as apply
    return apply(conn, text)


def grant_roles(dsn: str) -> bool:
    """At head: create and grant the roles again (roles a DBA created after the
    schema get their grants), under the migration lock. Needs the owner."""
    from . import db
    from .roles import roles_sql
    with db.connect(dsn, application_name="angela-queue-migrate") as conn, conn.transaction():
        db.fetch_all(conn, "admin_migration_lock", {"key": MIGRATION_LOCK_KEY})
        return apply_role_sql(conn, roles_sql())


def alembic_config(dsn: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["dsn"] = dsn
    return cfg


def upgrade(dsn: str, revision: str = "head") -> str | None:
    """Bring the schema up to ``revision``; safe to run from several processes at once.

    A database at a revision this code does not know (a newer angela-queue
    migrated it) is refused with SchemaMismatch, not Alembic's traceback.
    """
    _check_reachable(dsn)
    found = current_revision(dsn)
    if found is not None and found not in known_revisions():
        from .schema import SCHEMA_REVISION
        raise SchemaMismatch(
            f"{describe_dsn(dsn)} has schema revision {found}, newer than this angela-queue knows "
            f"(its newest is {SCHEMA_REVISION}): upgrade angela-queue to migrate it")
    try:
        with _quiet_alembic_logs():
            command.upgrade(alembic_config(dsn), revision)
    except sqlalchemy.exc.DBAPIError as exc:
        # Alembic runs on SQLAlchemy, which wraps the database's error; hand
        # back psycopg's own (the CLI prints it as one line, not a traceback,
        # and callers need not know SQLAlchemy is inside).
        if isinstance(exc.orig, psycopg.Error):
            raise exc.orig from exc
        raise
    return current_revision(dsn)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def known_revisions() -> list[str]:
    """Every revision shipped with this code, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(""))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def current_revision(dsn: str) -> str | None:
    """The revision the database's schema is at; None if it has none yet."""
    from . import db, schema
    with db.connect(dsn, application_name="angela-queue-migrate") as conn:
        return schema.current(conn)


def _check_reachable(dsn: str) -> None:
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {describe_dsn(dsn)}: {first_line(exc)}") from exc


@contextlib.contextmanager
def _quiet_alembic_logs():
    """Alembic logs each step at INFO through the root logger; keep the CLI readable."""
    import logging
    logger = logging.getLogger("alembic")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)

