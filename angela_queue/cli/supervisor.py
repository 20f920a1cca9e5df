"""``angela-queue run``: the supervisor."""

from __future__ import annotations

import logging
import os
import sys

import click

from . import command, resolve_dsn, resolve_settings, settings_options, state


def register(main: click.Group) -> None:
    @command(main)
    @settings_options("worker", "maintenance", "supervisor")
    @click.pass_context
    def run(ctx: click.Context, **flags) -> None:
        """Run the supervisor: worker processes scaled to the queue depth, kept healthy.

        SIGTERM or Ctrl-C stops it gracefully (a second one hurries the workers).
        """
        from ..errors import ConfigError
        from ..registry import require_handlers
        from ..supervisor import Supervisor
        settings = resolve_settings(ctx, flags)
        if not settings.app:
            raise ConfigError("--app MODULE is required: the module whose @task handlers the workers run "
                              "(or set ANGELA_QUEUE_APP)")
        # Import the app here too: a typo fails now with one clear line instead
        # of as a crash loop of workers, and the handlers' timeouts are known
        # to the stuck check.
        require_handlers(settings.app)
        settings = settings.replace(dsn=resolve_dsn(ctx, settings))
        if settings.log_level == "WARNING":
            # --log-level WARNING promises "only failures and decisions": the
            # workers' per-task lines go, the supervisor's decisions stay.
            for name in ("angela_queue.supervisor", "angela_queue.maintenance"):
                logging.getLogger(name).setLevel(logging.INFO)
        # The workers inherit this environment (whatever the app needs:
        # PYTHONPATH, its own config); their settings come from ours.
        supervisor = Supervisor(settings, verbose=state(ctx).verbose, environ=dict(os.environ))
        sys.exit(supervisor.run())
