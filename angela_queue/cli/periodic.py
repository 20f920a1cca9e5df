"""``angela-queue periodic``: the tasks the maintenance leader enqueues on a schedule."""

from __future__ import annotations

import json

import click
from ..inspect.status import periodic_table
from ..terminal import safe
from . import command, echo, resolve_dsn


def register(main: click.Group) -> None:
    @main.group()
    def periodic() -> None:
        """Periodic tasks (@task(cron=/every=), or rows in angela_queue.periodic)."""

    @command(periodic, "list")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per periodic task.")
    @click.pass_context
    def list_periodic(ctx: click.Context, as_json: bool) -> None:
        """Every periodic task: its schedule, the last slot enqueued and the next one."""
        from .. import db
        with db.connect(resolve_dsn(ctx), application_name="angela-queue-periodic") as conn:
            rows = db.fetch_all(conn, "periodic_status")
        if as_json:
            for r in rows:
                echo(json.dumps(r, default=str))
            return
        if not rows:
            echo("no periodic tasks (declare one with @task(..., cron=...) or every=, or insert into "
                 "angela_queue.periodic)")
            return
        from .kinds import _console
        _console().print(periodic_table(rows))

    for verb, query, done in (("pause", "periodic_pause", "paused: no slot is enqueued until it is resumed"),
                              ("resume", "periodic_resume", "resumed: the latest slot missed meanwhile runs next"),
                              ("remove", "periodic_remove", "removed (one declared in code comes back when a "
                                                            "worker whose code still declares it starts)")):
        def make(verb: str = verb, query: str = query, done: str = done):
            @command(periodic, verb)
            @click.argument("name")
            @click.pass_context
            def act(ctx: click.Context, name: str) -> None:
                from .. import db
                with db.connect(resolve_dsn(ctx), application_name="angela-queue-periodic") as conn:
                    row = db.fetch_one(conn, query, {"name": name})
                if row is None:
                    echo(f"Error: no periodic task named {safe(name)!r} (see `angela-queue periodic list`)",
                         err=True)
                    ctx.exit(1)
                echo(f"periodic task {safe(name)} {done}")
            act.__doc__ = f"{verb.capitalize()} one periodic task."
        make()
