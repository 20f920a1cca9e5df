"""``angela-queue kinds``: the @task defaults recorded in angela_queue.kinds."""

from __future__ import annotations

import getpass
import socket

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..kinds import describe_limits
from ..terminal import safe
from . import command, echo, resolve_dsn


def _table(rows: list[dict]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name in ("KIND", "QUEUE", "PRIORITY", "MAX ATTEMPTS", "TIMEOUT", "BACKOFF", "BATCH", "LIMITS",
                 "RECORDED BY"):
        table.add_column(name, no_wrap=True)

    def shown(value: object, unit: str = "") -> str:
        return "-" if value is None else f"{value:g}{unit}" if isinstance(value, float) else str(value)

    for r in rows:
        backoff = "-" if r["backoff_base_s"] is None and r["backoff_max_s"] is None else (
            f"{shown(r['backoff_base_s'], 's')}..{shown(r['backoff_max_s'], 's')}")
        table.add_row(*[Text(safe(v)) for v in (
            r["kind"], shown(r["queue"]), shown(r["priority"]), shown(r["max_attempts"]),
            shown(r["timeout_s"], "s"), backoff, "yes" if r["batch"] else "no", describe_limits(r),
            r["updated_by"])])
    return table


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False, width=max(Console().width, 140))


def register(main: click.Group) -> None:
    @main.group()
    def kinds() -> None:
        """Each kind's @task defaults, which inserts from SQL and other languages get too."""

    @command(kinds, "sync")
    @click.option("--app", required=True, envvar="ANGELA_QUEUE_APP", show_envvar=True,
                  help="The module whose @task handlers to record.")
    @click.pass_context
    def sync(ctx: click.Context, app: str) -> None:
        """Record the @task defaults of every kind MODULE registers.

        Workers do this when they start; run it in a deploy step so that a
        kind's new defaults apply to inserts before the new workers are up.
        (`-` in the table: the kind leaves it to the queue's default.)
        """
        from .. import db, kinds as kinds_table, schema
        from ..registry import require_handlers
        require_handlers(app)
        with db.connect(resolve_dsn(ctx), application_name="angela-queue-kinds") as conn:
            schema.check(conn)
            changed = kinds_table.record(conn, f"kinds sync by {getpass.getuser()} on {socket.gethostname()}")
            rows = kinds_table.recorded(conn)
        from ..registry import registered_kinds
        mine = set(registered_kinds())
        _console().print(_table([r for r in rows if r["kind"] in mine]))
        echo(f"{len(mine)} kind(s) recorded, {len(changed)} changed.")

    @command(kinds, "list")
    @click.pass_context
    def list_kinds(ctx: click.Context) -> None:
        """Every recorded kind and its defaults."""
        from .. import db, kinds as kinds_table
        with db.connect(resolve_dsn(ctx), application_name="angela-queue-kinds") as conn:
            rows = kinds_table.recorded(conn)
        if not rows:
            echo("no kinds recorded yet (workers record theirs when they start; or run `kinds sync --app MODULE`)")
            return
        _console().print(_table(rows))

    @command(kinds, "limit")
    @click.argument("kind")
    @click.option("--concurrency", metavar="N|none",
                  help="At most N tasks of KIND running at once, across every worker and host; none lifts it.")
    @click.option("--rate", metavar="N/s|N/m|N/h|none",
                  help="At most N starts of KIND in any second, minute or hour; none lifts it.")
    @click.pass_context
    def limit(ctx: click.Context, kind: str, concurrency: str | None, rate: str | None) -> None:
        """Set or lift KIND's global limits (what @task(concurrency=, rate=) sets).

        A limit set here outlives deploys: a worker starting with @task
        limits overrides only the limits its decorator sets.
        """
        from .. import db
        from ..registry import parse_rate
        if concurrency is None and rate is None:
            raise click.UsageError("give --concurrency, --rate or both")
        values = {"kind": kind, "concurrency": None, "rate_limit": None, "rate_period_s": None,
                  "set_concurrency": concurrency is not None, "set_rate": rate is not None,
                  "updated_by": f"kinds limit by {getpass.getuser()} on {socket.gethostname()}"}
        if concurrency is not None and concurrency.lower() != "none":
            if not concurrency.isdigit() or not 1 <= int(concurrency) <= 1_000_000:
                raise click.BadParameter(f"must be a whole number from 1 to 1000000, or none (got {concurrency!r})",
                                         param_hint="--concurrency")
            values["concurrency"] = int(concurrency)
        if rate is not None and rate.lower() != "none":
            try:
                values["rate_limit"], values["rate_period_s"] = parse_rate(rate)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--rate") from None
        if not kind.strip() or len(kind.encode("utf-8", "surrogatepass")) > 255:
            raise click.BadParameter("must be a non-empty kind of at most 255 bytes", param_hint="KIND")
        with db.connect(resolve_dsn(ctx), application_name="angela-queue-kinds") as conn:
            lifting_only = values["concurrency"] is None and values["rate_limit"] is None
            if lifting_only and not any(r["kind"] == kind for r in db.fetch_all(conn, "kinds_list")):
                # Lifting a limit of a kind nobody recorded: a typo, most likely.
                echo(f"Error: no kind named {safe(kind)!r} is recorded (see `angela-queue kinds list`)", err=True)
                ctx.exit(1)
            row = db.fetch_one(conn, "kinds_set_limits", values)
        assert row is not None
        echo(f"{safe(kind)}: {describe_limits(row)}")

