"""``angela-queue run`` (the supervisor) and ``angela-queue status``."""

from __future__ import annotations

import logging
import os
import sys

import click

from . import env, resolve_dsn
from .worker import settings_from_flags, worker_options
from ..config import PROFILES


def supervisor_options(func):
    """Options of `run` on top of the worker's (which it passes on to its workers)."""
    options = [
        click.option("--profile", type=click.Choice(list(PROFILES)), default=None, envvar=env("profile"),
                     show_envvar=True,
                     help="The plan's profiles: low (2/2/4 workers, queue 20, every 300s), current (4/2/6, "
                          "50, 60s), high (6/4/8, 100, 30s). Explicit flags override it."),
        click.option("--min-workers", type=click.IntRange(min=0), default=None, envvar=env("min_workers"),
                     show_envvar=True, help="Never fewer worker processes (default 2)."),
        click.option("--max-workers", type=click.IntRange(min=1), default=None, envvar=env("max_workers"),
                     show_envvar=True, help="Never more worker processes (default 8, or 80% of the cores)."),
        click.option("--base-workers", type=click.IntRange(min=0), default=None, envvar=env("base_workers"),
                     show_envvar=True, help="Workers to start with (default 4, kept within min and max)."),
        click.option("--scale-interval", "scale_interval_s", type=click.FloatRange(min=0, min_open=True),
                     default=None, envvar=env("scale_interval_s"), show_envvar=True,
                     help="Seconds between scaling checks (default 30)."),
        click.option("--max-queue-size", type=click.IntRange(min=0), default=None, envvar=env("max_queue_size"),
                     help="Bound the served queues to this many queued tasks (the profile's by default)."),
        click.option("--retention", "retention_s", type=click.FloatRange(min=0, min_open=True), default=None,
                     envvar=env("retention_s"),
                     help="Seconds finished tasks are kept before the leader prunes them (default 7 days)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def register(main: click.Group) -> None:
    @main.command()
    @worker_options
    @supervisor_options
    @click.pass_context
    def run(ctx: click.Context, app: str | None, **flags) -> None:
        """Run the supervisor: worker processes scaled to the queue depth, kept healthy.

        SIGTERM or Ctrl-C stops it gracefully (a second one hurries the workers).
        """
        from ..errors import ConfigError
        from ..supervisor import Supervisor
        from ..worker import load_app
        if not app:
            raise click.UsageError("--app MODULE is required: the module whose @task handlers the workers run")
        settings = settings_from_flags(flags)
        # Import the app here too: a typo fails now with one clear line instead
        # of as a crash loop of workers, and the handlers' timeouts are known
        # to the stuck check.
        try:
            load_app(app)
        except Exception as exc:  # noqa: BLE001 - any import-time error is the user's to see
            raise ConfigError(f"cannot import --app {app!r}: {type(exc).__name__}: {exc}") from exc
        dsn = resolve_dsn(ctx)
        # Workers log at the level the supervisor was given (--log-level or -v).
        log_level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        if log_level == "WARNING":
            # --log-level WARNING promises "only failures and decisions": the
            # workers' per-task lines go, the supervisor's decisions stay.
            for name in ("angela_queue.supervisor", "angela_queue.maintenance"):
                logging.getLogger(name).setLevel(logging.INFO)
        # The workers inherit this environment: ANGELA_QUEUE_* settings that
        # have no flag, and whatever the app needs (PYTHONPATH, its own config).
        supervisor = Supervisor(settings, dsn, app=app, verbose=bool(ctx.obj.get("verbose")),
                                log_level=log_level if isinstance(log_level, str) else None,
                                environ=dict(os.environ))
        sys.exit(supervisor.run())

    @main.command()
    @click.option("--all", "include_stopped", is_flag=True, help="Also show stopped and dead supervisors and workers.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
    @click.pass_context
    def status(ctx: click.Context, include_stopped: bool, as_json: bool) -> None:
        """Queues (depth per tier, oldest wait, SLA), supervisors and workers."""
        from .. import db
        from ..inspect import status as status_mod
        from ..config import load_settings
        settings = load_settings()
        with db.connect(resolve_dsn(ctx), application_name="angela-queue-status") as conn:
            snap = status_mod.collect(conn, include_stopped=include_stopped, dead_after_s=settings.dead_after_s)
        click.echo(status_mod.to_json(snap) if as_json else status_mod.render(snap))
