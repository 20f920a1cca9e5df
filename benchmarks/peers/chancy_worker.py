"""One chancy worker process, as ``chancy --app APP worker start`` runs one:

    python -m benchmarks.peers.chancy_worker

``async with chancy: async with Worker(chancy) as worker: await
worker.wait_for_shutdown()``, the documented shape, with chancy's default
plugins. The Worker stops on SIGTERM (its own signal handler) and flushes its
pending job updates before it returns. The one change from the defaults is
the log level: chancy logs a line per job at INFO, and every system here runs
at WARNING.

``AQ_PEERS_DSN`` (set by the suite) names the database.
"""

from __future__ import annotations

import asyncio
import logging
import os

from chancy import Chancy, Worker

from . import chancy_app  # noqa: F401  (the jobs, imported once, under their import path)


def make_app() -> Chancy:
    log = logging.getLogger("chancy")
    log.setLevel(logging.WARNING)
    if not log.handlers:
        log.addHandler(logging.StreamHandler())
    return Chancy(os.environ["AQ_PEERS_DSN"], log=log)


async def main() -> None:
    chancy = make_app()
    async with chancy:
        async with Worker(chancy) as worker:
            await worker.wait_for_shutdown()


if __name__ == "__main__":
    asyncio.run(main())
