"""Schedule: global concurrency caps and rate limits per kind, enforced in the
claim across every worker; and periodic tasks, each slot enqueued once by the
maintenance leader."""

from __future__ import annotations

import collections
import datetime as dt
import json
import signal
import subprocess
import sys
import uuid

import psycopg
import pytest

from angela_queue import db, kinds, registry, task
from angela_queue.maintenance.periodic import Periodic
from angela_queue.periodic import Schedule, ScheduleError, slot_key
from angela_queue import statements as st
from fix_plans import assert_claim_walks_its_index
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, query, scalar, wait_until

FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.5"]
UTC = dt.timezone.utc




def claim(conn, limit: int = 10, queues=("default",)) -> list[dict]:
    return db.fetch_all(conn, st.claim(worker_id=uuid.uuid4(), queues=list(queues), limit=limit))


def enqueue(conn, kind: str, n: int, priority: int = 5) -> list[int]:
    return [r["id"] for r in conn.execute(
        "INSERT INTO angela_queue.tasks (kind, priority, payload) "
        "SELECT %s, %s, jsonb_build_object('n', g) FROM generate_series(1, %s) g RETURNING id",
        (kind, priority, n)).fetchall()]


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "angela_queue", "--dsn", dsn, *args], capture_output=True,
                          text=True, timeout=60)


# --- declaring limits and schedules ---------------------------------------------------------

def test_task_takes_limits_and_schedules_and_refuses_bad_ones(clean_registry):
    @task("capped", concurrency=2, rate="100/m")
    def capped():
        pass

    @task("tick", every=5)
    def tick():
        pass

    @task("nightly", cron="30 2 * * *", timezone="Europe/Paris")
    def nightly():
        pass

    row = capped.kind_row()
    assert (row["concurrency"], row["rate_limit"], row["rate_period_s"]) == (2, 100, 60)
    assert tick.periodic_row() == {"name": "tick", "kind": "tick", "cron": None, "every_s": 5.0, "timezone": "UTC"}
    assert nightly.periodic_row()["cron"] == "30 2 * * *" and capped.periodic_row() is None
    for bad, message in ((dict(concurrency=0), "concurrency"), (dict(concurrency=True), "concurrency"),
                         (dict(rate="5/d"), "rate"), (dict(rate="0/s"), "rate"), (dict(rate=5), "rate"),
                         (dict(cron="* * *"), "five fields"), (dict(cron="61 * * * *"), "not valid"),
                         (dict(every=0.5), "every"), (dict(every=float("inf")), "every"),
                         (dict(cron="* * * * *", every=5), "exactly one"),
                         (dict(cron="* * * * *", timezone="Mars/Olympus"), "time zone"),
                         (dict(timezone="UTC"), "timezone")):
        with pytest.raises(ValueError, match=message):
            task("bad", **bad)


def test_slots_of_cron_and_every_schedules():
    every = Schedule.parse(cron=None, every_s=60)
    now = dt.datetime(2026, 12, 2, 10, 30, 45, tzinfo=UTC)
    assert every.latest_slot(now) == dt.datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
    assert every.next_slot(now) == dt.datetime(2026, 12, 2, 10, 31, tzinfo=UTC)
    on_slot = dt.datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
    assert every.latest_slot(on_slot) == on_slot                  # a slot exactly now has come
    cron = Schedule.parse(cron="*/15 * * * *", every_s=None)
    assert cron.latest_slot(now) == on_slot and cron.next_slot(now) == dt.datetime(2026, 12, 2, 10, 45, tzinfo=UTC)
    assert cron.latest_slot(on_slot) == on_slot
    # 02:30 in Paris is 01:30 UTC in winter.
    paris = Schedule.parse(cron="30 2 * * *", every_s=None, timezone="Europe/Paris")
    assert paris.next_slot(now) == dt.datetime(2026, 12, 3, 1, 30, tzinfo=UTC)
    assert slot_key("tick", on_slot) == "periodic:tick:2026-12-02T10:30:00.000000Z"
    with pytest.raises(ScheduleError):
        Schedule.parse(cron=None, every_s=None)


