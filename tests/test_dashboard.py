"""`angela-queue dashboard` as a real server process on a real database.

Rows are made by the real queries (as in test_status) or by a real worker
process; the dashboard is read over HTTP exactly as the page reads it.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from angela_queue import db
from fix_db import backdate
from angela_queue.maintenance import lease as leader
from angela_queue.inspect.dashboard import Throughput
from angela_queue import statements as st
from fix_dashboard import start_dashboard  # noqa: F401 - a fixture
from fix_procs import wait_until

CHROMIUM = "/usr/bin/chromium"


def by(rows: list[dict], **match) -> dict:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, f"{match} in {rows}"
    return found[0]


def seed(conn) -> dict:
    """A supervisor (the leader), a busy worker, depth in every tier, and two critical starts: one late."""
    sup, busy = uuid.uuid4(), uuid.uuid4()
    db.fetch_all(conn, "supervisors_register", {"id": sup, "host": "host-a", "pid": 4242, "queues": ["default"],
                                               "workers_target": 2, "last_decision": "up to 2: depth 12 > 10"})
    assert leader.attempt_elect(conn, sup, 15)
    db.fetch_all(conn, "workers_register", {
        "id": busy, "supervisor_id": sup, "host": "host-a", "pid": 5151, "queues": ["sla"],
        "concurrency": 2, "stuck_after_s": 60, "dead_after_s": 30, "kinds": []})
    # Queue 'held' is served by nobody: its depth stays put. The critical task
    # became runnable a minute ago, so it is overdue already.
    conn.execute("""
        INSERT INTO angela_queue.tasks (kind, queue, priority, run_at)
        SELECT 'k', 'held', p, now() + make_interval(secs => s)
        FROM (VALUES (10, 0), (8, 0), (8, 0), (5, 0), (2, 0), (6, 3600)) AS v(p, s)""")
    backdate(conn, conn.execute("SELECT id FROM angela_queue.tasks WHERE queue = 'held' AND priority = 10")
             .fetchone()["id"], 1)
    # Queue 'sla': two critical tasks started now; one was due two minutes ago (late).
    late = [r["id"] for r in conn.execute("""
        INSERT INTO angela_queue.tasks (kind, queue, priority)
        VALUES ('k', 'sla', 9), ('k', 'sla', 9) RETURNING id""").fetchall()]
    backdate(conn, late[1], 2)
    claimed = db.fetch_all(conn, st.claim(worker_id=busy, queues=["sla"], limit=2))
    assert len(claimed) == 2
    db.fetch_all(conn, "workers_heartbeat", {
        "id": busy, "status": "active", "current_tasks": sorted(c["id"] for c in claimed), "tasks_completed": 41,
        "tasks_failed": 2, "avg_processing_time_ms": 12.5, "last_active": None})
    return {"supervisor": sup, "worker": busy, "claimed": sorted(c["id"] for c in claimed)}


def test_page_health_and_stats_of_a_known_database(dsn, conn, start_dashboard):
    ids = seed(conn)
    board = start_dashboard(dsn)
    assert board.url.startswith("http://127.0.0.1:")

    status, headers, body = board.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "angela-queue" in page and "api/stats" in page
    # Self-contained: no file loaded from anywhere (the one URL is the SVG namespace, a name).
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", page)
    assert set(re.findall(r"https?://[^\s\"']+", page)) == {"http://www.w3.org/2000/svg"}
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    assert board.get("/healthz")[::2] == (200, b"ok\n")
    assert board.get("/nope")[0] == 404

    data = board.ok_stats()
    held = [q for q in data["queues"] if q["queue"] == "held"]
    assert [(q["tier"], q["queued"], q["scheduled"], q["running"]) for q in held] == [
        ("critical", 1, 0, 0), ("high", 2, 0, 0), ("medium", 1, 1, 0), ("low", 1, 0, 0)]
    assert by(held, tier="critical")["overdue"] == 1 and by(held, tier="critical")["oldest_wait_s"] >= 59
    assert by(held, tier="high")["overdue"] == 0

    critical = by(data["tiers"], tier="critical")
    assert (critical["queued"], critical["running"], critical["overdue"]) == (1, 2, 1)
    assert critical["start_within_s"] == 0 and by(data["tiers"], tier="low")["start_within_s"] == 1800
    assert critical["latency"]["started"] == 2
    latency = critical["latency"]                               # waits of ~0 and ~120 s, interpolated
    assert 55_000 < latency["p50_ms"] < 65_000 and 115_000 < latency["p99_ms"] < latency["max_ms"] < 130_000
    assert critical["sla"] == {"started": 2, "on_time": 1, "attainment_pct": 50.0}
    assert by(data["tiers"], tier="high")["sla"] == {"started": 0, "on_time": 0, "attainment_pct": None}
    assert data["totals"] == {"queued": 5, "scheduled": 1, "running": 2, "overdue": 1,
                              "workers_live": 1, "workers_busy": 1, "supervisors_live": 1}

    worker = by(data["workers"], id=str(ids["worker"]))
    assert (worker["pid"], worker["host"], worker["status"]) == (5151, "host-a", "active")
    assert (worker["tasks_completed"], worker["tasks_failed"], worker["avg_processing_time_ms"]) == (41, 2, 12.5)
    assert worker["current_tasks"] == ids["claimed"] and worker["supervisor_id"] == str(ids["supervisor"])
    supervisor = by(data["supervisors"], id=str(ids["supervisor"]))
    assert supervisor["leader"] is True and supervisor["pid"] == 4242
    assert (supervisor["workers_live"], supervisor["workers_target"]) == (1, 2)
    assert data["sample"]["complete"] is True and data["sample"]["rows"] == 8
    assert data["database"].endswith(conn.info.dbname) and "password" not in data["database"]
    # Queue 'held' has no worker at all: its kind is named as unserved.
    assert by(data["unserved"], queue="held") == {"queue": "held", "kind": "k", "waiting": 6, "queue_served": False}

    assert board.stop() == 0


def test_metrics_periodic_tasks_and_limits_on_the_dashboard(dsn, conn, start_dashboard):
    conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency, rate_limit, rate_period_s) "
                 "VALUES ('call_api', 2, 100, 60)")
    conn.execute("INSERT INTO angela_queue.periodic (name, kind, cron, timezone) "
                 "VALUES ('nightly', 'digest', '30 2 * * *', 'Europe/Paris')")
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('mail', 7), ('mail', 7)")
    board = start_dashboard(dsn)
    data = board.ok_stats()
    [periodic] = data["periodic"]
    assert (periodic["name"], periodic["kind"], periodic["schedule"], periodic["timezone"], periodic["paused"]) == (
        "nightly", "digest", "30 2 * * *", "Europe/Paris", False)
    [limit] = data["limits"]
    assert (limit["kind"], limit["concurrency"], limit["running"], limit["rate_limit"], limit["rate_period_s"]) == (
        "call_api", 2, 0, 100, 60)
    status, headers, body = board.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert "angela_queue_up 1.0" in text
    assert 'angela_queue_tasks{queue="default",state="queued",tier="high"} 2.0' in text, text
    page = board.get("/")[2].decode()
    assert 'id="periodic"' in page and 'id="limits"' in page
    assert board.stop() == 0


FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.2"]

NOOP_APP = """
from angela_queue import task

