"""The four workloads, written once and run against every system.

- ``run_drain``: N no-op jobs inserted first (the system's bulk API, untimed),
  then P worker processes x C concurrency started on them. Jobs/s is N /
  (last handler finish - first handler start), both from the handlers'
  clocks, so process startup is left out (``tps_incl_startup`` keeps it).
- ``run_enqueue``: no worker; the system's enqueue API one job per call (one
  transaction each), then its bulk API with 5,000 jobs per call.
- ``run_latency``: one idle worker (concurrency 10); jobs enqueued one at a
  time at a steady rate; latency is handler start - the moment the enqueue
  call began (and, beside it, - the moment it returned).
- ``run_overload``: one worker at concurrency 4 running 20 ms jobs, so its
  capacity is 4 / 0.020 s = 200 jobs/s; a producer enqueues at 1.5x that for
  a fixed time, 10% critical, 20% high, 30% medium, 40% low (each system's
  priorities, see systems.py). Wait is handler start - enqueue call began.

Every workload ends with the exactly-once check (``verify``): the handler
notes of all worker processes (benchmarks.peers.recorder) must hold every
expected seq exactly once and nothing else, and the system's own tables must
show every job succeeded, none failed, none left.

Hazards handled here:
- Warm-up. A worker's first jobs pay for imports, prepared statements and
  pool connections; latency and overload first run warm-up jobs (their own
  seq range, checked like the rest, measured by nobody) and wait for them.
- Pacing. The producer sleeps until each job's slot in the schedule; when it
  falls behind (a slow enqueue on a busy machine) it does not sleep, and the
  achieved rate is reported beside the target. The overload producer is open
  loop (up to PRODUCER_IN_FLIGHT calls at once), so its rate does not fall
  with the enqueue round trip.
- The suite's own connection polls the tables while workers run (every
  POLL_EVERY_S); its cost lands on the same two cores for every system.
- Planner statistics. Each measurement starts from an emptied, ANALYZEd job
  table, and latency and overload fill it while they run. Autovacuum looks
  at a table once a minute (autovacuum_naptime), longer than the run, so
  without help the statistics keep saying "empty" for a random part of it.
  A plan made then can stay: procrastinate's fetch function (PL/pgSQL caches
  its plans per session) keeps a nested-loop anti-join meant for an empty
  table, and with a backlog of 12,000 jobs one fetch then took 11 s. So
  during latency and overload an ``Analyzer`` thread ANALYZEs the system's
  claim table every ANALYZE_EVERY_S (``--analyze-every``; 0 turns it off):
  what autovacuum does for a queue that has been busy for a while.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterable
from typing import Any

from ..harness import POLL_EVERY_S, STALL_TIMEOUT_S, CpuSampler, Procs, percentile, spawn
from .recorder import SLEEP_S
from .systems import ENV_PREFIXES_DROPPED, NOOP, SLEEP, TIERS, System

BULK_SIZE = 5_000
WARMUP_JOBS = 20
WARMUP_SEQ = 10_000_000          # warm-up jobs get seqs from here on
TIER_WEIGHTS = (10, 20, 30, 40)  # critical, high, medium, low (percent)
# CpuSampler files backends by application_name; the peers set none we can
# match, so every backend of the system's database counts with the suite's.
NO_APP_NAMES = ("aq-peers-no-such-application",)
# Enqueue calls the overload producer may have open at once (each producer
# keeps a pool at least this large).
PRODUCER_IN_FLIGHT = 4
ANALYZE_EVERY_S = 2.0


def log(msg: str) -> None:
    import sys
    print(msg, file=sys.stderr, flush=True)


# --- processes and records ----------------------------------------------------

def start_workers(system: System, processes: int, concurrency: int, variant: str | None = None) -> Procs:
    system.before_workers(concurrency)
    return spawn([system.worker_command(concurrency, variant)] * processes, env_extra={"AQ_PEERS_DSN": system.dsn},
                 drop_env_prefixes=ENV_PREFIXES_DROPPED)


def read_records(procs: Procs) -> dict[int, list[tuple[float, float]]]:
    """seq -> every (start, end) the handlers noted for it, across all processes."""
    runs: dict[int, list[tuple[float, float]]] = {}
    for path in sorted((procs.log_dir / "counts").glob("*.records.json")):
        data = json.loads(path.read_text())
        for seq, start, end in zip(data["seq"], data["start"], data["end"], strict=True):
            runs.setdefault(seq, []).append((start, end))
    return runs


def verify(system: System, runs: dict[int, list[tuple[float, float]]], expected: Iterable[int],
           error: str | None, procs: Procs | None, codes: list[int | None]) -> dict[str, Any]:
    """The exactly-once check. Returns the verdict and, when it fails, why."""
    expected = set(expected)
    missing = sorted(s for s in expected if s not in runs)
    twice = sorted(s for s, r in runs.items() if len(r) > 1)
    unexpected = sorted(s for s in runs if s not in expected)
    out = system.outcome()
    problems = []
    if error:
        problems.append(error)
    if missing:
        problems.append(f"{len(missing)} job(s) never ran (e.g. seq {missing[:5]})")
    if twice:
        problems.append(f"{len(twice)} job(s) ran more than once (e.g. seq {twice[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} run(s) of jobs never enqueued (e.g. seq {unexpected[:5]})")
    if out.pending:
        problems.append(f"{out.pending} job(s) still pending in {system.label}'s tables")
    if out.failed:
        problems.append(f"{out.failed} job(s) failed in {system.label}'s tables")
    if out.succeeded != len(expected):
        problems.append(f"{system.label}'s tables show {out.succeeded} succeeded, expected {len(expected)}")
    result: dict[str, Any] = {
        "verified": not problems, "problems": problems, "expected": len(expected),
        "handler_runs": sum(len(r) for r in runs.values()), "missing": len(missing), "ran_twice": len(twice),
        "unexpected": len(unexpected), "db_pending": out.pending, "db_succeeded": out.succeeded,
        "db_failed": out.failed, "exit_codes": codes,
    }
    if problems and procs is not None:
        result["output_tail"] = procs.output_tail()
    return result


def wait_until_done(system: System, procs: Procs, expected_done: int, sampler: CpuSampler | None = None,
                    cap_s: float | None = None) -> str | None:
    """Poll the system's tables until nothing is pending and ``expected_done``
    jobs succeeded (or failed). Returns an error text, or None."""
    began = time.monotonic()
    last, last_change = None, time.monotonic()
    while True:
        if sampler is not None:
            sampler.sample()
        out = system.outcome()
        if out.pending == 0 and out.succeeded + out.failed >= expected_done:
            return None
        state = (out.pending, out.succeeded)
        if state != last:
            last, last_change = state, time.monotonic()
        elif time.monotonic() - last_change > STALL_TIMEOUT_S:
            return f"stalled: {out.pending} pending, {out.succeeded} succeeded, no progress for {STALL_TIMEOUT_S:.0f}s"
        if cap_s is not None and time.monotonic() - began > cap_s:
            return f"not done after {cap_s:.0f}s: {out.pending} pending, {out.succeeded} succeeded"
        dead = procs.dead()
        if dead:
            return f"{len(dead)} worker process(es) exited early (codes {[p.returncode for p in dead]})"
        time.sleep(POLL_EVERY_S)


class Analyzer:
    """ANALYZE the system's claim tables every ``every_s`` seconds, on its own
    connection, in a thread, while a workload runs (see the module's hazards)."""

    def __init__(self, system: System, every_s: float):
        import threading
        self.system = system
        self.every_s = every_s
        self.runs = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="aq-peers-analyzer", daemon=True)

    def _loop(self) -> None:
        import psycopg
        try:
            with psycopg.connect(self.system.dsn, autocommit=True, application_name="aq-peers-analyzer") as conn:
                while not self._stop.wait(self.every_s):
                    self.system.analyze(conn)
                    self.runs += 1
        except Exception as exc:  # reported, never fatal: the figures then say how they were made
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> "Analyzer":
        if self.every_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def describe(self) -> dict[str, Any]:
        return {"every_s": self.every_s, "runs": self.runs, "errors": self.errors}


