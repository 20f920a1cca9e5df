"""Testing helpers for applications that use angela-queue (shipped in the wheel).

With angela-queue installed, pytest loads the plugin (angela_queue.testing.plugin)
and these fixtures exist:

- ``angela_queue_dsn``: a migrated database of this test's own, dropped after it
  (the server from ANGELA_QUEUE_TEST_DSN, ANGELA_QUEUE_DSN or DATABASE_URL, else a
  throwaway embedded Postgres);
- ``angela_queue_client``: a ``Client`` on it.

and, once a test has that database, in the test itself::

    from angela_queue.testing import assert_enqueued, drain

    signup("ada@example.com")                         # the code under test enqueues
    assert_enqueued("send_welcome", to="ada@example.com")
    outcomes = drain("myapp.tasks")                   # run them here, in-process
    assert [t.status for t in outcomes] == ["succeeded"]
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

from .. import db
from ..config import load_settings
from ..registry import load_app, registered_kinds
from ..tasks import TaskRecord

__all__ = ["assert_enqueued", "drain", "enqueued", "using_database"]

_current_dsn: str | None = None


@contextlib.contextmanager
def using_database(dsn: str) -> Iterator[str]:
    """Make ``dsn`` the database drain() and assert_enqueued() use by default
    (the angela_queue_dsn fixture does this for its test)."""
    global _current_dsn
    previous, _current_dsn = _current_dsn, dsn
    try:
        yield dsn
    finally:
        _current_dsn = previous


def _dsn(dsn: str | None) -> str:
    chosen = dsn or _current_dsn
    if chosen is None:
        raise RuntimeError("no test database: use the angela_queue_dsn fixture, or pass dsn=")
    return chosen


def drain(app: str | ModuleType | None = None, *, dsn: str | None = None, queues: Iterable[str] | None = None,
          concurrency: int = 1, timeout: float = 60.0) -> list[TaskRecord]:
    """Run every due task in-process until none is left; return what ran.

    ``app``: the module whose @task handlers to use (imported if a name; by
    default whatever is registered already). ``queues``: default every queue.
    Tasks delayed into the future, and retries waiting out their backoff, are
    not due and stay. Returns each task that ran, as stored at the end, in the
    order their outcomes were recorded (a task retried within the drain once
    per attempt). Raises TimeoutError if tasks are still due after
    ``timeout`` seconds (a handler that never returns, say).
    """
    from ..worker.loop import Worker
    if isinstance(app, str):
        load_app(app)
    if not registered_kinds():
        raise RuntimeError("drain() has no @task handlers: pass the app module, or import it first")
    target = _dsn(dsn)
    if queues is None:
        with db.connect(target, application_name="angela-queue-drain") as conn:
            queues = [r["name"] for r in db.fetch_all(conn, "queues_names")]
    settings = load_settings({"dsn": target, "queues": tuple(queues) or ("default",), "concurrency": concurrency,
                              "poll_slow_s": 0.05, "poll_medium_s": 0.05, "poll_fast_s": 0.05,
                              # One task at a time means one: no critical slots beside it.
                              "batch_wait_s": 0.0, "critical_slots": 0}, environ={})
    worker = Worker(settings, in_process=True, stop_when_idle=True)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["code"] = worker.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    # Its own thread: the caller may be inside a running event loop (an
    # async test), where asyncio.run() cannot start another.
    thread = threading.Thread(target=run, name="angela-queue-drain", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        worker_loop = worker._loop
        if worker_loop is not None:
            with contextlib.suppress(RuntimeError):
                worker_loop.call_soon_threadsafe(worker.request_stop, True)
        thread.join(10)
        raise TimeoutError(f"drain(): tasks were still running or due after {timeout:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return _records(target, worker.finished_ids)


def _records(dsn: str, ids: list[int]) -> list[TaskRecord]:
    if not ids:
        return []
    with db.connect(dsn, application_name="angela-queue-drain") as conn:
        rows = {r["id"]: TaskRecord.from_row(r) for r in db.fetch_all(conn, "tasks_get_many", {"ids": ids})}
    return [rows[i] for i in ids if i in rows]


def enqueued(kind: str | None = None, /, *, dsn: str | None = None, **payload: Any) -> list[TaskRecord]:
    """Tasks (of ``kind``, whose payload holds these items), oldest first."""
    with db.connect(_dsn(dsn), application_name="angela-queue-testing") as conn:
        rows = db.fetch_all(conn, "tasks_matching", {"kind": kind, "payload": _jsonb(payload)})
    return [TaskRecord.from_row(r) for r in rows]


def assert_enqueued(kind: str, /, **payload: Any) -> list[TaskRecord]:
    """Assert that a task of ``kind`` whose payload holds these items was
    enqueued (in any status); returns the matches. The failure lists what
    was enqueued of that kind instead."""
    found = enqueued(kind, **payload)
    if found:
        return found
    others = enqueued(kind)
    listed = "\n".join(f"  task {t.id} ({t.status}): {t.payload}" for t in others[:20]) or "  none"
    wanted = ", ".join(f"{k}={v!r}" for k, v in payload.items()) or "any payload"
    raise AssertionError(f"no {kind!r} task with {wanted} was enqueued; tasks of that kind:\n{listed}")


def _jsonb(payload: dict[str, Any]) -> Any:
    from psycopg.types.json import Jsonb
    return Jsonb(payload)
