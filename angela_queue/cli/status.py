"""``angela-queue status``: trouble first, then queues, supervisors and workers."""

from __future__ import annotations

import click

from . import command, echo, resolve_dsn, resolve_settings


def register(main: click.Group) -> None:
    @command(main)
    @click.option("--all", "include_stopped", is_flag=True, help="Also show stopped and dead supervisors and workers.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
    @click.option("--watch", is_flag=True, help="A live view, like top: refreshed every second until Ctrl-C.")
    @click.pass_context
    def status(ctx: click.Context, include_stopped: bool, as_json: bool, watch: bool) -> None:
        """Trouble first (failures, unserved kinds, paused queues, drops), then queues
        (depth per tier, oldest wait, SLA), supervisors and workers."""
        from .. import db, schema
        from ..inspect import status as status_mod
        settings = resolve_settings(ctx, {})
        with db.connect(resolve_dsn(ctx, settings), application_name="angela-queue-status") as conn:
            schema.check(conn)

            def snapshot():
                return status_mod.collect(conn, include_stopped=include_stopped,
                                          dead_after_s=settings.dead_after_s)

            if watch:
                watch_live(snapshot)
                return
            snap = snapshot()
        echo(status_mod.to_json(snap) if as_json else status_mod.render(snap))


def watch_live(snapshot) -> None:
    """Redraw the status every second until Ctrl-C (or SIGTERM)."""
    import time

    from rich.console import Console
    from rich.live import Live

    from ..inspect.status import renderable
    console = Console(highlight=False)
    try:
        with Live(renderable(snapshot()), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(1.0)
                live.update(renderable(snapshot()))
    except KeyboardInterrupt:
        pass
