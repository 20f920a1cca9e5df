"""The charts' data: the per-minute history the leader writes
(angela_queue.stats_minute and depth_minute), in buckets for a range.

``GET /api/history?range=1h|24h|7d`` answers (times are epoch seconds, the
start of each bucket; one value per bucket in every series; null where
there is nothing to say)::

    {"ok": true, "range": "1h", "bucket_s": 60, "since": ..., "until": ...,
     "final_until": ...,               # buckets from here on are not rolled up yet
     "t": [1735732200, ...],
     "throughput": {"unit": "tasks/min", "succeeded": [...], "failed": [...]},
     "tiers": [{"tier": "critical", "start_within_s": 0, "sla_grace_s": 1,
                "depth": [...],          # tasks queued, the bucket's average
                "wait_p95_ms": [...],    # the worst minute's p95 in the bucket
                "sla_pct": [...],        # on time / started, null without starts
                "started": [...]}, ...]}

It survives restarts of the dashboard and of every worker: nothing is held
here but a short cache (the rollup runs every 15 s, a chart needs no more).
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ... import db
from ._collector import TIERS
from ._session import Session

# range -> (span in seconds, bucket in seconds): about 60 to 170 points a chart.
RANGES: dict[str, tuple[int, int]] = {"1h": (3600, 60), "24h": (86400, 900), "7d": (7 * 86400, 3600)}
DEFAULT_RANGE = "1h"
CACHE_S = 10.0
# The tiers' start windows (SPEC): critical at once, then 1, 5 and 30 minutes.
START_WITHIN_S = {"critical": 0, "high": 60, "medium": 300, "low": 1800}


def _epoch(value: Any) -> float:
    return value.timestamp()


def shape(range_name: str, now_s: float, rolled_until_s: float | None, sla_grace_s: float,
          stats: Iterable[Mapping[str, Any]], depth: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows of stats_history and stats_depth_history -> the document above (pure)."""
    span_s, bucket_s = RANGES[range_name]
    last = math.floor(now_s / bucket_s) * bucket_s
    count = span_s // bucket_s
    first = last - (count - 1) * bucket_s
    times = [first + i * bucket_s for i in range(count)]
    index = {t: i for i, t in enumerate(times)}
    # A bucket is zero, not unknown, once the rollup has passed its start:
    # no row then means nothing happened.
    known = [rolled_until_s is not None and t < rolled_until_s for t in times]
    per_min = bucket_s / 60.0

    def zeros() -> list[float | None]:
        return [0 if k else None for k in known]

    succeeded, failed = zeros(), zeros()
    tiers = {tier: {"tier": tier, "start_within_s": START_WITHIN_S[tier], "sla_grace_s": sla_grace_s,
                    "depth": [0 if k else None for k in known], "wait_p95_ms": [None] * count,
                    "sla_pct": [None] * count, "started": zeros(), "on_time": zeros()} for tier in TIERS}
    for row in stats:
        i = index.get(int(_epoch(row["bucket"])))
        tier = tiers.get(row["tier"])
        if i is None or tier is None:
            continue
        succeeded[i] = (succeeded[i] or 0) + float(row["succeeded"])
        failed[i] = (failed[i] or 0) + float(row["failed"])
        tier["started"][i] = (tier["started"][i] or 0) + int(row["started"])
        tier["on_time"][i] = (tier["on_time"][i] or 0) + int(row["on_time"])
        if row["wait_p95_ms"] is not None:
            tier["wait_p95_ms"][i] = max(tier["wait_p95_ms"][i] or 0.0, float(row["wait_p95_ms"]))
    for row in depth:
        i = index.get(int(_epoch(row["bucket"])))
        tier = tiers.get(row["tier"])
        if i is not None and tier is not None:
            tier["depth"][i] = round(float(row["queued"]), 2)
    for tier in tiers.values():
        for i in range(count):
            started = tier["started"][i]
            if started:
                tier["sla_pct"][i] = round(100.0 * tier["on_time"][i] / started, 2)
    rate = lambda v: None if v is None else round(v / per_min, 3)  # noqa: E731
    return {
        "ok": True, "range": range_name, "bucket_s": bucket_s, "since": first, "until": last + bucket_s,
        "final_until": rolled_until_s, "t": times,
        "throughput": {"unit": "tasks/min", "succeeded": [rate(v) for v in succeeded],
                       "failed": [rate(v) for v in failed],
                       "succeeded_total": int(sum(v or 0 for v in succeeded)),
                       "failed_total": int(sum(v or 0 for v in failed))},
        "tiers": list(tiers.values()),
    }


class HistoryReader:
    def __init__(self, session: Session, *, cache_s: float = CACHE_S):
        self.session = session
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    def read(self, range_name: str) -> dict[str, Any]:
        with self._lock:
            cached = self._cache.get(range_name)
            if cached is not None and time.monotonic() - cached[0] < self.cache_s:
                return cached[1]
        span_s, bucket_s = RANGES[range_name]

        def work(conn) -> dict[str, Any]:
            clock = db.fetch_one(conn, "dashboard_history_clock")
            assert clock is not None
            now_s = _epoch(clock["db_now"])
            first = math.floor(now_s / bucket_s) * bucket_s - (span_s // bucket_s - 1) * bucket_s
            params = {"since": _from_epoch(first), "bucket_s": bucket_s, "queue": None}
            stats = db.fetch_all(conn, "stats_history", params)
            depth = db.fetch_all(conn, "stats_depth_history", params)
            rolled = clock["rolled_until"]
            return shape(range_name, now_s, None if rolled is None else _epoch(rolled), clock["sla_grace_s"],
                         stats, depth)

        data = self.session.run(work)
        with self._lock:
            self._cache[range_name] = (time.monotonic(), data)
        return data


def _from_epoch(epoch_s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc)
