"""The ``angela-queue`` command line.

Every setting is a flag here and a variable in the environment, named after
the flag (``--max-workers`` -> ``ANGELA_QUEUE_MAX_WORKERS``); config.py reads
the environment, the CLI only passes on what was typed. ``--dsn`` works
before or after the command (``angela-queue migrate --dsn URL``). Errors
print one line and exit 1, never a traceback (``-v`` shows it); everything
printed that came from the database or the user is made terminal-safe.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
import psycopg

from .. import __version__
from ..config import LOG_LEVELS, OPTIONS, Settings, from_env, load_settings
from ..errors import AngelaQueueError
from ..logs import LOG_FORMATS, TEXT_FORMAT, JsonFormatter
from ..terminal import safe, safe_lines


class TerminalSafeFormatter(logging.Formatter):
    """Log lines carry kinds, queue names and handler errors: data from the
    database, escaped like everything else the CLI prints (newlines kept,
    for tracebacks)."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_lines(super().format(record))


@dataclass
class CliState:
    """What the group's options decided, for the command that runs."""

    dsn: str | None = None
    verbose: bool = False
    log_level: str | None = None
    log_format: str = "text"


class FriendlyGroup(click.Group):
    """Turns expected failures into a one-line ``Error: ...`` and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (AngelaQueueError, psycopg.Error, ValueError, OSError) as exc:
            state = ctx.obj if isinstance(ctx.obj, CliState) else None
            if state is not None and state.verbose:
                raise
            text = str(exc).strip()
            message = text.splitlines()[0] if text else type(exc).__name__
            click.echo(f"Error: {safe(message)}", err=True)
            ctx.exit(1)


def state(ctx: click.Context) -> CliState:
    return ctx.find_root().ensure_object(CliState)


def _remember_dsn(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        state(ctx).dsn = value


def dsn_option(func: Callable) -> Callable:
    """``--dsn`` on a command too, as users type it: ``angela-queue migrate --dsn URL``."""
    return click.option("--dsn", callback=_remember_dsn, expose_value=False, is_eager=True,
                        help="PostgreSQL DSN (also before the command; env ANGELA_QUEUE_DSN or "
                             "DATABASE_URL). Default: a local embedded Postgres.")(func)


def _click_type(option) -> Any:
    if option.choices:
        return click.Choice(list(option.choices))
    kind = Settings.__dataclass_fields__[option.field].type
    if kind.startswith("int"):
        return click.INT
    if kind.startswith("float"):
        return click.FLOAT
    return click.STRING


def settings_options(*scopes: str) -> Callable[[Callable], Callable]:
    """The click options of every setting in ``scopes`` (see config.OPTIONS), passed to
    the command as keyword arguments named after the Settings fields (None: not given)."""
    def decorate(func: Callable) -> Callable:
        for option in reversed([o for o in OPTIONS if o.scope in scopes]):
            multiple = option.field == "queues"
            func = click.option(option.flag, option.field, type=_click_type(option), multiple=multiple,
                                default=None, help=f"{option.help} [env: {option.env}]")(func)
        return func
    return decorate


def resolve_settings(ctx: click.Context, flags: dict[str, Any]) -> Settings:
    """Settings from this command's flags, the group's (--dsn, --log-level), the
    environment and the defaults."""
    given = dict(flags)
    queues = given.pop("queues", None)
    if queues:
        given["queues"] = tuple(q.strip() for item in queues for q in item.split(",") if q.strip())
    st = state(ctx)
    given["dsn"] = st.dsn
    given["log_level"] = st.log_level
    given["log_format"] = st.log_format
    return load_settings(given)


def resolve_dsn(ctx: click.Context, settings: Settings | None = None) -> str:
    """The DSN from --dsn, ANGELA_QUEUE_DSN or DATABASE_URL; else start the embedded server."""
    dsn = settings.dsn if settings is not None else (state(ctx).dsn or from_env().get("dsn"))
    if dsn:
        return dsn
    from .. import embedded
    return embedded.ensure_running()


def command(group: click.Group, *args: Any, **kwargs: Any) -> Callable[[Callable], Callable]:
    """``group.command`` with ``--dsn`` accepted after the command name too."""
    def decorate(func: Callable) -> Callable:
        return group.command(*args, **kwargs)(dsn_option(func))
    return decorate


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dsn", help="PostgreSQL DSN (env ANGELA_QUEUE_DSN or DATABASE_URL). "
                            "Default: a local embedded Postgres started on demand.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs, and tracebacks on errors.")
@click.option("--log-level", type=click.Choice(list(LOG_LEVELS), case_sensitive=False), default=None,
              help="INFO (default) logs one line per task; WARNING keeps only failures and decisions. "
                   "[env: ANGELA_QUEUE_LOG_LEVEL]")
@click.option("--log-format", type=click.Choice(list(LOG_FORMATS)), default=None,
              help="text (default), or json: one object per line, with each task's outcome and each scaling "
                   "decision as fields. [env: ANGELA_QUEUE_LOG_FORMAT]")
@click.version_option(__version__, prog_name="angela-queue")
@click.pass_context
def main(ctx: click.Context, dsn: str | None, verbose: bool, log_level: str | None, log_format: str | None) -> None:
    """angela-queue: a durable job queue for Python, backed by PostgreSQL."""
    st = state(ctx)
    if dsn:
        st.dsn = dsn
    st.verbose = verbose
    chosen_format = log_format or from_env().get("log_format") or "text"
    if chosen_format not in LOG_FORMATS:
        raise click.BadParameter(f"ANGELA_QUEUE_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}",
                                 param_hint="--log-format")
    st.log_format = chosen_format
    level = "DEBUG" if verbose else (log_level or from_env().get("log_level") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise click.BadParameter(f"ANGELA_QUEUE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}",
                                 param_hint="--log-level")
    st.log_level = level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen_format == "json" else TerminalSafeFormatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])
    if not verbose:
        # Alembic narrates every plugin and step at INFO; migrate prints its own summary.
        logging.getLogger("alembic").setLevel(logging.WARNING)


def echo(text: str, **kwargs: Any) -> None:
    """click.echo for text that is already terminal-safe (built with terminal.safe)."""
    click.echo(text, **kwargs)


@functools.cache
def _registered() -> bool:
    """Commands that live in their own modules. Imported here, at the end,
    because each module imports ``main`` and the helpers from this one."""
    from . import dashboard, db, demo, kinds, migrate, periodic, roles, status, supervisor, tasks, worker
    for module in (migrate, tasks, db, worker, supervisor, status, dashboard, roles, kinds, periodic, demo):
        module.register(main)
    return True


_registered()
