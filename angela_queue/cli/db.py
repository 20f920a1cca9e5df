"""``angela-queue db``: the embedded Postgres used when no DSN is given.

The server's data dir is ANGELA_QUEUE_EMBEDDED_DIR, else a per-user default
(see angela_queue.embedded). Its DSN carries the superuser's password: only
``db url`` prints it whole.
"""

from __future__ import annotations

import click

from . import dsn_option


def register(main: click.Group) -> None:
    main.add_command(db)


@click.group()
def db() -> None:
    """The local embedded Postgres, used when no DSN is given."""


@db.command()
@dsn_option
@click.pass_context
def url(ctx: click.Context) -> None:
    """Print the DSN commands use; with no DSN given, start the embedded server if
    needed and print its DSN, password included (readable by its owner only)."""
    from . import resolve_dsn
    click.echo(resolve_dsn(ctx))


@db.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Show whether the embedded server runs, and where."""
    from .. import embedded
    from ..db import describe_dsn
    info = embedded.EmbeddedServer(embedded.configured_data_dir()).status()
    state = f"running (pid {info['pid']})" if info["running"] else (
        "stopped" if info["initialized"] else "not created yet")
    click.echo(f"embedded server: {state}")
    click.echo(f"data dir: {info['data_dir']}")
    if info["port"] is not None:
        click.echo(f"port: {info['port']}")
    if info["running"]:
        # Without the password: status output gets pasted into chats and tickets.
        dsn = describe_dsn(info["dsn"].rsplit("/", 1)[0] + f"/{embedded.DATABASE}")
        click.echo(f"dsn: {dsn} (password: angela-queue db url prints the DSN with it)")
    if info["initialized"]:
        click.echo(f"password file: {info['password_file']}")
    click.echo(f"log: {info['log_file']}")
    from ..config import from_env
    from . import state
    if state(ctx).dsn or from_env().get("dsn"):
        # Otherwise people read "running" and assume their commands go there.
        click.echo("note: a DSN is given (--dsn, ANGELA_QUEUE_DSN or DATABASE_URL), "
                   "so commands use that database, not this server")


@db.command()
def stop() -> None:
    """Stop the embedded server (commands start it again when they need it)."""
    from .. import embedded
    server = embedded.EmbeddedServer(embedded.configured_data_dir())
    if server.stop():
        click.echo(f"embedded server in {server.data_dir} stopped")
    else:
        click.echo(f"embedded server in {server.data_dir} was not running")
