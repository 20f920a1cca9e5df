"""``angela-queue status``: queues, trouble, supervisors and workers."""

from __future__ import annotations

import click

from . import command, echo, resolve_dsn, resolve_settings


def register(main: click.Group) -> None:
    @command(main)
    @click.option("--all", "include_stopped", is_flag=True, help="Also show stopped and dead supervisors and workers.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
    @click.pass_context
    def status(ctx: click.Context, include_stopped: bool, as_json: bool) -> None:
        """Queues (depth per tier, oldest wait, SLA), supervisors and workers."""
        from .. import db, schema
        from ..inspect import status as status_mod
        settings = resolve_settings(ctx, {})
        with db.connect(resolve_dsn(ctx, settings), application_name="angela-queue-status") as conn:
            schema.check(conn)
            snap = status_mod.collect(conn, include_stopped=include_stopped, dead_after_s=settings.dead_after_s)
        echo(status_mod.to_json(snap) if as_json else status_mod.render(snap))
