"""angela-queue's handlers for the peer comparison (``--app benchmarks.peers.aq_app``).

Two ``async def`` kinds; the handler gets the payload's keys as keyword
arguments, so the payload is ``{"seq": N}``. Each records its run through
benchmarks.peers.recorder.
"""

from __future__ import annotations

from angela_queue import task

from . import recorder

NOOP = "peer_noop"
SLEEP = "peer_sleep"


@task(NOOP)
async def peer_noop(seq: int) -> None:
    await recorder.noop(seq)


@task(SLEEP)
async def peer_sleep(seq: int) -> None:
    await recorder.sleep(seq)
