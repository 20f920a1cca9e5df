"""``angela-queue migrate``: bring the schema up to date."""

from __future__ import annotations

import click

from . import command, echo, resolve_dsn


def register(main: click.Group) -> None:
    @command(main)
    @click.pass_context
    def migrate(ctx: click.Context) -> None:
        """Bring the database schema up to date (safe to run at any time, from several hosts)."""
        from .. import db, migrations
        from ..roles import missing_roles
        import psycopg
        dsn = resolve_dsn(ctx)
        try:
            revision = migrations.upgrade(dsn)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise click.ClickException(
                f"{db.first_line(exc)}: migrate creates and alters the angela_queue schema, so it must run as "
                "the database's owner (or the schema's, once it exists), or a superuser") from None
        echo(f"schema angela_queue is at revision {revision}")
        # Again at head: roles a DBA created after the schema get their grants
        # now (idempotent). Grants need the schema's owner.
        try:
            granted = migrations.grant_roles(dsn)
        except psycopg.errors.InsufficientPrivilege:
            echo("roles not granted: only the schema's owner may grant; run migrate as the owner")
            return
        with db.connect(dsn, application_name="angela-queue-migrate") as conn:
            missing = missing_roles(conn)
        if not granted:
            echo(f"roles missing ({', '.join(missing)}): this login may not create them; have a DBA run "
                 "the SQL that `angela-queue roles --sql` prints")
        else:
            echo("roles angela_queue_producer, angela_queue_worker and angela_queue_reader are granted")
