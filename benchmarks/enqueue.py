"""Enqueue rate: ``Client.enqueue`` one task per transaction, and
``Client.enqueue_many`` in bulk; plain psycopg INSERTs of the same rows
beside them, for the floor (the insert trigger runs either way). No worker
runs meanwhile."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from angela_queue import Client

from . import app
from .harness import BenchDB, percentile

BULK_CHUNK = 1000

PLAIN_INSERT = "INSERT INTO angela_queue.tasks (kind, payload) VALUES (%s, %s::jsonb)"
PLAIN_INSERT_MANY = ("INSERT INTO angela_queue.tasks (kind, payload) "
                     "SELECT %s, p FROM unnest(%s::jsonb[]) AS p")


def _rate(label: str, method: str, n: int, seconds: float, per_call_ms: list[float] | None = None
          ) -> dict[str, Any]:
    out: dict[str, Any] = {"label": label, "method": method, "n": n, "seconds": seconds,
                           "tps": n / seconds if seconds > 0 else None}
    if per_call_ms:
        out["call_ms_p50"] = percentile(per_call_ms, 50)
        out["call_ms_p99"] = percentile(per_call_ms, 99)
    return out


def run_enqueue(db: BenchDB, single_n: int, bulk_n: int) -> list[dict[str, Any]]:
    results = []
    with Client(db.dsn, pool_size=1) as client:
        # Client.enqueue, one transaction each.
        db.reset()
        client.enqueue(app.NOOP, {})  # warm: pool connection, prepared statement
        calls = []
        began = time.perf_counter()
        for i in range(single_n):
            t = time.perf_counter()
            client.enqueue(app.NOOP, {"i": i})
            calls.append((time.perf_counter() - t) * 1000)
        results.append(_rate("Client.enqueue", "one per transaction", single_n,
                             time.perf_counter() - began, calls))

        # Client.enqueue_many, BULK_CHUNK per call (one statement, one transaction).
        db.reset()
        client.enqueue_many([{"kind": app.NOOP, "payload": {}}])
        calls = []
        began = time.perf_counter()
        for start in range(0, bulk_n, BULK_CHUNK):
            chunk = [{"kind": app.NOOP, "payload": {"i": i}} for i in range(start, min(bulk_n, start + BULK_CHUNK))]
            t = time.perf_counter()
            client.enqueue_many(chunk)
            calls.append((time.perf_counter() - t) * 1000)
        results.append(_rate("Client.enqueue_many", f"bulk, {BULK_CHUNK} per call", bulk_n,
                             time.perf_counter() - began, calls))

    with psycopg.connect(db.dsn, autocommit=True, prepare_threshold=0) as conn:
        db.reset()
        cur = conn.cursor()
        cur.execute(PLAIN_INSERT, (app.NOOP, "{}"), prepare=True)
        began = time.perf_counter()
        for i in range(single_n):
            cur.execute(PLAIN_INSERT, (app.NOOP, f'{{"i": {i}}}'), prepare=True)
        results.append(_rate("plain INSERT (ref)", "one per transaction", single_n, time.perf_counter() - began))

        db.reset()
        began = time.perf_counter()
        for start in range(0, bulk_n, BULK_CHUNK):
            payloads = [f'{{"i": {i}}}' for i in range(start, min(bulk_n, start + BULK_CHUNK))]
            cur.execute(PLAIN_INSERT_MANY, (app.NOOP, payloads), prepare=True)
        results.append(_rate("plain INSERT..unnest (ref)", f"bulk, {BULK_CHUNK} per statement", bulk_n,
                             time.perf_counter() - began))
    db.reset()
    return results
