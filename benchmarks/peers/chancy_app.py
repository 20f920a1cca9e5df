"""chancy's jobs for the peer comparison.

Chancy finds a job's function by its import path, so the jobs live in this
plain module (benchmarks.peers.chancy_worker runs the worker). The suite
declares the queue, with its concurrency and executor, before it starts a
worker; see benchmarks.peers.systems.Chancy.
"""

from __future__ import annotations

from chancy import job

from . import recorder

QUEUE = "default"


@job(queue=QUEUE)
async def peer_noop(seq: int) -> None:
    await recorder.noop(seq)


@job(queue=QUEUE)
async def peer_sleep(seq: int) -> None:
    await recorder.sleep(seq)
