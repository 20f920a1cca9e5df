"""The per-minute history the leader keeps (stats_minute, depth_minute): real
tasks through the real claim and outcome statements, then the rollup."""

from __future__ import annotations

import datetime as dt
import uuid

from angela_queue import db
from angela_queue.maintenance import history
from angela_queue import statements as st

W = uuid.UUID("00000000-0000-0000-0000-000000000001")


def this_minute(conn) -> dt.datetime:
    return conn.execute("SELECT date_trunc('minute', now()) AS m").fetchone()["m"]


def roll_this_minute(conn) -> list[dict]:
    lo = this_minute(conn)
    db.fetch_all(conn, "stats_rollup", {"since": lo, "until": lo + dt.timedelta(minutes=1)})
    return conn.execute("SELECT * FROM angela_queue.stats_minute ORDER BY tier, kind").fetchall()


def claim(conn, limit=10):
    return db.fetch_all(conn, st.claim(worker_id=W, queues=["default"], limit=limit))


def test_a_minute_of_work_is_rolled_up_per_tier_and_kind(conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('mail', 9), ('mail', 9), ('report', 2)")
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority, max_attempts) VALUES ('flaky', 6, 2)")
    rows = claim(conn)
    by_kind = {r["kind"]: r["id"] for r in rows}
    mails = [r["id"] for r in rows if r["kind"] == "mail"]
    outcomes = ",".join(f'{{"id":{i},"result":null,"finished_at":{dt.datetime.now().timestamp()}}}' for i in mails)
    db.fetch_all(conn, st.complete_many(worker_id=W, outcomes_json=f"[{outcomes}]"))
    now = dt.datetime.now(dt.timezone.utc)
    db.fetch_all(conn, st.fail_many(worker_id=W, ids=[by_kind["flaky"], by_kind["report"]], errors=["boom", "bad"],
                                    retry_in_s=[60.0, None], failed_ats=[now, now]))
    stats = {(r["tier"], r["kind"]): r for r in roll_this_minute(conn)}
    mail = stats[("critical", "mail")]
    assert (mail["enqueued"], mail["started"], mail["succeeded"], mail["failed"]) == (2, 2, 2, 0)
    assert mail["on_time"] == 2 and mail["wait_p95_ms"] is not None and mail["run_p50_ms"] is not None
    assert sum(mail["wait_buckets"]) == 2 and sum(mail["run_buckets"]) == 2
    assert len(mail["wait_buckets"]) == 16
    flaky = stats[("medium", "flaky")]
    assert (flaky["started"], flaky["retried"], flaky["failed"]) == (1, 1, 0)
    report = stats[("low", "report")]
    assert (report["started"], report["failed"], report["retried"]) == (1, 1, 0)


def test_the_rollup_is_idempotent_and_forgets_what_is_gone(conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a'), ('b')")
    first = roll_this_minute(conn)
    assert roll_this_minute(conn) == first
    conn.execute("DELETE FROM angela_queue.tasks WHERE kind = 'b'")
    assert [r["kind"] for r in roll_this_minute(conn)] == ["a"]


def test_the_leader_pass_writes_progress_depth_and_prunes_old_history(conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('a', 7)")
    conn.execute("INSERT INTO angela_queue.stats_minute (minute, queue, tier, kind, enqueued) "
                 "VALUES (now() - interval '8 days', 'default', 'low', 'old', 1)")
    history.History(rollup_every_s=0).run(conn)
    assert conn.execute("SELECT rolled_until FROM angela_queue.stats_progress").fetchone()["rolled_until"] \
        == this_minute(conn)
    depth = conn.execute("SELECT tier, queued FROM angela_queue.depth_minute").fetchall()
    assert depth == [{"tier": "high", "queued": 1}]
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.stats_minute WHERE kind = 'old'").fetchone()["n"] == 0


def test_a_returning_leader_catches_up_at_most_the_backfill(conn):
    conn.execute("INSERT INTO angela_queue.stats_progress (rolled_until) VALUES (now() - interval '3 days')")
    minutes = history.roll_up(conn, backfill_s=600)
    assert minutes == 10
