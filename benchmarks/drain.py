"""Drain throughput: N no-op tasks already queued, then processes started
that work them off; angela-queue workers, or the hand-written reference loop.

Two rates per run, both from row timestamps:
- ``tps``: N / (last finished_at - first started_at): the drain itself,
  process startup excluded;
- ``tps_incl_startup``: N / (last finished_at - the moment the processes
  were spawned): what a user who starts workers on a backlog sees.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import app, reference
from .harness import (POLL_EVERY_S, STALL_TIMEOUT_S, BenchDB, CpuSampler, spawn, worker_command)

# Postgres backends that work for the processes under test.
WORKER_APP_NAMES = ("angela-queue-worker-%", "angela-queue-listen", "angela-queue-heartbeat-%")
REFERENCE_APP_NAMES = (reference.APPLICATION_NAME,)

# Only the drained kind counts: a capped backlog (see DrainConfig) is still
# there when the drain ends, by design.
REMAINING = """
SELECT (SELECT count(*) FROM angela_queue.tasks WHERE status = 'queued' AND kind = %(kind)s)
     + (SELECT count(*) FROM angela_queue.tasks WHERE status = 'running' AND kind = %(kind)s) AS remaining
"""

SUMMARY = """
SELECT count(*) AS n,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE attempts = 1) AS claimed_once,
       extract(epoch FROM min(started_at))::float8 AS first_start,
       extract(epoch FROM max(started_at))::float8 AS last_start,
       extract(epoch FROM max(finished_at))::float8 AS last_finish,
       count(DISTINCT worker_id) AS workers_used,
       -- One claim statement gives its rows one started_at: how many tasks
       -- each round trip claimed, on average.
       count(DISTINCT (worker_id, started_at)) AS claims,
       (SELECT array_agg(c ORDER BY c DESC) FROM (
            SELECT count(*) AS c FROM angela_queue.tasks WHERE kind = %(kind)s GROUP BY worker_id) per) AS per_worker