def _dist(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"n": len(values), "min": min(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values), "mean": sum(values) / len(values)}


def _cpu(sampler: CpuSampler, start: float, end: float, jobs: int) -> dict[str, float] | None:
    w = sampler.window(start, end)
    if not w or jobs <= 0:
        return None
    el = w["elapsed_s"]
    import psutil
    cores = psutil.cpu_count(logical=True) or 1
    return {
        "machine_busy_pct": 100.0 * w["system_s"] / (el * cores),
        "worker_py_us_per_job": 1e6 * w["ours_py_s"] / jobs,
        # The workers' Postgres backends and the suite (its polling connection,
        # its own backend): CpuSampler files every backend of this database there.
        "db_and_suite_us_per_job": 1e6 * w["suite_s"] / jobs,
        "pg_aux_kernel_us_per_job": 1e6 * (w["pg_aux_s"] + w["kernel_s"]) / jobs,
        "other_cores": (w["others_s"] + w["unaccounted_s"]) / el,
    }


# --- drain --------------------------------------------------------------------

async def _bulk_insert(system: System, kind: str, seqs: range) -> None:
    async with system.producer() as p:
        for lo in range(seqs.start, seqs.stop, BULK_SIZE):
            await p.enqueue_many(kind, range(lo, min(seqs.stop, lo + BULK_SIZE)))


