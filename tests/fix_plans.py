"""Query-plan checks: the hot statements must walk their indexes, never sort the queue."""

from __future__ import annotations

import uuid

import psycopg
import psycopg.rows
import psycopg.sql

from angela_queue import statements


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


def explain_generic(conn: psycopg.Connection, text: str, params: dict) -> dict:
    """The generic plan of a statement: what the worker's hot connection runs
    (db.HOT_PATH_SETTINGS: plan_cache_mode = force_generic_plan), prepared as
    psycopg prepares it. Plain EXPLAIN with parameters plans them as known
    values (a custom plan), which is not the plan that runs there."""
    from psycopg._queries import PostgresQuery
    from psycopg.adapt import Transformer
    name = f"aq_plan_{uuid.uuid4().hex[:8]}".encode()
    query = PostgresQuery(Transformer(conn))
    query.convert(text, params)
    conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        prepared = conn.pgconn.prepare(name, query.query, query.types)
        assert prepared.status == psycopg.pq.ExecStatus.COMMAND_OK, prepared.error_message
        # EXECUTE takes no protocol parameters: its arguments as literals,
        # in the $n order psycopg gave them.
        args = psycopg.sql.SQL(", ").join(psycopg.sql.Literal(params[key]) for key in query._order or [])
        explain = psycopg.sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE {}({})").format(
            psycopg.sql.Identifier(name.decode()), args)
        with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
            return cur.execute(explain).fetchone()[0][0]["Plan"]
    finally:
        conn.execute(f"DEALLOCATE {name.decode()}")
        conn.execute("RESET plan_cache_mode")


def assert_claim_walks_its_index(conn: psycopg.Connection, *, unlimited: bool = False) -> None:
    """EXPLAIN the claim on ``conn`` (whatever role it is) and check how it reads the queue.

    The queue is read in CTE "candidates" (the walk per queue for unlimited
    kinds, and per queue for each limited kind with room) and probed in CTE
    "limited" (the skip scan for the limited kinds present): every read of
    tasks there must walk tasks_claim_idx in order and stop at a LIMIT. The
    merge (CTE "picked") sorts only those few rows, never the queue itself.
    ``unlimited``: the same of tasks_claim_unlimited, which has no CTE
    "limited" (nor "room").
    """
    statement = statements.claim(worker_id=uuid.uuid4(), queues=["default"], limit=10, unlimited=unlimited)
    with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        cur.execute("EXPLAIN (FORMAT JSON) " + statement.text, statement.params)
        custom = cur.fetchone()[0][0]["Plan"]
    # Both: the generic plan is what the worker runs; the custom one what a
    # connection left to plan_cache_mode = auto may run.
    for plan in (explain_generic(conn, statement.text, statement.params), custom):
        _assert_claim_plan_walks_its_index(plan, unlimited)


def _assert_walks_claim_index(name: str, node: dict) -> None:
    nodes = plan_nodes(node)
    scans = [n for n in nodes if n.get("Relation Name") == "tasks"]
    assert scans, (name, [n["Node Type"] for n in nodes])
    assert {(n["Node Type"], n.get("Index Name")) for n in scans} <= {
        ("Index Scan", "tasks_claim_idx"), ("Index Only Scan", "tasks_claim_idx")}, (
        name, [(n["Node Type"], n.get("Index Name")) for n in scans])
    assert has_limit_above_scan(node), name
    for sort in (n for n in nodes if n["Node Type"] == "Sort"):
        assert has_limit_above_scan(sort), sort


def _assert_claim_plan_walks_its_index(plan: dict, unlimited: bool) -> None:
    ctes = {n.get("Subplan Name"): n for n in plan_nodes(plan) if n.get("Subplan Name", "").startswith("CTE ")}
    if unlimited:
        assert {"CTE candidates", "CTE picked"} <= set(ctes) and "CTE limited" not in ctes, list(ctes)
        walks = ("CTE candidates",)
    else:
        assert {"CTE limited", "CTE room", "CTE candidates", "CTE picked"} <= set(ctes), list(ctes)
        # CTE room reads tasks only for the running count of a capped kind,
        # through the index of limited running rows (a few, whatever the
        # backlog; tasks_running_idx would read every running task).
        assert {(n["Node Type"], n.get("Index Name")) for n in plan_nodes(ctes["CTE room"])
                if n.get("Relation Name") == "tasks"} <= {
            (scan, "tasks_limited_running_idx") for scan in ("Index Scan", "Index Only Scan")}
        walks = ("CTE limited", "CTE candidates")
    for name in walks:
        _assert_walks_claim_index(name, ctes[name])
    picked = plan_nodes(ctes["CTE picked"])
    assert not [n for n in picked if n.get("Relation Name") == "tasks"], "the merge must not read the queue"
