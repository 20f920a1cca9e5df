"""Dashboard v2 over HTTP on a real database: the reads (failures, tasks, a
task, history, warnings) match the rows, every action works with the token
and is refused without it (the row unchanged), and a reader login is read
only. Rows are made by the real statements (claim, fail, rollup)."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest

from angela_queue import db
from angela_queue.inspect.dashboard._history import shape
from angela_queue import statements as st
from fix_dashboard import start_dashboard  # noqa: F401 - a fixture
from fix_procs import wait_until

W = uuid.UUID("00000000-0000-0000-0000-00000000da5b")


def enqueue(conn, kind: str, n: int = 1, queue: str = "default", max_attempts: int = 1, payload: str = "{}") -> list[int]:
    return [r["id"] for r in conn.execute(
        "INSERT INTO angela_queue.tasks (kind, queue, max_attempts, payload) "
        "SELECT %s, %s, %s, %s::jsonb FROM generate_series(1, %s) RETURNING id",
        (kind, queue, max_attempts, payload, n)).fetchall()]


def fail(conn, ids: list[int], error: str, queue: str = "default") -> None:
    """Claim the tasks and fail them for good, as a worker records it."""
    claimed = db.fetch_all(conn, st.claim(worker_id=W, queues=[queue], limit=len(ids) + 100))
    mine = [c["id"] for c in claimed if c["id"] in ids]
    assert sorted(mine) == sorted(ids), (mine, ids)
    now = dt.datetime.now(dt.timezone.utc)
    db.fetch_all(conn, st.fail_many(worker_id=W, ids=mine, errors=[error] * len(mine),
                                    retry_in_s=[None] * len(mine), failed_ats=[now] * len(mine)))
    others = [c["id"] for c in claimed if c["id"] not in ids]
    if others:   # back as they were
        db.fetch_all(conn, st.release_many(worker_id=W, ids=others))


def wait_for_stats(board, predicate) -> dict:
    """The first snapshot of /api/stats for which ``predicate`` holds."""
    return wait_until(lambda: d if predicate(d := board.ok_stats()) else None,
                      timeout=10, interval=0.1, message="the dashboard's snapshot")


def task_row(conn, id_: int) -> dict:
    return conn.execute("SELECT * FROM angela_queue.tasks WHERE id = %s", (id_,)).fetchone()


def queue_row(conn, name: str) -> dict:
    return conn.execute("SELECT * FROM angela_queue.queues WHERE name = %s", (name,)).fetchone()


def test_the_announce_line_carries_a_generated_token_and_never_the_password(dsn, start_dashboard):
    board = start_dashboard(dsn)
    assert re.fullmatch(r"angela-queue dashboard: http://127\.0\.0\.1:\d+/#token=[A-Za-z0-9_-]{40,} "
                        r"\(database postgresql://\S+@127\.0\.0\.1:5432/\S+\)", board.line), board.line
    assert "password" not in board.line
    other = start_dashboard(dsn)
    assert other.token != board.token                              # generated per start
    assert board.post("/api/queues/default/pause", token=other.token)[0] == 401


def test_a_token_from_the_environment_is_used_and_not_printed(dsn, conn, start_dashboard):
    board = start_dashboard(dsn, "--port", "0", env={"ANGELA_QUEUE_DASHBOARD_TOKEN": "s3cret-token-from-env"})
    assert "#token=" not in board.line and "s3cret" not in board.line
    assert board.post("/api/queues/default/pause", token="s3cret-token-from-env")[0] == 200
    assert queue_row(conn, "default")["paused_at"] is not None


def test_without_the_token_every_action_is_401_and_changes_nothing(dsn, conn, start_dashboard):
    failed = enqueue(conn, "mail", 2)
    fail(conn, failed, "SMTPError: 421 try later")
    queued = enqueue(conn, "mail")[0]
    board = start_dashboard(dsn)
    before = {i: task_row(conn, i) for i in [*failed, queued]}
    queue_before = queue_row(conn, "default")
    actions = [("/api/tasks/%d/retry" % failed[0], {}), ("/api/tasks/%d/cancel" % queued, {}),
               ("/api/queues/default/pause", {}), ("/api/queues/default/resume", {}),
               ("/api/retry", {"status": "failed", "kind": "mail", "queue": None})]
    for path, body in actions:
        for token in (None, "wrong", board.token[:-1], board.token + "x", ""):
            status, data = board.post(path, body, token=token)
            assert status == 401 and data["ok"] is False and "token" in data["error"], (path, token, data)
        # Not Bearer: a Basic header carrying the token is refused too.
        status, headers, _ = board.request("POST", path, b"{}", {"Authorization": f"Basic {board.token}"})
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert {i: task_row(conn, i) for i in [*failed, queued]} == before
    assert queue_row(conn, "default") == queue_before
    # Reads stay open.
    assert board.get_json("/api/tasks")[0] == 200 and board.get_json(f"/api/tasks/{queued}")[0] == 200


def test_each_action_with_the_token_does_what_the_sql_function_does(dsn, conn, start_dashboard):
    one = enqueue(conn, "mail")[0]
    fail(conn, [one], "boom")
    bulk = enqueue(conn, "report", 3)
    fail(conn, bulk, "ValueError: bad month")
    other_kind = enqueue(conn, "mail")[0]
    fail(conn, [other_kind], "boom")
    queued = enqueue(conn, "sleepy")[0]
    board = start_dashboard(dsn)

    status, data = board.post(f"/api/tasks/{one}/retry")
    assert (status, data["outcome"], data["status"]) == (200, "retried", "queued")
    row = task_row(conn, one)
    assert (row["status"], row["attempts"]) == ("queued", 0) and len(row["errors"]) == 1   # history kept
    # Retrying a task that is not failed: 409, and it stays as it is.
    status, data = board.post(f"/api/tasks/{one}/retry")
    assert status == 409 and "only failed" in data["error"] and task_row(conn, one)["status"] == "queued"

    status, data = board.post(f"/api/tasks/{queued}/cancel")
    assert (status, data["outcome"]) == (200, "cancelled") and task_row(conn, queued)["status"] == "cancelled"
    status, data = board.post(f"/api/tasks/{queued}/cancel")
    assert status == 409 and "cannot be cancelled" in data["error"]

    status, data = board.post("/api/retry", {"status": "failed", "kind": "report", "queue": "default"})
    assert (status, data["retried"]) == (200, 3)
    assert {task_row(conn, i)["status"] for i in bulk} == {"queued"}
    assert task_row(conn, other_kind)["status"] == "failed"       # another kind: untouched

    status, data = board.post("/api/queues/default/pause")
    assert (status, data["changed"]) == (200, True) and queue_row(conn, "default")["paused_at"] is not None
    assert board.post("/api/queues/default/pause")[1]["changed"] is False
    paused = wait_for_stats(board, lambda d: d["paused"])["paused"]
    assert [p["queue"] for p in paused] == ["default"]
    status, data = board.post("/api/queues/default/resume")
    assert (status, data["changed"]) == (200, True) and queue_row(conn, "default")["paused_at"] is None
    assert wait_for_stats(board, lambda d: not d["paused"])["can_act"] is True


def test_bad_ids_queues_and_bodies_are_json_errors_not_tracebacks(dsn, conn, start_dashboard):
    board = start_dashboard(dsn)
    assert board.post("/api/tasks/424242/retry")[0] == 404
    assert board.post("/api/tasks/424242/cancel")[0] == 404
    assert board.post("/api/tasks/99999999999999999999/retry")[0] == 404          # past bigint
    assert board.post("/api/tasks/abc/retry")[0] == 404
    status, data = board.post("/api/queues/no-such-queue/pause")
    assert status == 404 and "no queue named" in data["error"]
    assert board.post("/api/queues/no-such-queue/resume")[0] == 404
    assert board.post("/api/queues/%20/pause")[0] == 400                           # a blank name
    status, data = board.post("/api/retry", {"status": "succeeded"})
    assert status == 400 and "status must be one of" in data["error"]
    assert board.post("/api/retry", {"status": "failed", "kind": 5})[0] == 400
    assert board.post("/api/retry", {"status": "failed", "colour": "red"})[0] == 400
    status, _, body = board.request("POST", "/api/retry", b"{not json",
                                    {"Authorization": f"Bearer {board.token}"})
    assert status == 400 and b"not valid JSON" in body
    assert board.get_json("/api/tasks/424242") == (404, {"ok": False, "error": "no task 424242"})
    assert board.get_json("/api/tasks?status=nope")[0] == 400
    assert board.get_json("/api/tasks?limit=0")[0] == 400
    assert board.get_json("/api/history?range=2h")[0] == 400
    assert board.get_json("/api/retry")[0] == 405                                  # GET on an action
    assert "Traceback" not in board.log() and "internal error" not in board.log()


def test_failures_tasks_and_a_task_page_match_the_database(dsn, conn, start_dashboard):
    smtp = enqueue(conn, "mail", 3, payload='{"to": "a@example.com"}')
    fail(conn, smtp, "SMTPError: 421 try later\nTraceback (most recent call last): ...")
    month = enqueue(conn, "report", 2)
    fail(conn, month, "ValueError: bad month")
    other = enqueue(conn, "mail")[0]
    fail(conn, [other], "KeyError: 'to'")
    enqueue(conn, "mail", 2)                                       # queued, not failed
    board = start_dashboard(dsn)

    data = wait_for_stats(board, lambda d: d["failures"])
    groups = {(f["kind"], f["error"]): f["tasks"] for f in data["failures"]}
    expected = {(r["kind"], r["error"]): r["n"] for r in conn.execute(
        "SELECT kind, split_part(last_error, E'\\n', 1) AS error, count(*) AS n FROM angela_queue.tasks "
        "WHERE status = 'failed' GROUP BY 1, 2").fetchall()}
    assert groups == expected == {("mail", "SMTPError: 421 try later"): 3, ("report", "ValueError: bad month"): 2,
                                  ("mail", "KeyError: 'to'"): 1}
    assert data["failures"][0]["all_failed"] == 6 and data["can_act"] is True

    # The panel's link: the task list filtered to the group.
    status, listed = board.get_json("/api/tasks?status=failed&kind=mail&error=SMTPError%3A+421+try+later")
    assert status == 200 and [t["id"] for t in listed["tasks"]] == sorted(smtp, reverse=True)
    assert {t["last_error"] for t in listed["tasks"]} == {"SMTPError: 421 try later"}
    status, listed = board.get_json("/api/tasks?kind=mail&status=queued")
    assert [t["status"] for t in listed["tasks"]] == ["queued", "queued"]
    # Paging: newest first, next_before continues.
    first = board.get_json("/api/tasks?limit=3")[1]
    rest = board.get_json(f"/api/tasks?limit=100&before={first['next_before']}")[1]
    all_ids = [r["id"] for r in conn.execute("SELECT id FROM angela_queue.tasks ORDER BY id DESC").fetchall()]
    assert [t["id"] for t in first["tasks"] + rest["tasks"]] == all_ids and rest["next_before"] is None

    status, page = board.get_json(f"/api/tasks/{smtp[0]}")
    task, row = page["task"], task_row(conn, smtp[0])
    assert (task["status"], task["kind"], task["payload"], task["attempts"]) == ("failed", "mail",
                                                                                 {"to": "a@example.com"}, 1)
    assert task["last_error"] == row["last_error"] and task["last_error"].startswith("SMTPError")
    assert [e["attempt"] for e in task["errors"]] == [1] and task["errors"][0]["worker"] == str(W)
    assert task["run_ms"] >= 0 and task["wait_ms"] >= 0 and task["start_within_s"] == 300


def test_the_history_is_the_rollup_in_the_database(dsn, conn, start_dashboard):
    done = enqueue(conn, "mail", 4)
    claimed = db.fetch_all(conn, st.claim(worker_id=W, queues=["default"], limit=4))
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    outcomes = ",".join(f'{{"id":{c["id"]},"result":null,"finished_at":{now}}}' for c in claimed[:3])
    db.fetch_all(conn, st.complete_many(worker_id=W, outcomes_json=f"[{outcomes}]"))
    fail_ids = [claimed[3]["id"]]
    db.fetch_all(conn, st.fail_many(worker_id=W, ids=fail_ids, errors=["x"], retry_in_s=[None],
                                    failed_ats=[dt.datetime.now(dt.timezone.utc)]))
    assert sorted(c["id"] for c in claimed) == sorted(done)
    # What the leader does each minute (maintenance.history), for this minute.
    minute = conn.execute("SELECT date_trunc('minute', now()) AS m").fetchone()["m"]
    db.fetch_all(conn, "stats_rollup", {"since": minute, "until": minute + dt.timedelta(minutes=1)})
    db.fetch_all(conn, "stats_progress_write", {"rolled_until": minute + dt.timedelta(minutes=1)})
    enqueue(conn, "later", 2)
    db.fetch_all(conn, "stats_depth_snapshot")
    board = start_dashboard(dsn)

    status, h = board.get_json("/api/history?range=1h")
    assert status == 200 and h["bucket_s"] == 60 and len(h["t"]) == 60
    i = h["t"].index(int(minute.timestamp()))
    assert h["throughput"]["succeeded"][i] == 3 and h["throughput"]["failed"][i] == 1   # tasks/min
    medium = next(t for t in h["tiers"] if t["tier"] == "medium")
    assert medium["started"][i] == 4 and medium["sla_pct"][i] == 100.0 and medium["wait_p95_ms"][i] is not None
    assert medium["depth"][i] == 2 and medium["start_within_s"] == 300 and medium["sla_grace_s"] == 1
    assert h["final_until"] == int(minute.timestamp()) + 60
    for name, n, bucket in (("24h", 96, 900), ("7d", 168, 3600)):
        status, other = board.get_json(f"/api/history?range={name}")
        assert status == 200 and (len(other["t"]), other["bucket_s"]) == (n, bucket)
        assert other["throughput"]["succeeded_total"] == 3 and other["throughput"]["failed_total"] == 1


def test_a_reader_login_sees_everything_and_may_do_nothing(dsn, conn, login, start_dashboard):
    failed = enqueue(conn, "mail")[0]
    fail(conn, [failed], "boom")
    reader = login("angela_queue_reader")
    board = start_dashboard(reader)
    data = wait_for_stats(board, lambda d: d["failures"])
    assert data["can_act"] is False and data["login"].startswith("aq_test_")
    assert board.get_json(f"/api/tasks/{failed}")[1]["task"]["status"] == "failed"
    before, queue_before = task_row(conn, failed), queue_row(conn, "default")
    for path, body in ((f"/api/tasks/{failed}/retry", {}), (f"/api/tasks/{failed}/cancel", {}),
                       ("/api/queues/default/pause", {}), ("/api/queues/default/resume", {}),
                       ("/api/retry", {"status": "failed"})):
        status, data = board.post(path, body)
        assert status == 403 and data["can_act"] is False and "read only" in data["error"], (path, data)
        assert board.post(path, body, token=None)[0] == 401       # the token is checked first
    assert task_row(conn, failed) == before and queue_row(conn, "default") == queue_before


@pytest.mark.parametrize("range_name", ["1h", "24h", "7d"])
def test_history_shape_fills_every_bucket(range_name):
    now = 1_800_000_000.0
    empty = shape(range_name, now, None, 1.0, [], [])
    assert all(v is None for v in empty["throughput"]["succeeded"])            # never rolled up: unknown
    rolled = shape(range_name, now, now + 60, 1.0, [], [])
    assert all(v == 0 for v in rolled["throughput"]["succeeded"])              # rolled up: nothing happened
    assert shape(range_name, now, now, 1.0, [], [])["throughput"]["succeeded"][-1] is None   # the bucket of now
    assert rolled["t"][-1] <= now < rolled["t"][-1] + rolled["bucket_s"] == rolled["until"]
    assert [t["tier"] for t in rolled["tiers"]] == ["critical", "high", "medium", "low"]


def test_a_route_is_one_line_and_the_router_answers_404_and_405():
    from angela_queue.inspect.dashboard import ApiError, Response, Router, Token

    router = Router()
    router.add("GET", r"/metrics", lambda request: Response.text("# metrics\n"))
    router.add("POST", r"/api/things/(?P<id>[0-9]+)/poke", lambda request: Response.json({"id": request.params}))
    handler, params = router.resolve("GET", "/metrics")
    assert handler(None).body == b"# metrics\n" and params == {}
    assert router.resolve("HEAD", "/metrics")[1] == {}
    assert router.resolve("POST", "/api/things/7/poke")[1] == {"id": "7"}
    with pytest.raises(ApiError) as missing:
        router.resolve("GET", "/nope")
    assert missing.value.status == 404
    with pytest.raises(ApiError) as wrong:
        router.resolve("GET", "/api/things/7/poke")
    assert wrong.value.status == 405

    token = Token("abc")
    assert token.accepts("Bearer abc") and token.accepts("bearer abc") and not token.accepts("Bearer abd")
    assert not token.accepts(None) and not token.accepts("abc") and not token.accepts("Bearer ")
    assert "abc" not in repr(token) and token.fragment() == ""
    generated = Token(None)
    assert generated.generated and generated.fragment() == f"#token={generated.value}" and len(generated.value) >= 40
