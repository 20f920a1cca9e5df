"""``angela-queue migrate``: bring the schema up to date."""

from __future__ import annotations

import click

from . import command, echo, resolve_dsn


def register(main: click.Group) -> None:
    @command(main)
    @click.pass_context
    def migrate(ctx: click.Context) -> None:
        """Bring the database schema up to date (safe to run at any time, from several hosts)."""
        from .. import migrations
        revision = migrations.upgrade(resolve_dsn(ctx))
        echo(f"schema angela_queue is at revision {revision}")
