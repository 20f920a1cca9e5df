"""The ``angela-queue`` command line.

Every option can also come from an environment variable named
``ANGELA_QUEUE_<OPTION>`` (``--concurrency`` -> ``ANGELA_QUEUE_CONCURRENCY``);
the DSN also from ``DATABASE_URL``. Errors print one line and exit non-zero,
never a traceback (``-v`` shows it).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
import psycopg

from .. import __version__
from ..errors import AngelaQueueError

ENV_PREFIX = "ANGELA_QUEUE"


class FriendlyGroup(click.Group):
    """Turns expected failures into a one-line ``Error: ...`` and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (AngelaQueueError, psycopg.Error, ValueError, OSError) as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            click.echo(f"Error: {message}", err=True)
            ctx.exit(1)


def env(name: str) -> str:
    """The environment variable an option reads: --max-workers -> ANGELA_QUEUE_MAX_WORKERS."""
    return f"{ENV_PREFIX}_{name.upper().replace('-', '_')}"


def resolve_dsn(ctx: click.Context) -> str:
    """--dsn, then ANGELA_QUEUE_DSN, then DATABASE_URL (click resolved those), else embedded."""
    dsn = ctx.obj.get("dsn")
    if dsn:
        return dsn
    from .. import embedded
    return embedded.ensure_running()


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dsn", envvar=[env("dsn"), "DATABASE_URL"], show_envvar=True,
              help="PostgreSQL DSN. Default: a local embedded Postgres started on demand.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs, and tracebacks on errors.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", envvar=env("log_level"), show_envvar=True, show_default=True,
              help="INFO logs one line per task; WARNING keeps only failures and decisions.")
@click.version_option(__version__, prog_name="angela-queue")
@click.pass_context
def main(ctx: click.Context, dsn: str | None, verbose: bool, log_level: str) -> None:
    """angela-queue: a durable job queue for Python, backed by PostgreSQL."""
    ctx.ensure_object(dict)
    ctx.obj.update(dsn=dsn, verbose=verbose)
    logging.basicConfig(level=logging.DEBUG if verbose else getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    if not verbose:
        # Alembic narrates every plugin and step at INFO; migrate prints its own summary.
        logging.getLogger("alembic").setLevel(logging.WARNING)


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Bring the database schema up to date (safe to run at any time, from several hosts)."""
    from .. import migrations
    dsn = resolve_dsn(ctx)
    revision = migrations.upgrade(dsn)
    click.echo(f"schema angela_queue is at revision {revision}")


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


@main.command()
@click.argument("kind")
@click.option("--payload", callback=_parse_payload, envvar=env("payload"), help="JSON object, e.g. '{\"to\": \"x\"}'.")
@click.option("--priority", type=click.IntRange(1, 10), default=None, envvar=env("priority"),
              help="1-10 (default 5): 9-10 critical, 7-8 high, 5-6 medium, 1-4 low.")
@click.option("--queue", default=None, envvar=env("queue"), help="Queue name (default 'default').")
@click.option("--delay", type=click.FloatRange(min=0), default=None, envvar=env("delay"),
              help="Seconds from now before the task may start.")
@click.option("--run-at", type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z",
                                                        "%Y-%m-%dT%H:%M:%S"]),
              default=None, envvar=env("run_at"), help="When the task may start (ISO 8601; UTC if no offset).")
@click.option("--max-attempts", type=click.IntRange(min=1), default=None, envvar=env("max_attempts"))
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, envvar=env("timeout"),
              help="Seconds one attempt may run.")
@click.option("--dedup-key", default=None, envvar=env("dedup_key"),
              help="Skip the enqueue while an unfinished task has this key.")
@click.pass_context
def enqueue(ctx: click.Context, kind: str, payload: dict, priority: int | None, queue: str | None,
            delay: float | None, run_at, max_attempts: int | None, timeout: float | None,
            dedup_key: str | None) -> None:
    """Enqueue one task of KIND and print its id and status."""
    import datetime as dt

    from ..client import Client
    if run_at is not None and run_at.tzinfo is None:
        run_at = run_at.replace(tzinfo=dt.timezone.utc)
    with Client(resolve_dsn(ctx)) as client:
        task = client.enqueue(kind, payload, priority=priority, queue=queue, delay=delay, run_at=run_at,
                              max_attempts=max_attempts, timeout=timeout, dedup_key=dedup_key)
    note = " (duplicate: existing task returned)" if task.duplicate else ""
    if task.dropped:
        note = f" ({task.last_error})"
    click.echo(f"task {task.id} {task.status} kind={task.kind} queue={task.queue} priority={task.priority} "
               f"boost={task.boost} tier={task.tier}{note}")


@main.command()
@click.argument("task_id", type=click.IntRange(min=1))
@click.pass_context
def cancel(ctx: click.Context, task_id: int) -> None:
    """Cancel a task that has not started yet."""
    from ..client import Client
    with Client(resolve_dsn(ctx)) as client:
        result = client.cancel(task_id)
    if result.cancelled:
        click.echo(f"task {task_id} cancelled")
    else:
        raise click.ClickException(f"task {task_id} is {result.status}; only scheduled or queued tasks can be cancelled")


def _register_commands() -> None:
    """Commands that live in their own modules. Imported here, at the end,
    because each module imports ``main``/``env``/``resolve_dsn`` from this one."""
    from . import dashboard, db, supervisor, worker
    for module in (db, worker, supervisor, dashboard):
        module.register(main)


_register_commands()
