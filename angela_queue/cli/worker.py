"""``angela-queue worker``: one worker process in the foreground."""

from __future__ import annotations

import sys
import uuid

import click

from . import env, resolve_dsn


def worker_options(func):
    """Options shared by `worker` and `run` (the supervisor passes them on)."""
    options = [
        click.option("--app", "app", envvar=env("app"), show_envvar=True,
                     help="Module to import; its @task decorators register the handlers."),
        click.option("--queue", "queues", multiple=True, envvar=env("queues"), show_envvar=True,
                     help="Queue to serve (repeat for several). Default: 'default'."),
        click.option("--concurrency", type=click.IntRange(min=1), default=None, envvar=env("concurrency"),
                     show_envvar=True, help="Tasks at once per worker process (default 1)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, envvar=env("batch_size"),
                     help="Low-priority (< 5) tasks of one kind claimed together (default 5)."),
        click.option("--batch-wait", "batch_wait_s", type=click.FloatRange(min=0), default=None,
                     envvar=env("batch_wait_s"), help="Seconds a low-priority batch waits to fill (default 2)."),
        click.option("--default-timeout", "default_timeout_s", type=click.FloatRange(min=0, min_open=True),
                     default=None, envvar=env("default_timeout_s"),
                     help="Seconds a task may run when neither it nor its handler sets a timeout."),
        click.option("--shutdown-grace", "shutdown_grace_s", type=click.FloatRange(min=0), default=None,
                     envvar=env("shutdown_grace_s"),
                     help="Seconds running tasks get to finish on SIGTERM before they are released (default 30)."),
        click.option("--heartbeat-interval", "heartbeat_interval_s", type=click.FloatRange(min=0, min_open=True),
                     default=None, envvar=env("heartbeat_interval_s"), help="Seconds between heartbeats (default 2)."),
        click.option("--poll-interval", "poll_slow_s", type=click.FloatRange(min=0, min_open=True), default=None,
                     envvar=env("poll_slow_s"),
                     help="Idle poll backstop in seconds (default 1.0; NOTIFY wakes workers sooner)."),
        click.option("--stuck-after", "stuck_after_s", type=click.FloatRange(min=0, min_open=True), default=None,
                     envvar=env("stuck_after_s"), help="Seconds without progress before a worker is stuck (default 60)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from_flags(flags: dict):
    from ..config import load_settings
    given = dict(flags)
    queues = given.pop("queues", None)
    if queues:
        given["queues"] = tuple(q for item in queues for q in item.split(",") if q)
    given.pop("app", None)
    return load_settings(given)


def register(main: click.Group) -> None:
    @main.command()
    @worker_options
    @click.option("--supervisor-id", type=click.UUID, default=None, hidden=True)
    @click.option("--supervisor-pid", type=int, default=None, hidden=True)
    @click.option("--worker-id", type=click.UUID, default=None, hidden=True)
    @click.pass_context
    def worker(ctx: click.Context, app: str | None, supervisor_id: uuid.UUID | None,
               supervisor_pid: int | None, worker_id: uuid.UUID | None, **flags) -> None:
        """Run one worker process in the foreground (Ctrl-C stops it gracefully)."""
        from ..worker import Worker, load_app
        settings = settings_from_flags(flags)
        load_app(app)
        dsn = resolve_dsn(ctx)
        code = Worker(settings, dsn, worker_id=worker_id, supervisor_id=supervisor_id,
                      supervisor_pid=supervisor_pid).run()
        sys.exit(code)