def run_drain(system: System, processes: int, concurrency: int, n: int,
              variant: str | None = None) -> dict[str, Any]:
    system.clear()
    asyncio.run(_bulk_insert(system, NOOP, range(n)))
    system.settle()
    procs = start_workers(system, processes, concurrency, variant)
    sampler = CpuSampler(system.db, procs.pids, NO_APP_NAMES)
    try:
        error = wait_until_done(system, procs, n, sampler)
        time.sleep(POLL_EVERY_S)
        sampler.sample()
    finally:
        codes = procs.stop()
    runs = read_records(procs)
    result: dict[str, Any] = {"system": system.key, "variant": variant, "processes": processes,
                              "concurrency": concurrency, "n": n}
    result.update(verify(system, runs, range(n), error, procs, codes))
    starts = [s for r in runs.values() for s, _ in r]
    ends = [e for r in runs.values() for _, e in r]
    if starts:
        first, last = min(starts), max(ends)
        result.update({"startup_s": first - procs.spawned_at, "drain_s": last - first,
                       "tps": n / (last - first) if last > first else None,
                       "tps_incl_startup": n / (last - procs.spawned_at)})
        result["cpu"] = _cpu(sampler, first, last, n)
    return result


# --- enqueue ------------------------------------------------------------------

async def _enqueue_single(system: System, n: int) -> tuple[float, list[float]]:
    async with system.producer() as p:
        await p.enqueue(NOOP, -1)  # warm: connection, prepared statements
        calls = []
        began = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            await p.enqueue(NOOP, i)
            calls.append(1000 * (time.perf_counter() - t))
        return time.perf_counter() - began, calls


async def _enqueue_bulk(system: System, calls: int) -> tuple[float, list[float]]:
    async with system.producer() as p:
        await p.enqueue_many(NOOP, range(-10, 0))  # warm
        per_call = []
        began = time.perf_counter()
        for c in range(calls):
            t = time.perf_counter()
            await p.enqueue_many(NOOP, range(c * BULK_SIZE, (c + 1) * BULK_SIZE))
            per_call.append(1000 * (time.perf_counter() - t))
        return time.perf_counter() - began, per_call


def run_enqueue(system: System, single_n: int, bulk_calls: int) -> dict[str, Any]:
    out: dict[str, Any] = {"system": system.key}
    for name, fn, arg, jobs in (("single", _enqueue_single, single_n, single_n),
                                ("bulk", _enqueue_bulk, bulk_calls, bulk_calls * BULK_SIZE)):
        system.clear()
        seconds, calls = asyncio.run(fn(system, arg))
        stored = system.outcome().pending
        warm = 1 if name == "single" else 10
        out[name] = {"jobs": jobs, "seconds": seconds, "tps": jobs / seconds, "call_ms": _dist(calls),
                     "stored": stored, "verified": stored == jobs + warm,
                     "problems": [] if stored == jobs + warm else
                     [f"{stored} jobs stored, expected {jobs + warm} ({jobs} + {warm} warm-up)"]}
    out["verified"] = out["single"]["verified"] and out["bulk"]["verified"]
    system.clear()
    return out


