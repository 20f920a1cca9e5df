"""``angela-queue dashboard``: the live web dashboard (see angela_queue.dashboard)."""

from __future__ import annotations

import sys

import click

from . import env, resolve_dsn


def register(main: click.Group) -> None:
    main.add_command(dashboard)


@click.command()
@click.option("--host", default="127.0.0.1", envvar=env("dashboard_host"), show_envvar=True, show_default=True,
              help="Address to listen on. The page has no authentication: keep it on loopback, or put it "
                   "behind a proxy that has.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, envvar=env("dashboard_port"),
              show_envvar=True, show_default=True, help="Port to listen on; 0 picks a free one.")
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int) -> None:
    """Serve the live dashboard: queue depth per tier, throughput, latency, SLA and workers.

    Prints the URL once it listens. SIGTERM or Ctrl-C stops it.
    """
    from ..config import load_settings
    from ..inspect.dashboard import serve
    settings = load_settings()
    sys.exit(serve(resolve_dsn(ctx), host, port, dead_after_s=settings.dead_after_s))
