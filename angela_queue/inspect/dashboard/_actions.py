"""The page's actions: retry or cancel a task, retry in bulk, pause and
resume a queue. Each is one call of the SQL function that psql, the CLI and
the client call too (sql/schema.sql), on the dashboard's action session.

Outcomes map to HTTP: done 200 (a cancel of a running task 202: it is asked
to stop); a task in a status the action does not apply to 409; no such task
or queue 404; bad input 400; a login that may not act (a reader) 403, with
the reason. The token is checked before any of this (see _auth).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from ... import db
from ...errors import DatabaseUnavailable
from ._routes import ApiError
from ._session import Session

log = logging.getLogger("angela_queue.dashboard")

APPLICATION_NAME = "angela-queue-dashboard-actions"
STATEMENT_TIMEOUT_MS = 10_000
LOCK_TIMEOUT_MS = 5_000
BIGINT_MAX = 2**63 - 1
RETRYABLE = ("failed", "cancelled", "dropped")

READ_ONLY_MESSAGE = ("the dashboard's database login {login!r} may not retry, cancel, pause or resume "
                     "(it needs the angela_queue_worker role; a reader login is read only)")

_RETRY_REFUSED = {
    "unchanged": "task {id} is {status}: only failed, cancelled or dropped tasks can be retried",
    "dedup_key_held": "task {id} was not retried: a newer unfinished task holds its dedup key",
    "queue_full": "task {id} was not retried: its queue is full (max_size)",
}


def task_id(text: str) -> int:
    value = int(text)   # the route matched digits only
    if value > BIGINT_MAX:
        raise ApiError(404, f"no task {text}")
    return value


class Actions:
    def __init__(self, dsn: str):
        self.session = Session(dsn, application_name=APPLICATION_NAME, setup="dashboard_action_session",
                               setup_params={"statement_timeout_ms": STATEMENT_TIMEOUT_MS,
                                             "lock_timeout_ms": LOCK_TIMEOUT_MS},
                               read_only=False)

    def close(self) -> None:
        self.session.close()

    # -- the actions ----------------------------------------------------------

    def retry(self, id_: int) -> tuple[int, dict[str, Any]]:
        row = self._run("tasks_retry", {"id": id_}, one=True)
        if row is None:
            raise ApiError(404, f"no task {id_}")
        if row["outcome"] != "retried":
            raise ApiError(409, _RETRY_REFUSED.get(row["outcome"], "task {id}: {outcome}").format(**row),
                           task=row["id"], status=row["status"], outcome=row["outcome"])
        return 200, {"ok": True, "task": row["id"], "status": row["status"], "outcome": row["outcome"]}

    def cancel(self, id_: int) -> tuple[int, dict[str, Any]]:
        row = self._run("tasks_cancel", {"id": id_}, one=True)
        if row is None:
            raise ApiError(404, f"no task {id_}")
        if row["outcome"] == "unchanged":
            raise ApiError(409, f"task {id_} is {row['status']}: it has finished and cannot be cancelled",
                           task=row["id"], status=row["status"], outcome=row["outcome"])
        status = 202 if row["outcome"] == "cancel_requested" else 200
        return status, {"ok": True, "task": row["id"], "status": row["status"], "outcome": row["outcome"]}

    def retry_many(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        unknown = set(body) - {"status", "kind", "queue"}
        if unknown:
            raise ApiError(400, f"unknown fields: {', '.join(sorted(unknown))} (expected status, kind, queue)")
        status = body.get("status", "failed")
        if status not in RETRYABLE:
            raise ApiError(400, f"status must be one of {', '.join(RETRYABLE)} (got {status!r})")
        for name in ("kind", "queue"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise ApiError(400, f"{name} must be a string or null")
        params = {"status": status, "kind": body.get("kind") or None, "queue": body.get("queue") or None}
        row = self._run("tasks_retry_many", params, one=True)
        return 200, {"ok": True, "retried": row["retried"] if row else 0, **params}

    def pause(self, name: str) -> tuple[int, dict[str, Any]]:
        row = self._run("queues_pause", {"name": name}, one=True)
        return 200, {"ok": True, "queue": name, "paused": True, "changed": bool(row and row["changed"])}

    def resume(self, name: str) -> tuple[int, dict[str, Any]]:
        row = self._run("queues_resume", {"name": name}, one=True)
        return 200, {"ok": True, "queue": name, "paused": False, "changed": bool(row and row["changed"])}

    # -- shared -----------------------------------------------------------------

    def _run(self, name: str, params: dict[str, Any], *, one: bool) -> dict[str, Any] | None:
        def work(conn: psycopg.Connection) -> dict[str, Any] | None:
            allowed = db.fetch_one(conn, "dashboard_privileges")
            assert allowed is not None
            if not allowed["can_act"]:
                raise ApiError(403, READ_ONLY_MESSAGE.format(login=allowed["login"]), can_act=False)
            return db.fetch_one(conn, name, params)

        try:
            row = self.session.run(work)
        except ApiError:
            raise
        except psycopg.errors.InsufficientPrivilege as exc:
            # Granted when the page loaded, revoked since (or a row policy).
            raise ApiError(403, f"permission denied: {db.first_line(exc)}", can_act=False) from None
        except psycopg.errors.UndefinedObject as exc:
            raise ApiError(404, _message(exc)) from None
        except (psycopg.errors.InvalidParameterValue, psycopg.errors.DataError) as exc:
            raise ApiError(400, _message(exc)) from None
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
            raise ApiError(503, f"the database did not answer in time: {db.first_line(exc)}") from None
        except (psycopg.Error, DatabaseUnavailable) as exc:
            log.warning("dashboard action %s failed: %s", name, db.first_line(exc))
            raise ApiError(503, f"database error: {db.first_line(exc)}") from None
        log.info("dashboard action %s %s: %s", name, params, row)
        return row


def _message(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.diag else None
    return (primary or db.first_line(exc)).removeprefix("angela_queue: ")
