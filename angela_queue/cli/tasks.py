"""Commands that act on tasks and queues: enqueue, tasks list/show, retry, cancel,
pause, resume and purge. Each is one call to the Client, whose operations are
the SQL functions (retry_task, cancel_task, pause_queue, ...): psql, the
CLI, the dashboard and Python do the same thing."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..tasks import EARLIEST_RUN_AT
from ..terminal import safe, safe_lines
from . import command, echo, resolve_dsn
from .params import DURATION


def _parse_payload(ctx: click.Context, param: click.Parameter, value: str | None) -> dict:
    if value is None:
        return {}
    try:
        payload = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise click.BadParameter("nested too deeply to decode") from None
    if not isinstance(payload, dict):
        raise click.BadParameter(f"must be a JSON object like '{{\"key\": 1}}', not {type(payload).__name__}")
    return payload


def _client(ctx: click.Context):
    from ..client import Client
    return Client(resolve_dsn(ctx))


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False, width=max(Console().width, 120))


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def register(main: click.Group) -> None:
    @command(main)
    @click.argument("kind")
    @click.option("--payload", callback=_parse_payload, help="JSON object, e.g. '{\"to\": \"x\"}'.")
    @click.option("--priority", type=click.IntRange(1, 10), default=None,
                  help="1-10 (default 5): 9-10 critical, 7-8 high, 5-6 medium, 1-4 low.")
    @click.option("--queue", default=None, help="Queue name (default 'default').")
    @click.option("--delay", type=click.FloatRange(min=0), default=None,
                  help="Seconds from now before the task may start.")
    @click.option("--run-at", type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z",
                                                            "%Y-%m-%dT%H:%M:%S"]),
                  default=None, help="When the task may start (ISO 8601; UTC if no offset).")
    @click.option("--max-attempts", type=click.IntRange(min=1), default=None)
    @click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                  help="Seconds one attempt may run.")
    @click.option("--dedup-key", default=None, help="Skip the enqueue while an unfinished task has this key.")
    @click.pass_context
    def enqueue(ctx: click.Context, kind: str, payload: dict, priority: int | None, queue: str | None,
                delay: float | None, run_at: dt.datetime | None, max_attempts: int | None,
                timeout: float | None, dedup_key: str | None) -> None:
        """Enqueue one task of KIND and print its id and status."""
        from ..tasks import TaskSpec
        if run_at is not None and run_at.tzinfo is None:
            run_at = run_at.replace(tzinfo=dt.timezone.utc)
        options = dict(priority=priority, queue=queue, delay=delay, run_at=run_at, max_attempts=max_attempts,
                       timeout=timeout, dedup_key=dedup_key)
        TaskSpec.build(kind, payload, **options)  # validate before any connection is opened
        with _client(ctx) as client:
            task = client.enqueue(kind, payload, **options)
        note = " (duplicate: existing task returned)" if task.duplicate else ""
        if task.dropped:
            note = f" ({task.last_error})"
        echo(safe(f"task {task.id} {task.status} kind={task.kind} queue={task.queue} priority={task.priority} "
                  f"boost={task.boost} tier={task.tier}{note}"))

    @main.group()
    def tasks() -> None:
        """List and inspect tasks."""

    @command(tasks, "list")
    @click.option("--status", type=click.Choice(["scheduled", "queued", "running", "succeeded", "failed",
                                                 "cancelled", "dropped"]), default=None)
    @click.option("--kind", default=None)
    @click.option("--queue", default=None)
    @click.option("--since", type=DURATION, default=None, help="Enqueued in the last DURATION (30m, 2h, 7d).")
    @click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
    @click.pass_context
    def list_tasks(ctx: click.Context, status: str | None, kind: str | None, queue: str | None,
                   since: float | None, limit: int, as_json: bool) -> None:
        """Tasks, newest first."""
        now = dt.datetime.now(dt.timezone.utc)
        # Further back than any task can be (created_at is after 1900): every task.
        after = None if since is None or since >= (now - EARLIEST_RUN_AT).total_seconds() else \
            now - dt.timedelta(seconds=since)
        with _client(ctx) as client:
            found = client.list_tasks(status=status, kind=kind, queue=queue, since=after, limit=limit)
        if as_json:
            for t in found:
                echo(json.dumps({k: getattr(t, k) for k in ("id", "queue", "kind", "status", "priority", "tier",
                                                            "attempts", "max_attempts", "created_at", "run_at",
                                                            "started_at", "finished_at")} | {"error": t.last_error},
                                default=_json_default))
            return
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
        for name, right in (("ID", True), ("QUEUE", False), ("KIND", False), ("STATUS", False), ("P", True),
                            ("ATTEMPTS", True), ("ENQUEUED (UTC)", False), ("WAITED", True), ("RAN", True),
                            ("ERROR", False)):
            table.add_column(name, justify="right" if right else "left", no_wrap=name != "ERROR")
        for t in found:
            table.add_row(*[Text(safe(v)) for v in (
                t.id, t.queue, t.kind, t.status, t.priority, f"{t.attempts}/{t.max_attempts}", _when(t.created_at),
                _seconds(t.waited_s), _seconds(t.ran_s), t.last_error or "")])
        console = _console()
        console.print(table)
        console.print(Text(f"{len(found)} task(s)" + (f" (the newest {limit})" if len(found) == limit else "")))

    @command(tasks, "show")
    @click.argument("task_id", type=click.IntRange(min=1))
    @click.option("--json", "as_json", is_flag=True, help="Print the whole row as JSON.")
    @click.pass_context
    def show_task(ctx: click.Context, task_id: int, as_json: bool) -> None:
        """Every column of one task, its timings, and its attempt history with tracebacks."""
        import dataclasses
        with _client(ctx) as client:
            t = client.get(task_id)
        if as_json:
            data = dataclasses.asdict(t) | {"waited_s": t.waited_s, "ran_s": t.ran_s}
            echo(json.dumps(data, default=_json_default, indent=2))
            return
        console = _console()
        head = Table(box=None, show_header=False, pad_edge=False)
        head.add_column(style="bold", no_wrap=True)
        head.add_column()
        rows = [("id", t.id), ("kind", t.kind), ("queue", t.queue), ("status", t.status),
                ("priority", f"{t.priority} ({t.tier}), boost {t.boost}"
                             + (f" from {', '.join(t.boost_rules)}" if t.boost_rules else "")),
                ("attempts", f"{t.attempts} of {t.max_attempts}"), ("enqueued", _when(t.created_at)),
                ("run at", _when(t.run_at)), ("deadline", _when(t.deadline)), ("started", _when(t.started_at)),
                ("finished", _when(t.finished_at)), ("waited", _seconds(t.waited_s)), ("ran", _seconds(t.ran_s)),
                ("timeout", "-" if t.timeout_s is None else f"{t.timeout_s:g}s"), ("dedup key", t.dedup_key or "-"),
                ("worker", t.worker_id or "-"), ("enqueued by", t.enqueued_by or "-"),
                ("cancel requested", _when(t.cancel_requested_at)),
                ("payload", json.dumps(t.payload, default=_json_default)),
                ("result", "-" if t.result is None else json.dumps(t.result, default=_json_default))]
        for name, value in rows:
            head.add_row(name, Text(safe(value)))
        console.print(head)
        if t.errors:
            console.print()
            console.print(Text(f"ATTEMPT HISTORY ({len(t.errors)} failed attempt(s), newest last)", style="bold"))
            for entry in t.errors:
                console.print()
                console.print(Text(safe(f"attempt {entry.get('attempt')} at {entry.get('at')} on worker "
                                        f"{str(entry.get('worker') or '-')[:8]}:"), style="bold"))
                console.print(Text(safe_lines(entry.get("error") or "")))
        elif t.last_error:
            console.print()
            console.print(Text("LAST ERROR", style="bold"))
            console.print(Text(safe_lines(t.last_error)))

    @command(main)
    @click.argument("task_ids", type=click.IntRange(min=1), nargs=-1)
    @click.option("--failed", "all_failed", is_flag=True, help="Retry every failed task (with --kind, --queue).")
    @click.option("--status", "bulk_status", type=click.Choice(["failed", "cancelled", "dropped"]), default=None,
                  help="Retry every task in this status instead (with --kind, --queue).")
    @click.option("--kind", default=None)
    @click.option("--queue", default=None)
    @click.pass_context
    def retry(ctx: click.Context, task_ids: tuple[int, ...], all_failed: bool, bulk_status: str | None,
              kind: str | None, queue: str | None) -> None:
        """Put failed, cancelled or dropped tasks back in their queue (attempts reset, history kept).

        `retry 12 13`, or `retry --failed [--kind K] [--queue Q]`.
        """
        bulk = bulk_status or ("failed" if all_failed else None)
        if bool(task_ids) == bool(bulk):
            raise click.UsageError("give task ids, or --failed (or --status S), not both")
        if (kind or queue) and not bulk:
            raise click.UsageError("--kind and --queue go with --failed or --status")
        with _client(ctx) as client:
            if bulk:
                n = client.retry_many(bulk, kind=kind, queue=queue)
                echo(f"retried {n} {bulk} task(s)")
                return
            refused = 0
            for task_id in task_ids:
                r = client.retry(task_id)
                if r.retried:
                    echo(f"task {task_id} queued again")
                else:
                    refused += 1
                    why = {"dedup_key_held": "its dedup key is held by a newer unfinished task",
                           "queue_full": "its queue is full (max_size): retry once workers drained it"}.get(
                        r.outcome, f"it is {r.status}: only failed, cancelled or dropped tasks can be retried")
                    echo(f"Error: task {task_id} not retried: {why}", err=True)
            echo(f"retried {len(task_ids) - refused} of {len(task_ids)} task(s)")
        if refused:
            ctx.exit(1)

    @command(main)
    @click.argument("task_ids", type=click.IntRange(min=1), nargs=-1, required=True)
    @click.pass_context
    def cancel(ctx: click.Context, task_ids: tuple[int, ...]) -> None:
        """Cancel tasks: waiting ones at once; running ones are asked to stop (an async
        handler is cancelled, a sync one finishes), and recorded as cancelled."""
        from ..errors import TaskNotFound
        failures = 0
        with _client(ctx) as client:
            for task_id in task_ids:
                try:
                    r = client.cancel(task_id)
                except TaskNotFound:
                    failures += 1
                    echo(f"Error: task {task_id}: no such task", err=True)
                    continue
                if r.cancelled:
                    echo(f"task {task_id} cancelled")
                elif r.requested:
                    echo(f"task {task_id} is running: asked to stop; it will be recorded as cancelled")
                else:
                    failures += 1
                    echo(f"Error: task {task_id} is {r.status}: already finished, nothing to cancel", err=True)
        if failures:
            ctx.exit(1)

    @command(main)
    @click.argument("queue")
    @click.pass_context
    def pause(ctx: click.Context, queue: str) -> None:
        """Pause QUEUE: it keeps accepting tasks, but none starts (running ones finish)."""
        with _client(ctx) as client:
            changed = client.pause(queue)
        echo(safe(f"queue {queue} paused" if changed else f"queue {queue} was already paused"))

    @command(main)
    @click.argument("queue")
    @click.pass_context
    def resume(ctx: click.Context, queue: str) -> None:
        """Resume QUEUE: its workers wake at once."""
        with _client(ctx) as client:
            changed = client.resume(queue)
        echo(safe(f"queue {queue} resumed" if changed else f"queue {queue} was not paused"))

    @command(main)
    @click.option("--status", required=True, type=click.Choice(["succeeded", "failed", "cancelled", "dropped"]))
    @click.option("--older-than", "older_than", required=True, type=DURATION,
                  help="Finished longer ago than this: 30d, 12h, 90m...")
    @click.pass_context
    def purge(ctx: click.Context, status: str, older_than: float) -> None:
        """Delete finished tasks of one status, in chunks (the pruner does this by itself
        after the retention; purge is for now)."""
        with _client(ctx) as client:
            n = client.purge(status, older_than)
        echo(f"purged {n} {status} task(s)")
