"""``angela-queue dashboard``: a web page of the queue's performance, history
and failures, which can act on tasks and queues.

Standard library only (``http.server``): run ``angela-queue dashboard
[--host 127.0.0.1] [--port 8080]`` and open the printed URL (it carries the
actions' token in its fragment, ``#token=...``). Routes (``_server.default_router``):

``GET /``
    One self-contained HTML page (inline CSS, JS and SVG, nothing fetched
    from elsewhere) that polls ``/api/stats`` every second; views for the
    overview, the task list (``#tasks?status=failed&kind=k``) and a task
    (``#task/42``).
``GET /api/stats``
    The JSON below; 200 while the database answers, else 503 with
    ``{"ok": false, "error": "...", "database": ..., "error_since": ...,
    "last_ok_at": ...}``.
``GET /api/history?range=1h|24h|7d``
    The charts' series, from the per-minute history (see _history).
``GET /api/tasks?status=&kind=&queue=&error=&before=&limit=``, ``GET /api/tasks/{id}``
    The task list and one task (see _browse).
``POST /api/tasks/{id}/retry``, ``/api/tasks/{id}/cancel``, ``/api/queues/{name}/pause``,
``/api/queues/{name}/resume``, ``/api/retry`` (``{"status", "kind", "queue"}``)
    The actions (see _actions). Each needs ``Authorization: Bearer <token>``
    (401 without it, before anything is read or changed: see _auth), and a
    login that may act (403 for a reader).
``GET /healthz``
    ``200 ok`` when the database answers a query, ``503 unavailable: ...``
    otherwise.
``GET /metrics``
    Prometheus' text format, from inspect/metrics.py (the same series as
    ``run --metrics-port`` minus the supervisor's own); ``angela_queue_up 0``
    while the database does not answer.

Every error is JSON, ``{"ok": false, "error": "..."}``: 400 bad input, 404
no such task, queue or route, 405 wrong method, 409 an action that does not
apply to the task's status, 503 the database did not answer.

The shape of ``/api/stats`` (timestamps are UTC ISO 8601 strings, durations
are seconds ``*_s`` or milliseconds ``*_ms``; NULL/None where nothing was
measured)::

    {
      "ok": true,
      "generated_at": "2025-01-01T12:00:00.123Z",   # when this sample was taken
      "database": "postgresql://user@host:5432/db",  # no password
      "refresh_s": 1.0,
      "windows": {"throughput_s": 60, "latency_s": 300, "sla_s": 3600, "history_s": 600},
      "totals": {"queued": 12, "scheduled": 3, "running": 2, "overdue": 0,
                 "workers_live": 4, "workers_busy": 2, "supervisors_live": 1},
      "tiers": [                                     # always 4: critical, high, medium, low
        {"tier": "critical", "start_within_s": 0,    # the tier's start deadline
         "queued": 0, "scheduled": 0, "running": 1,  # summed over queues
         "overdue": 0,                               # queued past deadline + the queue's sla_grace
         "oldest_wait_s": null,                      # oldest queued task's wait
         "latency": {"started": 31, "p50_ms": 2.1, "p99_ms": 9.7, "max_ms": 11.0},
                                                     # run_at -> started_at, tasks started in windows.latency_s
         "sla": {"started": 310, "on_time": 310, "attainment_pct": 100.0}},
                                                     # tasks started in windows.sla_s
        ...],
      "queues": [                                    # the queue_depth view: one row per queue and tier
        {"queue": "default", "max_size": null, "tier": "critical", "queued": 0,
         "scheduled": 0, "running": 1, "oldest_wait_s": null, "overdue": 0}, ...],
      "throughput": {                                # from the workers' counters, since the dashboard started
        "per_s": 14.8,                               # finished (succeeded + failed attempts) per second
        "succeeded_per_s": 14.8, "failed_per_s": 0.0,
        "finished": 888, "failed": 0,                # counted over window_s
        "window_s": 60.0,                            # windows.throughput_s, or less just after start
        "bucket_s": 10.0, "since": "2025-01-01T11:50:00Z",
        "history": [{"t": 1735732200.0, "succeeded": 140, "failed": 0}, ...]},
                                                     # oldest first, windows.history_s / bucket_s bars;
                                                     # t = bar start (epoch s); null counts before `since`
      "sample": {                                    # where latency and SLA come from:
        "rows": 28771, "row_limit": 100000,          # the tasks enqueued in the last lookback_s,
        "lookback_s": 7200,                          # at most the newest row_limit of them
        "complete": true,                            # false: row_limit cut the lookback short
        "covers_s": 7199.9,                          # the oldest sampled task was enqueued this long ago
        "computed_at": "...", "query_ms": 25.0},
      "unserved": [{"queue": "q", "kind": "k", "waiting": 3, "queue_served": false}, ...],
                                                     # kinds waiting where no live worker serves them
      "queue_settings": [{"queue": "default", "max_size": null, "paused_at": null, "sla_grace_s": 1.0}, ...],
      "paused": [...],                               # the queue_settings rows of paused queues
      "failures": [{"queue": "default", "kind": "mail", "error": "SMTPError: 421", "tasks": 3,
                    "last_at": "...", "last_id": 17, "all_failed": 5}, ...],
                                                     # status 'failed', by queue, kind and the error's
                                                     # first line; all_failed: over every group
      "can_act": true, "login": "app",              # whether this login may act (false: a reader)
      "workers": [                                   # live, plus stopped/dead in the last 10 minutes
        {"id": "uuid", "supervisor_id": "uuid", "host": "h", "pid": 123, "status": "active",
         "queues": ["default"], "concurrency": 1, "tasks_completed": 41, "tasks_failed": 2,
         "avg_processing_time_ms": 12.5, "current_tasks": [17], "started_at": "...", "stopped_at": null,
         "heartbeat_age_s": 0.4, "idle_for_s": 0.1}, ...],
      "supervisors": [                               # running, plus stopped in the last 10 minutes
        {"id": "uuid", "host": "h", "pid": 99, "queues": ["default"], "status": "running",
         "workers_target": 4, "workers_live": 4, "leader": true, "last_decision": "...",
         "started_at": "...", "heartbeat_age_s": 0.8}, ...]
    }

How each number stays cheap on a big table is in ``sql/dashboard.sql`` and
``_collector.py``: depth reads only unfinished rows, throughput reads the
workers' heartbeat counters, latency and SLA a bounded walk of the primary
key over the tasks enqueued lately, and one collector thread samples for
every open page.
"""

from ._auth import Token
from ._collector import Collector, Throughput
from ._routes import ApiError, Request, Response, Router
from ._server import DEFAULT_HOST, DEFAULT_PORT, DashboardServer, HealthCheck, default_router, make_server, serve

__all__ = ["Collector", "Throughput", "DashboardServer", "HealthCheck", "make_server", "serve",
           "DEFAULT_HOST", "DEFAULT_PORT", "Token", "Router", "Request", "Response", "ApiError", "default_router"]