def run_enqueue_reference(system: System, single_n: int, bulk_calls: int) -> dict[str, Any]:
    """Plain psycopg INSERTs into angela_queue.tasks (its insert trigger runs
    either way): the floor under any enqueue API on this table."""
    import psycopg

    from ..enqueue import PLAIN_INSERT, PLAIN_INSERT_MANY
    out: dict[str, Any] = {"system": "reference"}
    with psycopg.connect(system.dsn, autocommit=True, prepare_threshold=0) as conn:
        cur = conn.cursor()
        system.clear()
        cur.execute(PLAIN_INSERT, (NOOP, "{}"), prepare=True)
        began = time.perf_counter()
        for i in range(single_n):
            cur.execute(PLAIN_INSERT, (NOOP, f'{{"seq": {i}}}'), prepare=True)
        s = time.perf_counter() - began
        out["single"] = {"jobs": single_n, "seconds": s, "tps": single_n / s,
                         "how": "INSERT ... VALUES, prepared, autocommit"}
        system.clear()
        cur.execute(PLAIN_INSERT_MANY, (NOOP, ["{}"]), prepare=True)
        began = time.perf_counter()
        for c in range(bulk_calls):
            payloads = [f'{{"seq": {i}}}' for i in range(c * BULK_SIZE, (c + 1) * BULK_SIZE)]
            cur.execute(PLAIN_INSERT_MANY, (NOOP, payloads), prepare=True)
        s = time.perf_counter() - began
        out["bulk"] = {"jobs": bulk_calls * BULK_SIZE, "seconds": s, "tps": bulk_calls * BULK_SIZE / s,
                       "how": f"INSERT ... SELECT unnest(jsonb[]), {BULK_SIZE:,} per statement"}
    system.clear()
    return out


# --- latency and overload -----------------------------------------------------

async def _warm_up(system: System, procs: Procs, p: Any, kind: str) -> None:
    for i in range(WARMUP_JOBS):
        await p.enqueue(kind, WARMUP_SEQ + i)
        await asyncio.sleep(0.01)
    error = await asyncio.to_thread(wait_until_done, system, procs, WARMUP_JOBS, None, 60.0)
    if error:
        raise RuntimeError(f"warm-up: {error}")
    await asyncio.sleep(0.5)


async def _paced(system: System, procs: Procs, kind: str, seqs: list[int], priorities: list[int | None],
                 rate: float, in_flight: int = 1) -> tuple[dict[int, float], dict[int, float], float]:
    """Warm up, then enqueue ``seqs`` at ``rate`` per second, one job per call.

    With ``in_flight`` 1 each call is awaited before the next is due (the
    latency run: the next call is 20 ms away). Above 1 the producer is open
    loop: each call starts at its slot in the schedule, up to ``in_flight``
    at once on the producer's pool, so one slow commit on a busy machine does
    not hold back the calls behind it (the overload run). Returns when each
    call began and returned (wall clock) and the achieved rate."""
    sent: dict[int, float] = {}
    returned: dict[int, float] = {}
    async with system.producer() as p:
        await _warm_up(system, procs, p, kind)
        gate = asyncio.Semaphore(in_flight)

        async def one(seq: int, prio: int | None) -> None:
            async with gate:
                sent[seq] = time.time()
                await p.enqueue(kind, seq, prio)
                returned[seq] = time.time()

        interval = 1.0 / rate
        pending: set[asyncio.Task[None]] = set()
        began = time.perf_counter()
        for i, (seq, prio) in enumerate(zip(seqs, priorities, strict=True)):
            delay = began + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight == 1:
                await one(seq, prio)
            else:
                task = asyncio.create_task(one(seq, prio))
                pending.add(task)
                task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        achieved = len(seqs) / (time.perf_counter() - began)
    return sent, returned, achieved