def test_workers_record_limits_and_keep_a_limit_set_by_hand(conn, clean_registry):
    @task("capped", concurrency=2)
    def capped():
        pass

    @task("plain")
    def plain():
        pass

    kinds.record(conn, "test")
    row = conn.execute("SELECT concurrency, rate_limit FROM angela_queue.kinds WHERE kind = 'capped'").fetchone()
    assert row == {"concurrency": 2, "rate_limit": None}
    # An operator throttles `plain` from SQL; the next worker start keeps it.
    conn.execute("UPDATE angela_queue.kinds SET rate_limit = 10, rate_period_s = 60 WHERE kind = 'plain'")
    kinds.record(conn, "test")
    assert conn.execute("SELECT rate_limit FROM angela_queue.kinds WHERE kind = 'plain'").fetchone()["rate_limit"] == 10


def test_limits_from_sql_are_checked(conn):
    for bad in ("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('k', 0)",
                "INSERT INTO angela_queue.kinds (kind, rate_limit) VALUES ('k', 5)",
                "INSERT INTO angela_queue.kinds (kind, rate_limit, rate_period_s) VALUES ('k', 5, 7)"):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(bad)


# --- the claim -----------------------------------------------------------------------------

def test_the_claim_starts_at_most_the_cap_and_other_kinds_flow_past(conn):
    conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('capped', 2)")
    capped = enqueue(conn, "capped", 20, priority=9)          # the best tasks in the queue
    free = enqueue(conn, "free", 5, priority=2)
    first = claim(conn, limit=10)
    kinds_claimed = collections.Counter(r["kind"] for r in first)
    assert kinds_claimed == {"capped": 2, "free": 5}
    assert {r["id"] for r in first if r["kind"] == "capped"} == set(capped[:2])     # its best two
    assert claim(conn, limit=10) == []                        # capped is at its cap; free is drained
    # One capped task finishes: the next claim gets exactly one more.
    done = next(r["id"] for r in first if r["kind"] == "capped")
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() WHERE id = %s", (done,))
    assert [r["kind"] for r in claim(conn, limit=10)] == ["capped"]
    assert set(free) <= {r["id"] for r in first}


def test_the_rate_limit_is_a_sliding_window_counted_in_the_claim(conn):
    conn.execute("INSERT INTO angela_queue.kinds (kind, rate_limit, rate_period_s) VALUES ('metered', 3, 3600)")
    enqueue(conn, "metered", 10)
    assert len(claim(conn, limit=10)) == 3
    assert claim(conn, limit=10) == []                        # running or not, 3 starts is the hour's budget
    assert scalar(conn.info.dsn, "SELECT count(*) FROM angela_queue.kind_starts WHERE kind = 'metered'") == 3
    # The window slides: starts older than an hour no longer count.
    conn.execute("UPDATE angela_queue.kind_starts SET started_at = started_at - interval '2 hours'")
    assert len(claim(conn, limit=10)) == 3
    assert scalar(conn.info.dsn, "SELECT count(*) FROM angela_queue.kind_starts WHERE kind = 'metered'") == 3


def test_a_kind_gaining_or_losing_a_limit_moves_its_waiting_tasks(conn):
    ids = enqueue(conn, "later", 5)
    assert scalar(conn.info.dsn, "SELECT count(*) FROM angela_queue.tasks WHERE limited_kind = 'later'") == 0
    conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('later', 1)")
    assert scalar(conn.info.dsn, "SELECT count(*) FROM angela_queue.tasks WHERE limited_kind = 'later'") == 5
    assert len(claim(conn)) == 1
    conn.execute("UPDATE angela_queue.kinds SET concurrency = NULL WHERE kind = 'later'")
    assert scalar(conn.info.dsn, "SELECT count(*) FROM angela_queue.tasks WHERE limited_kind <> ''") == 0
    assert len(claim(conn)) == 4
    assert len(ids) == 5


def test_a_retried_task_takes_the_limits_its_kind_has_now(conn):
    [tid] = enqueue(conn, "flaky", 1)
    conn.execute("UPDATE angela_queue.tasks SET status = 'failed', attempts = 5, finished_at = now() WHERE id = %s",
                 (tid,))
    conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('flaky', 1)")
    enqueue(conn, "flaky", 1)
    assert conn.execute("SELECT * FROM angela_queue.retry_task(%s)", (tid,)).fetchone()["outcome"] == "retried"
    assert scalar(conn.info.dsn, "SELECT limited_kind FROM angela_queue.tasks WHERE id = %s", (tid,)) == "flaky"
    assert len(claim(conn)) == 1                                      # the cap holds for the retried one too


