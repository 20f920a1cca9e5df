"""The task handlers the benchmark workers run (``--app benchmarks.app``).

Every handler is a no-op, so a drain measures the queue, not the work. Each
process counts the calls it made and writes the counts when it exits, so the
suite can prove every task ran exactly once (the rows' ``attempts`` only
prove each was *claimed* once).

``AQ_BENCH_COUNT_DIR`` (set by the suite for the worker processes only) says
where to write ``<pid>.json`` with the call counts.
"""

from __future__ import annotations

import atexit
import collections
import json
import os

from angela_queue import task

NOOP = "bench_noop"
NOOP_ASYNC = "bench_noop_async"
# A kind the drain benchmark caps at 1 running at once (kinds.concurrency):
# its backlog sits ahead of the drained tasks.
CAPPED = "bench_capped"

_calls: collections.Counter[str] = collections.Counter()


@task(NOOP)
def bench_noop(**_payload) -> None:
    """A sync no-op: runs in the worker's thread pool, like any sync handler."""
    _calls[NOOP] += 1


@task(NOOP_ASYNC)
async def bench_noop_async(**_payload) -> None:
    """An ``async def`` no-op: runs on the worker's event loop."""
    _calls[NOOP_ASYNC] += 1


@task(CAPPED)
async def bench_capped(**_payload) -> None:
    """Slow on purpose: the capped backlog holds one slot, and costs the
    drain next to no CPU of its own, so the drain measures the claim."""
    import asyncio
    await asyncio.sleep(1.0)
    _calls[CAPPED] += 1


def _write_counts(directory: str) -> None:
    path = os.path.join(directory, f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(_calls), f)
    os.replace(path + ".tmp", path)


_count_dir = os.environ.get("AQ_BENCH_COUNT_DIR")
if _count_dir:
    atexit.register(_write_counts, _count_dir)
