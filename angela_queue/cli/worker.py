"""``angela-queue worker``: one worker process in the foreground."""

from __future__ import annotations

import sys
import uuid

import click

from . import command, resolve_dsn, resolve_settings, settings_options


def register(main: click.Group) -> None:
    @command(main)
    @settings_options("worker", "maintenance")
    @click.option("--supervisor-id", type=click.UUID, default=None, hidden=True)
    @click.option("--supervisor-pid", type=int, default=None, hidden=True)
    @click.option("--worker-id", type=click.UUID, default=None, hidden=True)
    @click.pass_context
    def worker(ctx: click.Context, supervisor_id: uuid.UUID | None, supervisor_pid: int | None,
               worker_id: uuid.UUID | None, **flags) -> None:
        """Run one worker process in the foreground (Ctrl-C stops it gracefully).

        Standalone workers also share the maintenance lease: when no
        supervisor leads, one of them reclaims the tasks of dead workers,
        promotes delayed tasks and prunes old rows.
        """
        from ..registry import require_handlers
        from ..worker import Worker
        settings = resolve_settings(ctx, flags)
        require_handlers(settings.app)
        settings = settings.replace(dsn=resolve_dsn(ctx, settings))
        code = Worker(settings, worker_id=worker_id, supervisor_id=supervisor_id,
                      supervisor_pid=supervisor_pid).run()
        sys.exit(code)