def test_the_leader_prunes_starts_that_left_every_window(conn):
    from angela_queue.maintenance import prune
    conn.execute("INSERT INTO angela_queue.kind_starts (kind, started_at) VALUES ('gone', now() - interval '2 hours'),"
                 " ('live', now())")
    assert prune(conn, 86400).counts["kind_starts"] == 1
    assert scalar(conn.info.dsn, "SELECT kind FROM angela_queue.kind_starts") == "live"


def test_a_flag_left_stale_by_an_insert_racing_a_limit_change_is_healed_by_the_claim(dsn, conn):
    """A producer's transaction open across a limit change keeps the old flag
    (the change cannot see its row): lifted, the task must still run; added,
    the task must not run outside the new cap."""
    with psycopg.connect(dsn) as producer:
        conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('k1', 1)")
        producer.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k1')")
        conn.execute("UPDATE angela_queue.kinds SET concurrency = NULL WHERE kind = 'k1'")    # limit lifted
        producer.commit()
        assert [r["kind"] for r in claim(conn)] == ["k1"]
        assert scalar(dsn, "SELECT limited_kind FROM angela_queue.tasks WHERE kind = 'k1'") == ""

        conn.execute("INSERT INTO angela_queue.kinds (kind) VALUES ('k2')")
        for _ in range(5):
            producer.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k2')")
        conn.execute("UPDATE angela_queue.kinds SET concurrency = 1 WHERE kind = 'k2'")       # limit added
        producer.commit()
    assert claim(conn) == []                       # relabelled, not claimed past the cap
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE limited_kind = 'k2'") == 5
    assert [r["kind"] for r in claim(conn)] == ["k2"]
    assert claim(conn) == []


def test_a_rate_limited_low_priority_task_starts_at_its_claim_not_in_a_batch(conn):
    conn.execute("INSERT INTO angela_queue.kinds (kind, rate_limit, rate_period_s, concurrency) VALUES "
                 "('lowrate', 5, 60, NULL), ('lowcap', NULL, NULL, 5)")
    enqueue(conn, "lowrate", 2, priority=2)
    enqueue(conn, "lowcap", 2, priority=2)
    rows = db.fetch_all(conn, st.claim(worker_id=uuid.uuid4(), queues=["default"], limit=10, batch_below=5))
    started = {r["kind"]: (r["started_at"] is not None, r["attempts"]) for r in rows}
    assert started == {"lowrate": (True, 1), "lowcap": (False, 0)}    # a capped kind may still batch


def test_the_claim_stays_cheap_to_plan_with_big_limited_backlogs(conn):
    """The planner cannot estimate a kind's room; a LIMIT it could not estimate
    once pushed the claim's cost over jit_above_cost with 90k capped tasks."""
    conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('lka', 2), ('lkb', 2), ('lkc', 2)")
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT k FROM unnest('{lka,lkb,lkc}'::text[]) k, "
                 "generate_series(1, 30000)")
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'free' FROM generate_series(1, 1000)")
    conn.execute("ANALYZE angela_queue.tasks")
    with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        cur.execute("EXPLAIN (FORMAT JSON) " + __import__("angela_queue").queries.query("tasks_claim"),
                    st.claim(worker_id=uuid.uuid4(), queues=["default"], limit=1).params)
        cost = cur.fetchone()[0][0]["Plan"]["Total Cost"]
    jit_above = float(scalar(conn.info.dsn, "SELECT setting FROM pg_settings WHERE name = 'jit_above_cost'"))
    assert cost < jit_above / 10, cost
    assert_claim_walks_its_index(conn)


