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
from .errors import DatabaseUnavailable


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


def alembic_config(dsn: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["dsn"] = dsn
    return cfg


def upgrade(dsn: str, revision: str = "head") -> str | None:
    """Bring the schema up to ``revision``; safe to run from several processes at once."""
    _check_reachable(dsn)
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


def current_revision(dsn: str) -> str | None:
    from . import db
    with db.connect(dsn, application_name="angela-queue-migrate") as conn:
        if not db.fetch_one(conn, "admin_has_version_table")["present"]:
            return None
        row = db.fetch_one(conn, "admin_current_revision")
        return row["revision"] if row else None


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

