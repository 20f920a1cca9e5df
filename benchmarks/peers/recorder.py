"""What every benchmark job does, in every system: note when it started and
finished, in memory, and write the notes down when the worker process exits.

The handlers of all five systems (benchmarks/peers/*_app.py) call
``noop(seq)`` or ``sleep(seq)``. Each job carries a ``seq`` number unique
within a workload, so the suite can tell, from these files alone, whether
every job ran exactly once: the queues' own bookkeeping (a status column, a
log table) says a job *finished*, not how many times its handler was
entered.

Hazards handled here:
- Recording must not be what is measured: a side-table INSERT per job would
  cost as much as a no-op job itself. So the notes stay in three arrays and
  are written once, at exit (``atexit``). A worker that is SIGKILLed, or that
  exits through ``os._exit``, writes nothing, and every job it ran then
  counts as missing: the check fails loudly instead of passing quietly.
- The clock is ``time.time()``, the wall clock that the suite also reads when
  it enqueues, so a wait is (handler start - enqueue time) across two
  processes. That needs one host: run the suite where the workers run.
- ``seq`` arrives as an int or (pgqueuer's bytes payload) as text; both are
  accepted.

``AQ_BENCH_COUNT_DIR`` (set by benchmarks.harness.spawn for the worker
processes only) names the directory for ``<pid>.records.json``.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import time
from array import array

# The overload workload's job: 20 ms of awaited I/O.
SLEEP_S = 0.020

_seq = array("q")
_start = array("d")
_end = array("d")


def _note(seq: int | str | bytes, started: float) -> None:
    _seq.append(int(seq))
    _start.append(started)
    _end.append(time.time())


async def noop(seq: int | str | bytes) -> None:
    """A no-op job: the drain, enqueue and latency workloads."""
    _note(seq, time.time())


async def sleep(seq: int | str | bytes) -> None:
    """A 20 ms job: the overload workload."""
    started = time.time()
    await asyncio.sleep(SLEEP_S)
    _note(seq, started)


def _write(directory: str) -> None:
    path = os.path.join(directory, f"{os.getpid()}.records.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "seq": _seq.tolist(), "start": _start.tolist(),
                   "end": _end.tolist()}, f)
    os.replace(path + ".tmp", path)


_dir = os.environ.get("AQ_BENCH_COUNT_DIR")
if _dir:
    atexit.register(_write, _dir)