def test_claims_racing_on_one_capped_kind_never_exceed_it(dsn, conn):
    conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('capped', 3)")
    enqueue(conn, "capped", 50)
    # Many connections claim at once, each in its own transaction held open a moment.
    conns = [psycopg.connect(dsn, autocommit=True, row_factory=psycopg.rows.dict_row) for _ in range(8)]
    try:
        import threading
        got: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(len(conns))

        def run(c):
            barrier.wait()
            for _ in range(5):
                rows = claim(c, limit=10)
                with lock:
                    got.extend(r["id"] for r in rows)

        threads = [threading.Thread(target=run, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in conns:
            c.close()
    assert len(got) == 3 and len(set(got)) == 3
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'running'") == 3


def test_the_claim_walks_its_index_with_a_capped_backlog(conn):
    conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('capped', 1), ('other', 2)")
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) SELECT CASE g % 3 WHEN 0 THEN 'capped' "
                 "WHEN 1 THEN 'other' ELSE 'free' END, 1 + g % 10 FROM generate_series(1, 30000) g")
    conn.execute("ANALYZE angela_queue.tasks")
    assert_claim_walks_its_index(conn)


def test_a_limited_batch_kind_is_not_filled_past_its_limit(conn):
    conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency, batch) VALUES ('bulk', 2, true)")
    enqueue(conn, "bulk", 10, priority=2)
    filled = db.fetch_all(conn, st.claim_kind(worker_id=uuid.uuid4(), queue="default", kind="bulk", limit=10))
    assert filled == []
    assert len(claim(conn, limit=10)) == 2


# --- with real workers ---------------------------------------------------------------------

LIMITS_APP = """
import os, threading, time
import psycopg
from angela_queue import task, current_task

_local = threading.local()

def span(kind, n, started):
    # The handler's own start and end, read from this host's clock at once
    # (no lock between): they lie inside the task's running time in the
    # database, which the cap bounds.
    ended = time.time()
    if getattr(_local, "conn", None) is None:
        _local.conn = psycopg.connect(os.environ["AQ_TEST_DSN"], autocommit=True)
    _local.conn.execute(
        "INSERT INTO public.spans (kind, n, pid, claimed_at, started, ended) "
        "VALUES (%s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s))",
        (kind, n, os.getpid(), current_task().started_at, started, ended))

@task("capped", concurrency=2)
def capped(n):
    started = time.time()
    time.sleep(0.15)
    span("capped", n, started)

@task("metered", rate="4/s")
def metered(n):
    span("metered", n, time.time())

@task("free")
def free(n):
    span("free", n, time.time())
"""

SPANS_SQL = """
CREATE TABLE public.spans (kind text, n integer, pid integer, claimed_at timestamptz, started timestamptz,
                           ended timestamptz);
"""


