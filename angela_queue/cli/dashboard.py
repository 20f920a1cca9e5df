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
        """Serve the dashboard: depth, throughput, latency and SLA per tier, history, failures, tasks, workers.

        Prints the URL once it listens. SIGTERM or Ctrl-C stops it. Reading
        is open: keep it on loopback (the default), or behind a proxy that
        authenticates. The actions (retry, cancel, pause, resume) need a
        bearer token: ANGELA_QUEUE_DASHBOARD_TOKEN, else one generated at
        start, carried in the printed URL (#token=...). A login of the
        angela_queue_reader role makes the page read only.
        """
        from ..inspect.dashboard import serve
        settings = resolve_settings(ctx, flags)
        sys.exit(serve(resolve_dsn(ctx, settings), settings.dashboard_host, settings.dashboard_port,
                       dead_after_s=settings.dead_after_s, token=settings.dashboard_token))