@task("noop")
def noop(n=0):
    return n
"""


def test_throughput_latency_and_sla_follow_a_real_worker(dsn, client, write_app, start_worker, start_dashboard):
    board = start_dashboard(dsn)
    board.ok_stats()                               # the first sample: the baseline
    worker = start_worker(write_app(NOOP_APP), *FAST)
    client.enqueue_many([{"kind": "noop", "payload": {"n": i}, "priority": 5} for i in range(20)])

    def finished():
        data = board.ok_stats()
        mine = [w for w in data["workers"] if w["pid"] == worker.pid]
        return data if mine and mine[0]["tasks_completed"] >= 20 and data["throughput"]["finished"] >= 20 else None

    data = wait_until(finished, timeout=15, interval=0.2, message="20 tasks in the dashboard's throughput")
    tp = data["throughput"]
    assert tp["per_s"] > 0 and tp["failed"] == 0 and tp["failed_per_s"] == 0
    assert sum(bar["succeeded"] or 0 for bar in tp["history"]) == tp["finished"]
    assert len(tp["history"]) == data["windows"]["history_s"] / tp["bucket_s"]
    assert tp["history"][0]["succeeded"] is None                # before the dashboard started

    medium = wait_until(lambda: (t := by(board.ok_stats()["tiers"], tier="medium"))["latency"]["started"] >= 20
                        and t, timeout=10, interval=0.2, message="20 medium starts in the latency sample")
    assert medium["latency"]["p50_ms"] is not None and medium["latency"]["p99_ms"] >= medium["latency"]["p50_ms"]
    assert medium["sla"]["attainment_pct"] == 100.0 and medium["sla"]["started"] == medium["sla"]["on_time"]
    assert worker.stop() == 0
    assert board.stop(signal.SIGINT) == 0                        # Ctrl-C stops it cleanly too


def test_a_bad_dsn_is_a_503_not_a_crash(start_dashboard):
    board = start_dashboard("host=127.0.0.1 port=1 user=nobody dbname=nothing connect_timeout=2",
                            env={"ANGELA_QUEUE_DASHBOARD_PORT": "0", "ANGELA_QUEUE_DASHBOARD_HOST": "127.0.0.1"})
    assert board.url.startswith("http://127.0.0.1:") and not board.url.endswith(":8080/")
    status, data = board.stats()
    assert status == 503 and data["ok"] is False and "cannot connect" in data["error"]
    assert data["error_since"] is not None and data["last_ok_at"] is None
    status, _, body = board.get("/healthz")
    assert status == 503 and body.startswith(b"unavailable: cannot connect")
    assert board.get("/")[0] == 200                              # the page still loads, and shows the error
    for path in ("/api/tasks", "/api/tasks/1", "/api/history?range=24h"):
        status, data = board.get_json(path)
        assert status == 503 and data["ok"] is False and "cannot connect" in data["error"], (path, data)
    status, data = board.post("/api/tasks/1/retry")
    assert status == 503 and "cannot connect" in data["error"]
    assert board.post("/api/tasks/1/retry", token=None)[0] == 401
    assert board.proc.poll() is None
    assert board.stop() == 0


def test_database_errors_while_running_are_503_then_it_recovers(dsn, conn, start_dashboard):
    board = start_dashboard(dsn)
    board.ok_stats()
    conn.execute("ALTER SCHEMA angela_queue RENAME TO angela_queue_away")
    try:
        status, data = wait_until(lambda: (r := board.stats())[0] == 503 and r, timeout=10, interval=0.1,
                                  message="a 503 while the schema is gone")
        assert "does not exist" in data["error"] and "angela-queue migrate" in data["error"]
        assert data["last_ok_at"] is not None
        assert board.get("/healthz")[0] == 503
    finally:
        conn.execute("ALTER SCHEMA angela_queue_away RENAME TO angela_queue")
    wait_until(lambda: board.stats()[0] == 200, timeout=10, interval=0.1, message="recovery")
    assert board.get("/healthz")[0] == 200
    assert "database error" in board.log()                       # said once, in the log
    assert board.stop() == 0


def test_a_port_in_use_is_one_clear_line(dsn, start_dashboard):
    board = start_dashboard(dsn)
    port = board.url.rsplit(":", 1)[1].strip("/")
    result = subprocess.run([sys.executable, "-m", "angela_queue", "--dsn", dsn, "dashboard", "--port", port],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 1 and result.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr
    assert board.stop() == 0


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_the_page_renders_in_a_headless_browser(dsn, conn, start_dashboard, tmp_path):
    seed(conn)
    board = start_dashboard(dsn)
    board.ok_stats()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
             "--virtual-time-budget=3000"]
    shot = tmp_path / "dashboard.png"
    subprocess.run([CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'profile-1'}", f"--screenshot={shot}",
                    board.url], capture_output=True, timeout=60)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    # The DOM after the script ran: the JSON was fetched and rendered (a script error would leave "connecting").
    dom = subprocess.run([CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'profile-2'}", "--dump-dom", board.url],
                         capture_output=True, text=True, timeout=60).stdout
    assert 'class="pill live"' in dom and "host-a" in dom and "held" in dom
    shutil.rmtree(tmp_path / "profile-1", ignore_errors=True)
    shutil.rmtree(tmp_path / "profile-2", ignore_errors=True)
    assert board.stop() == 0


# -- Throughput from worker counters (pure logic) ---------------------------

T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def worker(wid: str, done: int, failed: int = 0, started: dt.datetime = T0) -> dict:
    return {"id": wid, "tasks_completed": done, "tasks_failed": failed, "started_at": started}


def test_throughput_counts_growth_since_the_first_sample_only():
    tp = Throughput(window_s=60, history_s=60, bucket_s=10)
    tp.observe([worker("a", 100, 5)], T0, at=1000.0)              # the past: not counted
    tp.observe([worker("a", 130, 6)], T0 + dt.timedelta(seconds=10), at=1010.0)
    tp.observe([worker("a", 160, 6)], T0 + dt.timedelta(seconds=20), at=1020.0)
    s = tp.summary(now=1020.5)
    assert (s["finished"], s["failed"]) == (61, 1)
    assert s["window_s"] == 20.5 and s["per_s"] == round(61 / 20.5, 3)
    assert [(b["succeeded"], b["failed"]) for b in s["history"]] == [
        (None, None), (None, None), (None, None), (0, 0), (30, 1), (30, 0)]


def test_throughput_counts_new_workers_in_full_and_forgets_gone_ones():
    tp = Throughput(window_s=60, history_s=60, bucket_s=10)
    tp.observe([worker("a", 10)], T0, at=1000.0)
    # b registered after the previous sample: all its work is new. a left the listing.
    tp.observe([worker("b", 7, 1, started=T0 + dt.timedelta(seconds=1))], T0 + dt.timedelta(seconds=2), at=1002.0)
    assert tp.summary(now=1002.0)["finished"] == 8
    # c is first seen now but started long before we looked: its counts are its past.
    tp.observe([worker("b", 7, 1), worker("c", 500, started=T0 - dt.timedelta(hours=1))],
               T0 + dt.timedelta(seconds=4), at=1004.0)
    assert tp.summary(now=1004.0)["finished"] == 8
    # Samples leave the rate window after window_s.
    assert tp.summary(now=1070.0)["finished"] == 0


def test_throughput_before_any_sample_is_empty():
    s = Throughput().summary(now=0.0)
    assert s["per_s"] is None and s["history"] == [] and s["since"] is None
