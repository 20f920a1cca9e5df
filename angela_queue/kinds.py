"""angela_queue.kinds: each registered kind's @task defaults, recorded where
every producer's insert can find them (the insert trigger applies them to a
column an insert leaves unset).

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


def record(conn: psycopg.Connection, updated_by: str) -> list[str]:
    """Record every registered kind's defaults; returns the kinds whose row changed."""
    return [r["kind"] for r in db.fetch_all(conn, "kinds_record", _params(updated_by))]


async def arecord(conn: psycopg.AsyncConnection, updated_by: str) -> list[str]:
    return [r["kind"] for r in await db.afetch_all(conn, "kinds_record", _params(updated_by))]


def recorded(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every recorded kind and its defaults, by kind."""
    return db.fetch_all(conn, "kinds_list")