def test_several_workers_never_run_more_than_the_cap_and_other_kinds_flow(dsn, conn, write_app, start_worker):
    conn.execute(SPANS_SQL)
    app = write_app(LIMITS_APP)
    workers = [start_worker(app, "--concurrency", "4", *FAST) for _ in range(3)]
    wait_until(lambda: scalar(dsn, "SELECT concurrency FROM angela_queue.kinds WHERE kind = 'capped'") == 2,
               details=lambda: workers[0].log())
    # All three up and listening before the work arrives, so it is shared.
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                   "'angela-queue-listen' AND datname = current_database()") == 3,
               details=lambda: "\n".join(w.log() for w in workers))
    enqueue(conn, "capped", 24, priority=8)        # at the head of the queue: 1.8 s of work at 2 at once
    enqueue(conn, "free", 40, priority=5)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.spans WHERE kind = 'capped'") == 24
               and scalar(dsn, "SELECT count(*) FROM public.spans WHERE kind = 'free'") == 40, timeout=60,
               details=lambda: "\n".join(w.log() for w in workers))
    spans = query(dsn, "SELECT started, ended FROM public.spans WHERE kind = 'capped' ORDER BY started")
    events = sorted([(s["started"], 1) for s in spans] + [(s["ended"], -1) for s in spans],
                    key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most <= 2, f"{most} capped tasks ran at once"
    assert most == 2, "the cap was never used in full"
    # The free tasks behind the capped backlog did not wait for it to drain:
    # they were all done while capped tasks were still waiting to start.
    last_free = scalar(dsn, "SELECT max(ended) FROM public.spans WHERE kind = 'free'")
    last_capped_start = scalar(dsn, "SELECT max(started) FROM public.spans WHERE kind = 'capped'")
    assert last_free < last_capped_start
    assert scalar(dsn, "SELECT count(DISTINCT pid) FROM public.spans") >= 2, "one worker did everything"


UNLIMITED_APP = LIMITS_APP[:LIMITS_APP.index('@task("capped"')] + """
@task("burst")
def burst(n):
    started = time.time()
    time.sleep(0.1)
    span("burst", n, started)

@task("free")
def free(n):
    span("free", n, time.time())
"""


def most_at_once(dsn: str, kind: str) -> int:
    spans = query(dsn, "SELECT started, ended FROM public.spans WHERE kind = %s", (kind,))
    running = most = 0
    for _, step in sorted([(s["started"], 1) for s in spans] + [(s["ended"], -1) for s in spans]):
        running += step
        most = max(most, running)
    return most


def test_a_limit_set_while_workers_claim_unlimited_is_never_overrun(dsn, conn, write_app, start_worker):
    """With no limit in play, workers claim through tasks_claim_unlimited. A
    limit set then (its tasks flagged, or inserted unflagged by a transaction
    open across the change) is kept from the first claim on, and its tasks
    run once the workers' next poll puts them back on the full claim."""
    conn.execute(SPANS_SQL)
    app = write_app(UNLIMITED_APP)
    workers = [start_worker(app, "--concurrency", "4", *FAST, env={"ANGELA_QUEUE_LOG_LEVEL": "debug"}) for _ in range(2)]
    wait_until(lambda: all("no limit in play" in w.log() for w in workers),
               details=lambda: "\n".join(w.log() for w in workers))
    with psycopg.connect(dsn) as producer:
        for n in range(3):
            producer.execute("INSERT INTO angela_queue.tasks (kind, payload) VALUES ('burst', %s)",
                             (json.dumps({"n": n}),))
        conn.execute("UPDATE angela_queue.kinds SET concurrency = 1 WHERE kind = 'burst'")
        for n in range(3, 8):
            conn.execute("INSERT INTO angela_queue.tasks (kind, payload) VALUES ('burst', %s)",
                         (json.dumps({"n": n}),))
        producer.commit()
    enqueue(conn, "free", 10)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.spans WHERE kind = 'burst'") == 8
               and scalar(dsn, "SELECT count(*) FROM public.spans WHERE kind = 'free'") == 10, timeout=60,
               details=lambda: "\n".join(w.log() for w in workers))
    assert most_at_once(dsn, "burst") == 1
    assert sorted(r["n"] for r in query(dsn, "SELECT n FROM public.spans WHERE kind = 'burst'")) == list(range(8))
    assert all("a limit is in play" in w.log() for w in workers)


def test_several_workers_never_start_more_than_the_rate_in_any_window(dsn, conn, write_app, start_worker):
    conn.execute(SPANS_SQL)
    app = write_app(LIMITS_APP)
    workers = [start_worker(app, "--concurrency", "4", *FAST) for _ in range(2)]
    wait_until(lambda: scalar(dsn, "SELECT rate_limit FROM angela_queue.kinds WHERE kind = 'metered'") == 4,
               details=lambda: workers[0].log())
    # Low priority: below 5 a worker batches tasks over several claims, but a
    # rate-limited kind's start is its claim.
    enqueue(conn, "metered", 12, priority=2)
    enqueue(conn, "free", 20)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.spans WHERE kind = 'metered'") == 12, timeout=60,
               details=lambda: "\n".join(w.log() for w in workers))
    # claimed_at is the start the limit counts (the claim's time, as the window stores it).
    starts = [r["claimed_at"] for r in query(dsn, "SELECT claimed_at FROM public.spans WHERE kind = 'metered' "
                                                  "ORDER BY claimed_at")]
    for i in range(len(starts) - 4):
        assert starts[i + 4] - starts[i] >= dt.timedelta(seconds=1), f"5 starts within a second: {starts[i:i + 5]}"
    assert scalar(dsn, "SELECT count(*) FROM public.spans WHERE kind = 'free'") == 20


# --- periodic tasks ------------------------------------------------------------------------

