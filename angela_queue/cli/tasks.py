"""Commands that act on tasks: ``enqueue`` and ``cancel``."""

from __future__ import annotations

import datetime as dt
import json

import click

from ..terminal import safe
from . import command, echo, resolve_dsn


def _parse_payload(ctx: click.Context, param: click.Parameter, value: str | None) -> dict:
    if value is None:
        return {}
    try:
        payload = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(payload, dict):
        raise click.BadParameter(f"must be a JSON object like '{{\"key\": 1}}', not {type(payload).__name__}")
    return payload


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
        from ..client import Client
        from ..tasks import TaskSpec
        if run_at is not None and run_at.tzinfo is None:
            run_at = run_at.replace(tzinfo=dt.timezone.utc)
        options = dict(priority=priority, queue=queue, delay=delay, run_at=run_at, max_attempts=max_attempts,
                       timeout=timeout, dedup_key=dedup_key)
        TaskSpec.build(kind, payload, **options)  # validate before any connection is opened
        with Client(resolve_dsn(ctx)) as client:
            task = client.enqueue(kind, payload, **options)
        note = " (duplicate: existing task returned)" if task.duplicate else ""
        if task.dropped:
            note = f" ({task.last_error})"
        echo(safe(f"task {task.id} {task.status} kind={task.kind} queue={task.queue} priority={task.priority} "
                  f"boost={task.boost} tier={task.tier}{note}"))

    @command(main)
    @click.argument("task_id", type=click.IntRange(min=1))
    @click.pass_context
    def cancel(ctx: click.Context, task_id: int) -> None:
        """Cancel a task that has not started yet."""
        from ..client import Client
        with Client(resolve_dsn(ctx)) as client:
            result = client.cancel(task_id)
        if result.cancelled:
            echo(f"task {task_id} cancelled")
        else:
            raise click.ClickException(
                f"task {task_id} is {result.status}; only scheduled or queued tasks can be cancelled")
