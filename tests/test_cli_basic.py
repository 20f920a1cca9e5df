"""The CLI's foundation commands as a user runs them: a real process, real
exit codes, real output. `migrate`, `enqueue` and `cancel`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import psycopg
from psycopg.rows import dict_row

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANGELA_QUEUE_") and k != "DATABASE_URL"}
    env.update(extra)
    return env


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "angela_queue", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or clean_env())


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return finish(start(*args, env=env))


def enqueued_id(result: subprocess.CompletedProcess) -> int:
    assert result.returncode == 0, result.stderr
    match = re.match(r"task (\d+) ", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str, label: str = "") -> None:
    assert result.returncode != 0, f"{label}: exit 0\n{result.stdout}"
    assert "Traceback" not in result.stderr, f"{label}: traceback\n{result.stderr}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, f"{label}: expected one Error line\n{result.stderr}"
    for word in words:
        assert word.lower() in errors[0].lower(), f"{label}: {errors[0]!r} does not mention {word!r}"


def tasks(conn) -> list[dict]:
    return conn.execute("SELECT * FROM angela_queue.tasks ORDER BY id").fetchall()


# --- enqueue ---------------------------------------------------------------------

def test_enqueue_prints_the_id_and_stores_the_task(dsn, conn):
    result = run("--dsn", dsn, "enqueue", "send_email", "--payload", '{"to": "a@b.c", "text": "urgent"}',
                 "--priority", "7", "--queue", "q")
    task_id = enqueued_id(result)
    assert result.stderr == ""
    row = conn.execute("SELECT * FROM angela_queue.tasks WHERE id = %s", (task_id,)).fetchone()
    assert (row["kind"], row["queue"], row["priority"], row["status"], row["boost"]) == ("send_email", "q", 7, "queued", 3)
    assert row["payload"] == {"to": "a@b.c", "text": "urgent"}
    assert "queued" in result.stdout and "tier=high" in result.stdout


def test_enqueue_defaults_and_dsn_from_the_environment(dsn, conn):
    a = enqueued_id(run("enqueue", "k", env=clean_env(ANGELA_QUEUE_DSN=dsn)))
    b = enqueued_id(run("enqueue", "k", env=clean_env(DATABASE_URL=dsn)))
    rows = tasks(conn)
    assert [r["id"] for r in rows] == [a, b]
    assert all((r["queue"], r["priority"], r["payload"]) == ("default", 5, {}) for r in rows)


def test_enqueue_options_delay_and_dedup(dsn, conn):
    first = run("--dsn", dsn, "enqueue", "k", "--delay", "60", "--dedup-key", "d1", "--max-attempts", "2",
                "--timeout", "3.5")
    task_id = enqueued_id(first)
    assert "scheduled" in first.stdout
    second = run("--dsn", dsn, "enqueue", "k", "--dedup-key", "d1")
    assert enqueued_id(second) == task_id and "duplicate" in second.stdout
    row = tasks(conn)[0]
    assert (row["status"], row["max_attempts"], row["timeout_s"]) == ("scheduled", 2, 3.5)
    assert len(tasks(conn)) == 1


def test_enqueue_into_a_full_queue_with_low_priority_reports_the_drop(dsn, conn):
    conn.execute("UPDATE angela_queue.queues SET max_size = 0 WHERE name = 'default'")
    result = run("--dsn", dsn, "enqueue", "k", "--priority", "2")
    enqueued_id(result)
    assert "dropped" in result.stdout and "full" in result.stdout


def test_bad_enqueue_arguments_fail_with_one_clear_line_and_store_nothing(dsn, conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('keep')")
    before = tasks(conn)
    cases = {
        "invalid JSON": (["--payload", "{not json"], ["--payload", "not valid JSON"]),
        "JSON array": (["--payload", "[1, 2]"], ["--payload", "JSON object", "list"]),
        "JSON string": (["--payload", '"hi"'], ["--payload", "JSON object", "str"]),
        "JSON null": (["--payload", "null"], ["--payload", "JSON object"]),
        "priority 0": (["--priority", "0"], ["--priority", "0", "1<=x<=10"]),
        "priority 11": (["--priority", "11"], ["--priority", "11", "1<=x<=10"]),
        "priority abc": (["--priority", "abc"], ["--priority", "abc"]),
        "negative delay": (["--delay", "-5"], ["--delay"]),
        "zero attempts": (["--max-attempts", "0"], ["--max-attempts"]),
    }
    # All at once: each case is its own process.
    procs = {label: start("--dsn", dsn, "enqueue", "k", *args) for label, (args, _) in cases.items()}
    procs["empty kind"] = start("--dsn", dsn, "enqueue", "  ")
    for label, proc in procs.items():
        words = cases[label][1] if label in cases else ["kind"]
        assert_one_line_error(finish(proc), *words, label=label)
    assert tasks(conn) == before


def test_unreachable_dsn_fails_fast_with_one_clear_line():
    procs = {
        "enqueue": start("--dsn", UNREACHABLE, "enqueue", "k"),
        "cancel": start("--dsn", UNREACHABLE, "cancel", "1"),
        "migrate": start("--dsn", UNREACHABLE, "migrate"),
    }
    for label, proc in procs.items():
        # Far below the pool's 10 s start-up timeout: the refusal is reported at once.
        out, err = proc.communicate(timeout=8)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert_one_line_error(result, "cannot connect", "127.0.0.1:1", "refused", label=label)
        assert len(err.strip().splitlines()) == 1, f"{label}: extra output\n{err}"


# --- cancel ------------------------------------------------------------------------

def test_cancel_a_queued_task(dsn, conn):
    task_id = conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k') RETURNING id").fetchone()["id"]
    result = run("--dsn", dsn, "cancel", str(task_id))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"task {task_id} cancelled"
    assert tasks(conn)[0]["status"] == "cancelled"


def test_cancel_refusals(dsn, conn):
    done = conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k') RETURNING id").fetchone()["id"]
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() WHERE id = %s", (done,))
    procs = {
        "finished": (start("--dsn", dsn, "cancel", str(done)), ["succeeded", "already finished"]),
        "unknown": (start("--dsn", dsn, "cancel", "999999"), ["no such task", "999999"]),
        "not a number": (start("--dsn", dsn, "cancel", "abc"), ["abc"]),
        "zero": (start("--dsn", dsn, "cancel", "0"), ["0"]),
    }
    for label, (proc, words) in procs.items():
        assert_one_line_error(finish(proc), *words, label=label)
    assert tasks(conn)[0]["status"] == "succeeded"


# --- migrate -----------------------------------------------------------------------

def test_migrate_an_empty_database_then_again(empty_dsn):
    from angela_queue import migrations
    first = run("--dsn", empty_dsn, "migrate")
    assert first.returncode == 0, first.stderr
    head = migrations.head_revision()
    assert first.stdout.strip().splitlines() == [f"schema angela_queue is at revision {head}",
                                                 "roles angela_queue_producer, angela_queue_worker and "
                                                 "angela_queue_reader are granted"]
    again = run("--dsn", empty_dsn, "migrate")
    assert again.returncode == 0 and again.stdout == first.stdout


def test_migrate_failure_is_one_line_and_leaves_nothing_half_built(empty_dsn):
    with psycopg.connect(empty_dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("CREATE SCHEMA angela_queue; CREATE TABLE angela_queue.queues (x int)")
        result = run("--dsn", empty_dsn, "migrate")
        assert_one_line_error(result, "queues", "already exists")
        left = conn.execute("SELECT relname FROM pg_class "
                            "WHERE relnamespace = 'angela_queue'::regnamespace ORDER BY 1").fetchall()
    assert [r["relname"] for r in left] == ["queues"]  # transactional: no alembic_version, no tasks


def test_migrate_without_privileges_is_one_line(pg_server, empty_dsn):
    # A least-privilege application role: it may connect but not create schemas.
    role = f"aq_test_role_{os.getpid()}_{os.urandom(3).hex()}"
    with pg_server.admin() as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        dsn = psycopg.conninfo.make_conninfo(empty_dsn, user=role)
        result = run("--dsn", dsn, "migrate")
        assert_one_line_error(result, "permission denied", "must run as the database's owner")
    finally:
        with pg_server.admin() as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_tasks_list_since_further_back_than_any_task_lists_them_all(dsn, conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('old')")
    result = run("--dsn", dsn, "tasks", "list", "--since", "1000000d")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "old" in result.stdout