def periodic_row(conn, name: str) -> dict:
    return conn.execute("SELECT * FROM angela_queue.periodic WHERE name = %s", (name,)).fetchone()


def test_a_new_schedule_starts_at_its_next_slot_and_each_slot_is_enqueued_once(conn):
    conn.execute("INSERT INTO angela_queue.periodic (name, kind, every_s, payload) VALUES ('tick', 'tock', 60, "
                 "'{\"source\": \"cron\"}')")
    t0 = dt.datetime(2026, 12, 2, 10, 0, 30, tzinfo=UTC)
    leader_a, leader_b = Periodic(), Periodic()
    assert leader_a.run(conn, now=t0) == 0                               # armed: 10:00 counts as past
    assert periodic_row(conn, "tick")["last_slot"] == dt.datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    t1 = t0 + dt.timedelta(seconds=45)                                    # 10:01:15
    assert leader_a.run(conn, now=t1) == 1
    assert leader_b.run(conn, now=t1) == 0                               # a second leader: nothing twice
    assert leader_a.run(conn, now=t1 + dt.timedelta(seconds=5)) == 0
    task_row = conn.execute("SELECT kind, payload, dedup_key, status FROM angela_queue.tasks").fetchone()
    assert task_row == {"kind": "tock", "payload": {"source": "cron"}, "status": "queued",
                        "dedup_key": "periodic:tick:2026-12-02T10:01:00.000000Z"}
    row = periodic_row(conn, "tick")
    assert row["next_slot"] == dt.datetime(2026, 12, 2, 10, 2, tzinfo=UTC) and row["last_task_id"] is not None


def test_after_downtime_only_the_last_missed_slot_runs(conn):
    conn.execute("INSERT INTO angela_queue.periodic (name, kind, every_s) VALUES ('tick', 'tock', 60)")
    t0 = dt.datetime(2026, 12, 2, 10, 0, 30, tzinfo=UTC)
    leader = Periodic()
    leader.run(conn, now=t0)
    assert leader.run(conn, now=t0 + dt.timedelta(hours=3)) == 1        # 180 slots missed: one runs
    assert scalar(conn.info.dsn, "SELECT dedup_key FROM angela_queue.tasks") == \
        "periodic:tick:2026-12-02T13:00:00.000000Z"


def test_a_paused_periodic_task_enqueues_nothing_until_resumed(dsn, conn):
    conn.execute("INSERT INTO angela_queue.periodic (name, kind, every_s) VALUES ('tick', 'tock', 60)")
    t0 = dt.datetime(2026, 12, 2, 10, 0, 30, tzinfo=UTC)
    leader = Periodic()
    leader.run(conn, now=t0)
    result = cli(dsn, "periodic", "pause", "tick")
    assert result.returncode == 0, result.stderr
    assert leader.run(conn, now=t0 + dt.timedelta(minutes=5)) == 0
    assert periodic_row(conn, "tick")["next_slot"] is not None           # still shown
    assert cli(dsn, "periodic", "resume", "tick").returncode == 0
    assert leader.run(conn, now=t0 + dt.timedelta(minutes=5)) == 1
    missing = cli(dsn, "periodic", "pause", "nope")
    assert missing.returncode == 1 and "no periodic task named 'nope'" in missing.stderr


def test_bad_schedules_from_sql_are_refused_or_reported_and_the_others_go_on(conn):
    for bad, error in (("INSERT INTO angela_queue.periodic (name, kind) VALUES ('x', 'k')", psycopg.errors.CheckViolation),
                       ("INSERT INTO angela_queue.periodic (name, kind, cron) VALUES ('x', 'k', 'every day')",
                        psycopg.errors.CheckViolation),
                       ("INSERT INTO angela_queue.periodic (name, kind, every_s, timezone) VALUES ('x', 'k', 60, "
                        "'Mars/Olympus')", psycopg.errors.InvalidParameterValue)):
        with pytest.raises(error):
            conn.execute(bad)
    # Five fields, but not a valid expression: the leader reports it and schedules the rest.
    conn.execute("INSERT INTO angela_queue.periodic (name, kind, cron) VALUES ('broken', 'k', '61 * * * *'), "
                 "('good', 'k', '* * * * *')")
    t0 = dt.datetime(2026, 12, 2, 10, 0, 30, tzinfo=UTC)
    leader = Periodic()
    leader.run(conn, now=t0)
    assert leader.run(conn, now=t0 + dt.timedelta(minutes=1)) == 1
    assert "not valid" in periodic_row(conn, "broken")["error"]
    assert periodic_row(conn, "good")["error"] is None


