"""``angela-queue dashboard``: the live web dashboard (see angela_queue.inspect.dashboard)."""

from __future__ import annotations

import sys

import click

from . import command, resolve_dsn, resolve_settings, settings_options


def register(main: click.Group) -> None:
    @command(main)
    @settings_options("dashboard")
    @click.pass_context
    def dashboard(ctx: click.Context, **flags) -> None:
        """Serve the live dashboard: queue depth per tier, throughput, latency, SLA and workers.

        Prints the URL once it listens. SIGTERM or Ctrl-C stops it. The page
        has no authentication: keep it on loopback (the default), or put it
        behind a proxy that has.
        """
        from ..inspect.dashboard import serve
        settings = resolve_settings(ctx, flags)
        sys.exit(serve(resolve_dsn(ctx, settings), settings.dashboard_host, settings.dashboard_port,
                       dead_after_s=settings.dead_after_s))
