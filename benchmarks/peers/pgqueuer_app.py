"""pgqueuer's worker for the peer comparison:

    python -m benchmarks.peers.pgqueuer_app --batch-size B --max-concurrent-tasks C

This is ``await pgqueuer.run(factory, ...)``, pgqueuer's documented
programmatic twin of ``pgq run module:factory`` ("identical runtime
behavior": its supervisor loop, signal handling and graceful shutdown). The
CLI itself cannot start here: pgqueuer 1.6.0's ``pgq run`` fails in
``setup_fancy_logger`` (``AttributeError: 'str' object has no attribute
'name'``) with the typer that pip installs today (0.29), with or without
``--log-level``. Without the CLI no log handler is set up, so pgqueuer logs
at Python's default, WARNING, like every system here.

The factory is the documented shape: an async context manager that yields a
``PgQueuer`` over one asyncpg connection (pgqueuer's performance guide: "a
single connection for QueueManager"). The job's payload is its seq number as
ASCII bytes.

``AQ_PEERS_DSN`` (set by the suite) names the database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pgqueuer
from pgqueuer import PgQueuer
from pgqueuer.models import Job

from . import recorder

NOOP = "peer_noop"
SLEEP = "peer_sleep"


@asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    conn = await asyncpg.connect(os.environ["AQ_PEERS_DSN"])
    try:
        pgq = PgQueuer.from_asyncpg_connection(conn)

        @pgq.entrypoint(NOOP)
        async def peer_noop(job: Job) -> None:
            await recorder.noop(job.payload)

        @pgq.entrypoint(SLEEP)
        async def peer_sleep(job: Job) -> None:
            await recorder.sleep(job.payload)

        yield pgq
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="one pgqueuer worker for the peer comparison")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--max-concurrent-tasks", type=int, default=None)
    args = p.parse_args(argv)
    asyncio.run(pgqueuer.run(create, batch_size=args.batch_size, max_concurrent_tasks=args.max_concurrent_tasks))


if __name__ == "__main__":
    main()