def test_a_full_queue_delays_the_slot_without_losing_it(conn):
    conn.execute("INSERT INTO angela_queue.queues (name, max_size) VALUES ('tight', 1)")
    conn.execute("INSERT INTO angela_queue.periodic (name, kind, every_s, queue, priority) "
                 "VALUES ('tick', 'tock', 60, 'tight', 9)")
    conn.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES ('filler', 'tight')")
    t0 = dt.datetime(2026, 12, 2, 10, 0, 30, tzinfo=UTC)
    leader = Periodic()
    leader.run(conn, now=t0)
    assert leader.run(conn, now=t0 + dt.timedelta(minutes=1)) == 0       # queue full: tried again later
    conn.execute("DELETE FROM angela_queue.tasks WHERE kind = 'filler'")
    assert leader.run(conn, now=t0 + dt.timedelta(minutes=1, seconds=10)) == 1


def test_cron_slots_across_both_dst_changes_fire_once_each():
    """Counted forward from the last slot: croniter's get_prev returns an hour
    early in the repeated hour, which lost slots and ran daily jobs twice."""
    def fired(cron: str, start: dt.datetime, hours: int) -> list[dt.datetime]:
        schedule = Schedule.parse(cron=cron, every_s=None, timezone="Europe/Paris")
        last, out = schedule.latest_slot(start), []
        for minute in range(hours * 60):
            now = start + dt.timedelta(minutes=minute, seconds=30)
            slot = schedule.latest_slot(now, after=last)
            if slot is not None:
                out.append(slot)
                last = slot
        return out
    fall = dt.datetime(2026, 10, 24, 22, 0, tzinfo=UTC)       # Paris falls back at 01:00 UTC on the 25th
    five = fired("*/5 * * * *", fall, 6)
    assert len(five) == 6 * 12 - 1 and len(set(five)) == len(five)    # 22:05 .. 03:55 UTC
    assert all(b - a == dt.timedelta(minutes=5) for a, b in zip(five, five[1:]))
    nightly = fired("30 2 * * *", fall, 8)
    assert len(nightly) == 1                                   # 02:30 comes twice on the wall; runs once
    spring = dt.datetime(2026, 3, 28, 22, 0, tzinfo=UTC)      # Paris springs forward at 01:00 UTC on the 29th
    hourly = fired("0 * * * *", spring, 6)
    assert all(b - a == dt.timedelta(hours=1) for a, b in zip(hourly, hourly[1:])) and len(hourly) == 5


def test_a_cron_that_never_comes_is_refused():
    with pytest.raises(ScheduleError, match="never comes"):
        Schedule.parse(cron="0 0 30 2 *", every_s=None)


def test_a_schedule_removed_from_the_code_stops_and_remove_deletes_one(dsn, conn, clean_registry):
    @task("report", cron="0 * * * *")
    def report():
        pass

    @task("tick", every=60)
    def tick():
        pass

    kinds.record(conn, "test")
    conn.execute("INSERT INTO angela_queue.periodic (name, kind, every_s) VALUES ('by-hand', 'report', 300)")
    assert {r["name"] for r in query(dsn, "SELECT name FROM angela_queue.periodic")} == {"report", "tick", "by-hand"}
    registry.clear()

    @task("report")                         # the schedule is gone from the code; the kind stays
    def report_again():
        pass

    kinds.record(conn, "test")
    # tick's kind is not this app's any more: not this code's to judge.
    assert {r["name"] for r in query(dsn, "SELECT name FROM angela_queue.periodic")} == {"tick", "by-hand"}
    removed = cli(dsn, "periodic", "remove", "by-hand")
    assert removed.returncode == 0, removed.stderr
    assert {r["name"] for r in query(dsn, "SELECT name FROM angela_queue.periodic")} == {"tick"}