def run_latency(system: System, count: int, rate: float, concurrency: int = 10,
                analyze_every_s: float = ANALYZE_EVERY_S) -> dict[str, Any]:
    system.clear()
    procs = start_workers(system, 1, concurrency)
    seqs = list(range(count))
    error = None
    sent: dict[int, float] = {}
    returned: dict[int, float] = {}
    achieved = 0.0
    analyzer = Analyzer(system, analyze_every_s)
    try:
        with analyzer:
            sent, returned, achieved = asyncio.run(_paced(system, procs, NOOP, seqs, [None] * count, rate))
            error = wait_until_done(system, procs, count + WARMUP_JOBS, cap_s=60.0)
    except RuntimeError as exc:
        error = str(exc)
    finally:
        codes = procs.stop()
    runs = read_records(procs)
    result: dict[str, Any] = {"system": system.key, "jobs": count, "target_rate_per_s": rate,
                              "achieved_rate_per_s": achieved, "worker_concurrency": concurrency,
                              "analyzer": analyzer.describe()}
    result.update(verify(system, runs, [*seqs, *range(WARMUP_SEQ, WARMUP_SEQ + WARMUP_JOBS)], error, procs,
                         codes))
    first = {s: runs[s][0][0] for s in seqs if s in runs and s in sent}
    result["from_call_ms"] = _dist([1000 * (first[s] - sent[s]) for s in first])
    result["from_return_ms"] = _dist([1000 * (first[s] - returned[s]) for s in first])
    result["enqueue_call_ms"] = _dist([1000 * (returned[s] - sent[s]) for s in first])
    return result


def overload_tiers(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return rng.choices(TIERS, weights=TIER_WEIGHTS, k=n)


def run_overload(system: System, seconds: float, factor: float = 1.5, concurrency: int = 4,
                 seed: int = 13, analyze_every_s: float = ANALYZE_EVERY_S) -> dict[str, Any]:
    capacity = concurrency / SLEEP_S
    rate = factor * capacity
    n = int(round(rate * seconds))
    tiers = overload_tiers(n, seed)
    seqs = list(range(n))
    system.clear()
    procs = start_workers(system, 1, concurrency)
    error = None
    sent: dict[int, float] = {}
    returned: dict[int, float] = {}
    achieved = 0.0
    analyzer = Analyzer(system, analyze_every_s)
    try:
        with analyzer:
            sent, returned, achieved = asyncio.run(
                _paced(system, procs, SLEEP, seqs, [system.priorities[t] for t in tiers], rate, PRODUCER_IN_FLIGHT))
            # The backlog (about (factor - 1) x capacity x seconds jobs) drains at capacity.
            error = wait_until_done(system, procs, n + WARMUP_JOBS, cap_s=60.0 + 6 * seconds * (factor - 1))
    except RuntimeError as exc:
        error = str(exc)
    finally:
        codes = procs.stop()
    runs = read_records(procs)
    result: dict[str, Any] = {
        "system": system.key, "seconds": seconds, "concurrency": concurrency, "job_ms": 1000 * SLEEP_S,
        "nominal_capacity_per_s": capacity, "target_rate_per_s": rate, "achieved_rate_per_s": achieved,
        "jobs": n, "seed": seed, "priorities": system.priorities,
        "tier_counts": {t: tiers.count(t) for t in TIERS}, "analyzer": analyzer.describe(),
    }
    result.update(verify(system, runs, [*seqs, *range(WARMUP_SEQ, WARMUP_SEQ + WARMUP_JOBS)], error, procs,
                         codes))
    waits: dict[str, list[float]] = {t: [] for t in TIERS}
    for seq, tier in zip(seqs, tiers, strict=True):
        if seq in runs and seq in sent:
            waits[tier].append(1000 * (runs[seq][0][0] - sent[seq]))
    result["wait_ms"] = {t: _dist(w) for t, w in waits.items()}
    if sent:
        t0, t1 = min(sent.values()), max(sent.values())
        done_in_window = sum(1 for r in runs.values() for _, e in r if t0 <= e <= t1)
        result["capacity_per_s"] = done_in_window / (t1 - t0) if t1 > t0 else None
        # Jobs still waiting when the producer stopped: the backlog it built.
        result["backlog_at_end"] = sum(1 for s in seqs if s in runs and runs[s][0][0] > t1)
    return result