FROM angela_queue.tasks
WHERE kind = %(kind)s
"""


@dataclass(frozen=True)
class DrainConfig:
    label: str
    impl: str               # "angela-queue" or "reference"
    processes: int
    concurrency: int = 10   # angela-queue: --concurrency; reference: tasks claimed at once
    handler: str = "sync"   # angela-queue: "sync" or "async" no-op
    log_level: str = "WARNING"
    mode: str = "simple"    # reference only
    # Tasks of a kind capped at 1 running at once, queued ahead of the drain
    # (priority 8): the claim of every other kind must not slow down for it.
    capped_backlog: int = 0
    # impl "supervisor": `angela-queue run` processes (`processes` of them),
    # each with this many worker processes of `concurrency`.
    workers_each: int = 1
    # The queue's durability (queues.durability): "fast" commits without
    # waiting for the disk.
    durability: str = "durable"

    @property
    def kind(self) -> str:
        return app.NOOP_ASYNC if self.handler == "async" else app.NOOP

    def commands(self, dsn: str) -> list[list[str]]:
        if self.impl == "reference":
            cmd = [sys.executable, "-m", "benchmarks.reference", "--dsn", dsn,
                   "--batch", str(self.concurrency), "--mode", self.mode]
        elif self.impl == "supervisor":
            n = str(self.workers_each)
            cmd = [sys.executable, "-m", "angela_queue", "--dsn", dsn, "--log-level", self.log_level, "run",
                   "--app", app.__name__, "--concurrency", str(self.concurrency), "--min-workers", n,
                   "--base-workers", n, "--max-workers", n, "--scale-interval", "60"]
        else:
            cmd = worker_command(dsn, self.concurrency, log_level=self.log_level)
        return [cmd] * self.processes


def run_drain(db: BenchDB, config: DrainConfig, n: int, pyspy_out: Path | None = None) -> dict[str, Any]:
    db.reset()
    db.conn.execute("UPDATE angela_queue.queues SET durability = %s WHERE name = 'default'", (config.durability,))
    if config.capped_backlog:
        db.conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES (%s, 1) "
                        "ON CONFLICT (kind) DO UPDATE SET concurrency = 1", (app.CAPPED,))
        db.insert_noops(config.capped_backlog, app.CAPPED, priority=8)
    db.insert_noops(n, config.kind)
    db.settle()
    is_ref = config.impl == "reference"
    procs = spawn(config.commands(db.dsn), pyspy_out=pyspy_out)
    sampler = CpuSampler(db, procs.pids, REFERENCE_APP_NAMES if is_ref else WORKER_APP_NAMES)
    error = None
    try:
        last_remaining, last_progress = n, time.monotonic()
        while True:
            sampler.sample()
            remaining = db.scalar(REMAINING, {"kind": config.kind})
            if remaining == 0:
                break
            if remaining != last_remaining:
                last_remaining, last_progress = remaining, time.monotonic()
            elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
                error = f"stalled: {remaining} task(s) left and no progress for {STALL_TIMEOUT_S:.0f}s"
                break
            dead = procs.dead()
            if dead and not is_ref:
                error = f"{len(dead)} worker(s) exited during the drain"
                break
            if is_ref and len(dead) == len(procs.popens):
                error = f"reference loops exited with {remaining} task(s) left"
                break
            time.sleep(POLL_EVERY_S)
        time.sleep(POLL_EVERY_S)
        sampler.sample()
    finally:
        codes = procs.stop()
    s = db.conn.execute(SUMMARY, {"kind": config.kind}).fetchone()
    counts = procs.handler_counts()
    ran = (sum(r.get("ran", 0) for r in procs.stdout_json()) if is_ref else counts.get(config.kind, 0))
    verified = (s["n"] == n and s["succeeded"] == n and s["claimed_once"] == n and ran == n
                and error is None)
    result: dict[str, Any] = {
        "label": config.label, "impl": config.impl, "processes": config.processes,
        "concurrency": config.concurrency, "handler": config.handler if not is_ref else None,
        "mode": config.mode if is_ref else None, "log_level": config.log_level if not is_ref else None,
        "capped_backlog": config.capped_backlog,
        "n": n, "succeeded": s["succeeded"], "claimed_once": s["claimed_once"], "handler_calls": ran,
        "verified": verified, "error": error, "exit_codes": codes,
        "per_worker": s["per_worker"], "claims": s["claims"],
        "tasks_per_claim": n / s["claims"] if s["claims"] else None, "profiled": pyspy_out is not None,
    }
    if not verified:
        result["output_tail"] = procs.output_tail()
    if s["first_start"] is None or s["last_finish"] is None:
        return result
    drain_s = s["last_finish"] - s["first_start"]
    wall_s = s["last_finish"] - procs.spawned_at
    result.update({
        "startup_s": s["first_start"] - procs.spawned_at,
        "drain_s": drain_s,
        "wall_s": wall_s,
        "tps": n / drain_s if drain_s > 0 else None,
        "tps_incl_startup": n / wall_s if wall_s > 0 else None,
    })
    cpu = sampler.window(s["first_start"], s["last_finish"])
    if cpu:
        el = cpu["elapsed_s"]
        result["cpu"] = {
            "machine_busy_pct": 100.0 * cpu["system_s"] / (el * _cores()),
            "python_us_per_task": 1e6 * cpu["ours_py_s"] / n,
            "postgres_backends_us_per_task": 1e6 * cpu["ours_pg_s"] / n,
            "pg_aux_us_per_task": 1e6 * cpu["pg_aux_s"] / n,
            "kernel_us_per_task": 1e6 * cpu["kernel_s"] / n,
            "python_cores": cpu["ours_py_s"] / el,
            "postgres_backends_cores": cpu["ours_pg_s"] / el,
            "suite_cores": cpu["suite_s"] / el,
            # Other people's work (plus short-lived processes we could not
            # attribute): the noise on a shared machine.
            "other_cores": (cpu["others_s"] + cpu["unaccounted_s"]) / el,
        }
    return result


def _cores() -> int:
    import psutil
    return psutil.cpu_count(logical=True) or 1


def worker_configs(full: bool) -> list[DrainConfig]:
    configs = [
        DrainConfig("aq sync 1x10", "angela-queue", 1, 10, "sync"),
        DrainConfig("aq sync 2x10", "angela-queue", 2, 10, "sync"),
        DrainConfig("aq async 1x10", "angela-queue", 1, 10, "async"),
        DrainConfig("aq async 2x10", "angela-queue", 2, 10, "async"),
        # The same drain behind 10,000 tasks of a kind capped at 1 at once.
        DrainConfig("aq async 2x10 + capped backlog", "angela-queue", 2, 10, "async", capped_backlog=10_000),
        # Supervisors sharing one database: the same 2 worker processes under
        # one supervisor, or one under each of two (leader election, shared
        # scaling depth, every claim racing the other supervisor's).
        DrainConfig("aq run: 1 supervisor x 2 workers x 10", "supervisor", 1, 10, "async", workers_each=2),
        DrainConfig("aq run: 2 supervisors x 1 worker x 10", "supervisor", 2, 10, "async", workers_each=1),
        # The same drain on a queue whose durability is 'fast'.
        DrainConfig("aq async 2x10, fast queue", "angela-queue", 2, 10, "async", durability="fast"),
    ]
    if full:
        # What the default INFO logging (one line per task) costs.
        configs.append(DrainConfig("aq sync 2x10 INFO logs", "angela-queue", 2, 10, "sync", log_level="INFO"))
    return configs


def reference_configs() -> list[DrainConfig]:
    return [
        DrainConfig("ref claim 1 (1 proc)", "reference", 1, 1, mode="simple"),
        DrainConfig("ref claim 1 (2 procs)", "reference", 2, 1, mode="simple"),
        DrainConfig("ref claim 10 (1 proc)", "reference", 1, 10, mode="simple"),
        DrainConfig("ref claim 10 (2 procs)", "reference", 2, 10, mode="simple"),
        DrainConfig("ref pipelined 10 (1 proc)", "reference", 1, 10, mode="pipeline"),
        DrainConfig("ref pipelined 10 (2 procs)", "reference", 2, 10, mode="pipeline"),
    ]
