"""procrastinate's app for the peer comparison, run with its own CLI:

    python -m procrastinate --app benchmarks.peers.procrastinate_app.app worker --concurrency C

The connector reads ``AQ_PEERS_DSN`` (set by the suite) when the module is
imported; the suite's producer swaps in its own with ``App.with_connector``.
"""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

from . import recorder

app = App(connector=PsycopgConnector(conninfo=os.environ.get("AQ_PEERS_DSN", "")))


@app.task(name="peer_noop")
async def peer_noop(seq: int) -> None:
    await recorder.noop(seq)


@app.task(name="peer_sleep")
async def peer_sleep(seq: int) -> None:
    await recorder.sleep(seq)
