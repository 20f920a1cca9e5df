"""Priority order under a backlog: a seeded mix of priorities 1-10, some
low-priority tasks backdated (so aging lifts them above fresh high ones),
drained by one worker at concurrency 1. The start order is compared with
the effective-priority order the SPEC promises:

    effective_priority = priority + boost + aging_rate * minutes since greatest(run_at, created_at)

computed here from the columns, not from the stored claim key, so a wrong
key would show. Every row has the same aging rate, so this order does not
change while the backlog drains.

Run twice: with the default low-priority batching (priority < 5 is claimed
5 of a kind at a time), and with ``--batch-size 1`` to isolate its effect.
"""

from __future__ import annotations

import random
import time
from typing import Any

from . import app
from .drain import REMAINING
from .harness import STALL_TIMEOUT_S, BenchDB, spawn, wait_for_workers, worker_command

BACKDATED_SHARE = 0.2          # of the low (1-4) tasks
BACKDATE_MINUTES = (20, 120)   # +2 .. +12 points at the default 0.1/min
EPS = 1e-9

INSERT_BACKLOG = """
INSERT INTO angela_queue.tasks (kind, priority, payload)
SELECT %s, u.p, jsonb_build_object('backdated_min', u.m)
FROM unnest(%s::int[], %s::float8[]) WITH ORDINALITY AS u(p, m, n)
ORDER BY u.n
"""

# Aging counts from greatest(run_at, created_at), and the insert trigger sets
# created_at (an UPDATE may not move it): a task that "waited" is made by
# moving both back, with the derived columns, past the triggers (the
# benchmark owns its database as a superuser).
BACKDATE = """
UPDATE angela_queue.tasks t
SET created_at = t.created_at - make_interval(secs => m.s),
    run_at = t.run_at - make_interval(secs => m.s),
    deadline = t.deadline - make_interval(secs => m.s),
    priority_key = angela_queue.priority_key(t.priority, t.boost, t.aging_rate,
                                             greatest(t.run_at, t.created_at) - make_interval(secs => m.s))
FROM (SELECT id, (payload->>'backdated_min')::float8 * 60 AS s FROM angela_queue.tasks) m
WHERE m.id = t.id AND m.s > 0
"""

# Start order: claim time; rows claimed in one transaction share started_at,
# so among them the order they actually ran in (finished_at: concurrency 1
# runs one task at a time) decides, never the ideal order (that would hide
# a batch fill that claimed worse rows alongside a better one).
STARTS = """
SELECT id, priority, tier, (payload->>'backdated_min')::float8 > 0 AS backdated,
       (priority + boost + aging_rate * extract(epoch FROM now() - greatest(run_at, created_at)) / 60.0)::float8
           AS eff,
       status, attempts
FROM angela_queue.tasks
ORDER BY started_at, finished_at, id
"""


def backlog(n: int, seed: int = 42) -> tuple[list[int], list[float]]:
    rng = random.Random(seed)
    priorities, minutes = [], []
    for _ in range(n):
        p = rng.randint(1, 10)
        back = rng.uniform(*BACKDATE_MINUTES) if p <= 4 and rng.random() < BACKDATED_SHARE else 0.0
        priorities.append(p)
        minutes.append(back)
    return priorities, minutes


def order_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    effs = [r["eff"] for r in rows]
    n = len(effs)
    ideal = sorted(range(n), key=lambda i: (-effs[i], rows[i]["id"]))
    rank = {i: r for r, i in enumerate(ideal)}
    adjacent_ok = sum(1 for i in range(n - 1) if effs[i] >= effs[i + 1] - EPS)
    inversions = comparable = 0
    by_tier: dict[str, int] = {}
    for i in range(n):
        ei = effs[i]
        for j in range(i + 1, n):
            ej = effs[j]
            if abs(ei - ej) <= EPS:
                continue
            comparable += 1
            if ei < ej:
                inversions += 1
                tier = rows[i]["tier"]
                by_tier[tier] = by_tier.get(tier, 0) + 1
    displacement = [abs(pos - rank[pos]) for pos in range(n)]
    decile = max(1, n // 10)
    top_actual = set(range(decile))
    top_ideal = set(ideal[:decile])
    # Backdated low tasks whose effective priority beats a fresh critical one:
    # did they start first? (the SPEC's "a backdated low task beats a fresh critical")
    beats = wins = 0
    crit = [i for i in range(n) if rows[i]["tier"] == "critical" and not rows[i]["backdated"]]
    for b in (i for i in range(n) if rows[i]["backdated"]):
        for c in crit:
            if effs[b] > effs[c] + EPS:
                beats += 1
                wins += b < c
    return {
        "n": n,
        "adjacent_in_order": adjacent_ok / (n - 1) if n > 1 else 1.0,
        "inversions": inversions,
        "inversion_fraction": inversions / comparable if comparable else 0.0,
        "kendall_tau": 1 - 2 * inversions / comparable if comparable else 1.0,
        "inversions_by_tier_of_early_task": by_tier,
        "max_displacement": max(displacement) if displacement else 0,
        "mean_displacement": sum(displacement) / n if n else 0.0,
        "first_decile_overlap": len(top_actual & top_ideal) / decile,
        "backdated_low_over_fresh_critical": {"pairs": beats, "started_first": wins,
                                              "fraction": wins / beats if beats else None},
    }


def run_priority(db: BenchDB, n: int, batch_size: int | None = None) -> dict[str, Any]:
    db.reset()
    priorities, minutes = backlog(n)
    with db.conn.transaction():
        db.conn.execute(INSERT_BACKLOG, (app.NOOP, priorities, minutes))
        db.conn.execute("SET LOCAL session_replication_role = replica")
        db.conn.execute(BACKDATE)
    db.settle()
    extra = ["--batch-size", str(batch_size)] if batch_size is not None else []
    procs = spawn([worker_command(db.dsn, 1, extra)])
    error = None
    try:
        wait_for_workers(db, procs, 1)
        last, last_progress = None, time.monotonic()
        while (remaining := db.scalar(REMAINING)) > 0:
            if remaining != last:
                last, last_progress = remaining, time.monotonic()
            elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
                error = f"stalled with {remaining} left"
                break
            if procs.dead():
                error = "the worker exited"
                break
            time.sleep(0.1)
    finally:
        codes = procs.stop()
    rows = db.conn.execute(STARTS).fetchall()
    ok = sum(1 for r in rows if r["status"] == "succeeded" and r["attempts"] == 1)
    result = {"label": "default batching (5 of a kind below p5)" if batch_size is None
              else f"--batch-size {batch_size}",
              "batch_size": batch_size, "succeeded_once": ok, "error": error, "exit_codes": codes,
              "backdated": sum(1 for r in rows if r["backdated"])}
    result.update(order_metrics(rows))
    return result
