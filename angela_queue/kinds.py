"""angela_queue.kinds: each registered kind's @task defaults and limits,
recorded where every producer's insert and every claim can find them (the
insert trigger applies the defaults to a column an insert leaves unset; the
claim enforces the limits); and angela_queue.periodic: the schedules of the
periodic kinds, which the maintenance leader enqueues.

Workers record their kinds when they start; ``angela-queue kinds sync --app
MODULE`` does it from a deploy step, before any worker runs the new code.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from . import db
from .registry import registered_definitions


def _params(updated_by: str) -> dict[str, Any]:
    return {"kinds": json.dumps([d.kind_row() for d in registered_definitions()]), "updated_by": updated_by}


def _periodic_statements() -> list[tuple[str, dict[str, Any]]]:
    """Record this app's schedules, and forget the ones it no longer declares
    for its own kinds (another app's kinds are not this code's to judge)."""
    definitions = registered_definitions()
    rows = [row for d in definitions if (row := d.periodic_row()) is not None]
    statements = [("periodic_record", {"rows": json.dumps(rows)})] if rows else []
    statements.append(("periodic_forget", {"kinds": [d.kind for d in definitions],
                                           "names": [r["name"] for r in rows]}))
    return statements


def record(conn: psycopg.Connection, updated_by: str) -> list[str]:
    """Record every registered kind's defaults and limits, and the schedules of the
    periodic ones; returns the kinds whose row changed."""
    changed = [r["kind"] for r in db.fetch_all(conn, "kinds_record", _params(updated_by))]
    for name, params in _periodic_statements():
        db.fetch_all(conn, name, params)
    return changed


async def arecord(conn: psycopg.AsyncConnection, updated_by: str) -> list[str]:
    changed = [r["kind"] for r in await db.afetch_all(conn, "kinds_record", _params(updated_by))]
    for name, params in _periodic_statements():
        await db.afetch_all(conn, name, params)
    return changed


def recorded(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every recorded kind and its defaults, by kind."""
    return db.fetch_all(conn, "kinds_list")


_PER = {1: "s", 60: "m", 3600: "h"}


def describe_limits(row: dict) -> str:
    """``2 at once, 100/m``, or ``-`` for a kind without limits."""
    parts = []
    if row.get("concurrency") is not None:
        parts.append(f"{row['concurrency']} at once")
    if row.get("rate_limit") is not None:
        parts.append(f"{row['rate_limit']}/{_PER.get(row['rate_period_s'], str(row['rate_period_s']) + 's')}")
    return ", ".join(parts) or "-"
