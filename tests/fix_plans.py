"""Query-plan checks: the hot statements must walk their indexes, never sort the queue."""

from __future__ import annotations

import uuid

import psycopg

from angela_queue import queries


def plan_nodes(plan: dict) -> list[dict]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


def has_limit_above_scan(node: dict) -> bool:
    """True if every path from node down to a tasks scan passes through a Limit."""
    if node["Node Type"] == "Limit":
        return True
    if node["Node Type"] in ("Index Scan", "Index Only Scan", "Seq Scan", "Bitmap Heap Scan"):
        return node.get("Relation Name") != "tasks"   # a probe of another table is not the queue
    return all(has_limit_above_scan(child) for child in node.get("Plans", []))


def assert_claim_walks_its_index(conn: psycopg.Connection) -> None:
    """EXPLAIN the claim on ``conn`` (whatever role it is) and check its pick.

    The pick (CTE "picked") is where the queue is read: it must walk the
    index in order and stop at the LIMIT. Its only sort merges the <= limit
    rows taken per queue, above a Limit, never the queue itself.
    """
    with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        cur.execute("EXPLAIN (FORMAT JSON) " + queries.query("tasks_claim"),
                    {"queues": ["default"], "limit": 10, "worker_id": uuid.uuid4(), "min_effective": None,
                     "batch_below": 0})
        plan = cur.fetchone()[0][0]["Plan"]
    picked = [n for n in plan_nodes(plan) if n.get("Subplan Name") == "CTE picked"]
    assert len(picked) == 1, plan
    nodes = plan_nodes(picked[0])
    kinds = [n["Node Type"] for n in nodes]
    assert "Seq Scan" not in kinds and "Bitmap Heap Scan" not in kinds, kinds
    scans = [n for n in nodes if n.get("Relation Name") == "tasks"]
    assert [(n["Node Type"], n.get("Index Name")) for n in scans] == [("Index Scan", "tasks_claim_idx")], kinds
    for sort in (n for n in nodes if n["Node Type"] == "Sort"):
        assert has_limit_above_scan(sort), sort
