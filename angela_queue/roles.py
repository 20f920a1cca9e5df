"""The group roles (angela_queue_producer, _worker, _reader) and their grants.

``sql/roles.sql`` holds them as plain SQL in two parts: creating the roles
(cluster-wide; needs CREATEROLE) and granting to them (per database; needs
the schema's owner). ``angela-queue roles --sql`` prints it for a DBA;
``migrate`` applies it itself as far as its login may (``apply_role_sql``).
"""

from __future__ import annotations

import logging
import re

import psycopg

from . import db
from .queries import sql_text

log = logging.getLogger("angela_queue.migrations")

ROLES = ("angela_queue_producer", "angela_queue_worker", "angela_queue_reader")
_PART_RE = re.compile(r"^-- part: (\w+)\s*$", re.MULTILINE)


def roles_sql() -> str:
    """The canonical roles and grants (sql/roles.sql), as a DBA runs them."""
    return sql_text("roles.sql")


def split_parts(text: str) -> dict[str, str]:
    """{"create_roles": ..., "grants": ...} from a roles file."""
    marks = list(_PART_RE.finditer(text))
    return {m.group(1): text[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip()
            for i, m in enumerate(marks)}


def _statements(part: str) -> list[str]:
    body = "\n".join(line for line in part.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def may_create_roles(conn: psycopg.Connection) -> bool:
    row = db.fetch_one(conn, "admin_may_create_roles")
    return bool(row and row["may"])


def missing_roles(conn: psycopg.Connection) -> list[str]:
    present = {r["role"] for r in db.fetch_all(conn, "admin_existing_roles", {"roles": list(ROLES)})}
    return [r for r in ROLES if r not in present]


def apply_role_sql(conn: psycopg.Connection, text: str) -> bool:
    """Create the roles if this login may (existing ones are kept), then grant
    to them if they all exist. Returns whether the grants were applied.

    Hazard: roles are cluster-wide and migrations of two databases do not
    share a lock, so a role may appear between the check and the CREATE;
    each CREATE runs in a savepoint and a duplicate is fine.
    """
    parts = split_parts(text)
    if may_create_roles(conn):
        for statement in _statements(parts.get("create_roles", "")):
            try:
                with conn.transaction():
                    db.execute_script(conn, statement)
            except psycopg.errors.DuplicateObject:
                pass
    missing = missing_roles(conn)
    if missing:
        log.info("roles %s do not exist and this login may not create them: the schema works for its "
                    "owner, but give `angela-queue roles --sql` to a DBA to set up least privilege",
                    ", ".join(missing))
        return False
    db.execute_script(conn, parts.get("grants", ""))
    return True