def test_a_changed_schedule_starts_at_its_next_slot(conn, clean_registry):
    @task("tick", every=60)
    def tick():
        pass

    kinds.record(conn, "test")
    leader = Periodic()
    t0 = dt.datetime(2026, 12, 2, 10, 0, 30, tzinfo=UTC)
    leader.run(conn, now=t0)
    registry.clear()

    @task("tick", every=3600)
    def tick_hourly():
        pass

    kinds.record(conn, "test")
    assert leader.run(conn, now=t0 + dt.timedelta(minutes=1)) == 0      # re-armed, not fired at once
    assert leader.run(conn, now=t0 + dt.timedelta(hours=1)) == 1


PERIODIC_APP = APP_PRELUDE + """
from angela_queue import task

@task("beat", every=1)
def beat():
    record(0)
"""


def test_two_supervisors_enqueue_each_slot_once_across_a_leader_kill(dsn, conn, write_app, start_supervisor):
    conn.execute(RUNS_TABLE_SQL)
    app = write_app(PERIODIC_APP)
    env = {"ANGELA_QUEUE_LEADER_LEASE_S": "1.5", "ANGELA_QUEUE_DEAD_AFTER_S": "3"}
    args = ["--min-workers", "1", "--base-workers", "1", "--max-workers", "1", "--scale-interval", "60", *FAST]
    a, b = start_supervisor(app, *args, env=env), start_supervisor(app, *args, env=env)

    def slots() -> list[str]:
        return [r["dedup_key"] for r in query(dsn, "SELECT dedup_key FROM angela_queue.tasks WHERE kind = 'beat'")]

    wait_until(lambda: len(slots()) >= 3, timeout=30, details=lambda: a.log() + b.log())
    holder = scalar(dsn, "SELECT holder FROM angela_queue.leader")
    sups = {r["id"]: r["pid"] for r in query(dsn, "SELECT id, pid FROM angela_queue.supervisors")}
    leader, other = (a, b) if sups[holder] == a.pid else (b, a)
    leader.signal(signal.SIGKILL)
    before = len(slots())
    wait_until(lambda: scalar(dsn, "SELECT holder FROM angela_queue.leader WHERE expires_at > now()")
               not in (None, holder), timeout=15, details=other.log)
    wait_until(lambda: len(slots()) >= before + 3, timeout=30, details=other.log)
    keys = slots()
    assert len(keys) == len(set(keys)), f"a slot was enqueued twice: {collections.Counter(keys).most_common(3)}"
    times = sorted(dt.datetime.fromisoformat(k.split(":", 2)[2].rstrip("Z")) for k in keys)
    assert all(b - a >= dt.timedelta(seconds=1) for a, b in zip(times, times[1:]))
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE kind = 'beat' "
                                   "AND status = 'succeeded'") >= len(keys) - 1, timeout=30, details=other.log)
    status = cli(dsn, "status")
    assert "PERIODIC (1)" in status.stdout and "every 1 s" in status.stdout, status.stdout
    listed = [json.loads(line) for line in cli(dsn, "periodic", "list", "--json").stdout.splitlines()]
    assert listed[0]["name"] == "beat" and listed[0]["declared_in"] == "code" and listed[0]["next_slot"]
    assert other.stop() == 0


def test_kinds_limit_sets_and_lifts_limits_from_the_cli(dsn):
    result = cli(dsn, "kinds", "limit", "mail", "--concurrency", "3", "--rate", "100/m")
    assert result.returncode == 0 and "mail: 3 at once, 100/m" in result.stdout, result.stderr
    assert cli(dsn, "kinds", "limit", "mail", "--rate", "none").stdout.strip() == "mail: 3 at once"
    bad = cli(dsn, "kinds", "limit", "mail", "--concurrency", "-1")
    assert bad.returncode == 2 and "--concurrency" in bad.stderr
    assert cli(dsn, "kinds", "limit", "mail").returncode == 2
    typo = cli(dsn, "kinds", "limit", "mial", "--concurrency", "none")
    assert typo.returncode == 1 and "no kind named 'mial'" in typo.stderr
    status = cli(dsn, "status")
    assert "LIMITED KINDS (1)" in status.stdout and "0/3" in status.stdout, status.stdout
