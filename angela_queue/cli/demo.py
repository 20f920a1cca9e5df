"""``angela-queue demo``: a supervisor, the dashboard and the plan's workload (angela_queue.demo)."""

from __future__ import annotations

import os
import sys

import click

from . import command, resolve_settings, state

# With no DSN, the demo gets a database of its own on the embedded server:
# its kinds' recorded defaults (angela_queue.kinds) and its tasks never mix
# with the user's (the quick start's chat_reply, say).
DEMO_DATABASE = "angela_queue_demo"


def register(main: click.Group) -> None:
    @command(main)
    @click.option("--duration", type=click.FloatRange(min=0, min_open=True, max=1e9), default=None,
                  metavar="SECONDS", help="Stop by itself after this many seconds (default: run until Ctrl-C).")
    @click.option("--rate", type=click.FloatRange(min=0, min_open=True, max=1000), default=None,
                  metavar="TASKS_PER_SECOND", help="Tasks enqueued per second, on average (default 4).")
    @click.option("--port", type=click.IntRange(0, 65535), default=None,
                  help="Dashboard port (default the dashboard's, 8080; 0 picks a free one). "
                       "[env: ANGELA_QUEUE_DASHBOARD_PORT]")
    @click.option("--seed", type=int, default=None, help="Seed of the workload generator (default: random).")
    @click.pass_context
    def demo(ctx: click.Context, duration: float | None, rate: float | None, port: int | None,
             seed: int | None) -> None:
        """Run a live demo: a supervisor, the dashboard and a generator of the plan's workload.

        Conversations of importance 1-10 (mean 8.6; some emotional, some
        urgent, some questions), routine low-priority learning analysis in
        bursts that make the pool scale, memory updates that sometimes fail,
        and slow reports, all in the queue 'demo'. Prints the dashboard's URL
        (with its action token) once it answers. Ctrl-C or SIGTERM stops
        everything and exits 0.

        With no DSN it uses the database angela_queue_demo on the embedded
        server; with --dsn, the tasks go into that database's queue 'demo'
        (give it a scratch database: the demo records its kinds' defaults).
        """
        from ..db import describe_dsn
        from ..demo import Demo
        from ..demo.runner import DEFAULT_RATE
        settings = resolve_settings(ctx, {"dashboard_port": port})
        st = state(ctx)
        log_args = ("-v",) if st.verbose else ("--log-level", "WARNING")
        runner = Demo(rate=rate if rate is not None else DEFAULT_RATE, duration_s=duration,
                      port=settings.dashboard_port, seed=seed, environ=dict(os.environ),
                      out=click.echo, log_args=(*log_args, "--log-format", st.log_format))
        with runner.signals():
            dsn, label = _database(settings.dsn, describe_dsn)
            if runner.stopping:
                click.echo("angela-queue demo: stopped before it started")
                sys.exit(0)
            sys.exit(runner.run(dsn, label))


def _database(dsn: str | None, describe) -> tuple[str, str]:
    """The demo's DSN, migrated, and how to name it to a person."""
    from .. import migrations
    if dsn:
        migrations.upgrade(dsn)
        return dsn, describe(dsn)
    from .. import embedded
    click.echo("angela-queue demo: starting the embedded Postgres ...", err=True)
    embedded.ensure_running()
    server = embedded.EmbeddedServer(embedded.configured_data_dir())
    with server.locked():
        server.create_database(DEMO_DATABASE)
    dsn = server.dsn(DEMO_DATABASE)
    migrations.upgrade(dsn)
    return dsn, f"{describe(dsn)} (the embedded server; a database of the demo's own)"
