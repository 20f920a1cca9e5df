-- angela-queue: the per-minute history (angela_queue.stats_minute and
-- depth_minute), written by the maintenance leader, read by the dashboard's
-- charts and by /metrics.

-- name: stats_rollup
-- Write the rollup of every whole minute in [%(since)s, %(until)s) (both on
-- minute boundaries): one row per minute, queue, tier and kind that saw
-- anything. Idempotent (an upsert of recomputed counts): the leader writes
-- each minute twice, the second time for outcomes flushed late, and a new
-- leader picks up where the last one stopped.
-- Every part reads through an index: enqueues by created_at (BRIN), finals
-- by tasks_finished_idx (tasks_finished_since), failed attempts by
-- tasks_failed_at_idx, running tasks by tasks_running_idx. A start is seen
-- on the task that made it: finished since, running, or failed and waiting
-- to retry (an attempt whose task was claimed again since is not seen).
WITH win AS (
    SELECT %(since)s::timestamptz AS lo, %(until)s::timestamptz AS hi
), finished AS (
    SELECT f.id, f.queue, f.tier, f.kind, f.status, f.run_at, f.created_at, f.started_at, f.finished_at, f.deadline
    FROM win, angela_queue.tasks_finished_since(win.lo) f
    WHERE f.finished_at < win.hi
), attempts AS (
    -- Attempts that started in the window, on tasks we can still see.
    SELECT a.queue, a.tier, a.kind, a.started_at, a.run_at, a.created_at, a.deadline
    FROM (
        SELECT f.queue, f.tier, f.kind, f.started_at, f.run_at, f.created_at, f.deadline FROM finished f
        UNION ALL
        SELECT t.queue, t.tier, t.kind, t.started_at, t.run_at, t.created_at, t.deadline
        FROM angela_queue.tasks t, win WHERE t.status = 'running' AND t.started_at >= win.lo
        UNION ALL
        SELECT t.queue, t.tier, t.kind, t.started_at, t.run_at, t.created_at, t.deadline
        FROM angela_queue.tasks t, win
        WHERE t.failed_at >= win.lo AND t.status IN ('scheduled', 'queued')
    ) a, win
    WHERE a.started_at >= win.lo AND a.started_at < win.hi
), parts AS (
    SELECT date_trunc('minute', t.created_at) AS minute, t.queue, t.tier, t.kind,
           1 AS enqueued, 0 AS started, 0 AS on_time, 0 AS succeeded, 0 AS failed, 0 AS retried, 0 AS cancelled,
           0 AS dropped, NULL::double precision AS wait_ms, NULL::double precision AS run_ms
    FROM angela_queue.tasks t, win
    WHERE t.created_at >= win.lo AND t.created_at < win.hi
    UNION ALL
    SELECT date_trunc('minute', a.started_at), a.queue, a.tier, a.kind, 0, 1,
           (a.started_at <= a.deadline + coalesce(q.sla_grace, interval '1 second'))::int, 0, 0, 0, 0, 0,
           greatest(extract(epoch FROM a.started_at - greatest(a.run_at, a.created_at))::double precision, 0) * 1000,
           NULL
    FROM attempts a LEFT JOIN angela_queue.queues q ON q.name = a.queue
    UNION ALL
    SELECT date_trunc('minute', f.finished_at), f.queue, f.tier, f.kind, 0, 0, 0,
           (f.status = 'succeeded')::int, (f.status = 'failed')::int, 0, (f.status = 'cancelled')::int,
           (f.status = 'dropped')::int, NULL,
           CASE WHEN f.status = 'succeeded' AND f.started_at IS NOT NULL
                THEN greatest(extract(epoch FROM f.finished_at - f.started_at)::double precision, 0) * 1000 END
    FROM finished f
    UNION ALL
    SELECT date_trunc('minute', t.failed_at), t.queue, t.tier, t.kind, 0, 0, 0, 0, 0, 1, 0, 0, NULL, NULL
    FROM angela_queue.tasks t, win
    WHERE t.failed_at >= win.lo AND t.failed_at < win.hi AND t.status IN ('scheduled', 'queued', 'running')
), rolled AS (
    SELECT p.minute, p.queue, p.tier, p.kind,
           sum(p.enqueued) AS enqueued, sum(p.started) AS started, sum(p.on_time) AS on_time,
           sum(p.succeeded) AS succeeded, sum(p.failed) AS failed, sum(p.retried) AS retried,
           sum(p.cancelled) AS cancelled, sum(p.dropped) AS dropped,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY p.wait_ms) AS wait_p50_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY p.wait_ms) AS wait_p95_ms,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY p.wait_ms) AS wait_p99_ms,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY p.run_ms) AS run_p50_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY p.run_ms) AS run_p95_ms,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY p.run_ms) AS run_p99_ms,
           angela_queue.stats_buckets(p.wait_ms) AS wait_buckets,
           angela_queue.stats_buckets(p.run_ms) AS run_buckets,
           coalesce(sum(p.wait_ms), 0) AS wait_sum_ms, coalesce(sum(p.run_ms), 0) AS run_sum_ms
    FROM parts p
    GROUP BY p.minute, p.queue, p.tier, p.kind
), cleared AS (
    -- A minute recomputed has exactly the rows recomputed: one that had a
    -- row before but has nothing now (its task pruned) is removed.
    DELETE FROM angela_queue.stats_minute s
    USING win
    WHERE s.minute >= win.lo AND s.minute < win.hi
      AND NOT EXISTS (SELECT 1 FROM rolled r WHERE r.minute = s.minute AND r.queue = s.queue AND r.tier = s.tier
                                               AND r.kind = s.kind)
    RETURNING 1
), written AS (
    INSERT INTO angela_queue.stats_minute AS s
        (minute, queue, tier, kind, enqueued, started, on_time, succeeded, failed, retried, cancelled, dropped,
         wait_p50_ms, wait_p95_ms, wait_p99_ms, run_p50_ms, run_p95_ms, run_p99_ms, wait_buckets, run_buckets,
         wait_sum_ms, run_sum_ms)
    SELECT * FROM rolled
    ON CONFLICT (minute, queue, tier, kind) DO UPDATE
    SET enqueued = excluded.enqueued, started = excluded.started, on_time = excluded.on_time,
        succeeded = excluded.succeeded, failed = excluded.failed, retried = excluded.retried,
        cancelled = excluded.cancelled, dropped = excluded.dropped,
        wait_p50_ms = excluded.wait_p50_ms, wait_p95_ms = excluded.wait_p95_ms, wait_p99_ms = excluded.wait_p99_ms,
        run_p50_ms = excluded.run_p50_ms, run_p95_ms = excluded.run_p95_ms, run_p99_ms = excluded.run_p99_ms,
        wait_buckets = excluded.wait_buckets, run_buckets = excluded.run_buckets,
        wait_sum_ms = excluded.wait_sum_ms, run_sum_ms = excluded.run_sum_ms
    RETURNING 1
)
SELECT (SELECT count(*) FROM written) AS rows_written, (SELECT count(*) FROM cleared) AS rows_cleared;

-- name: stats_depth_snapshot
-- Depth per queue and tier for the current minute (the first look in a
-- minute is the one kept).
INSERT INTO angela_queue.depth_minute (minute, queue, tier, queued, scheduled, running, overdue)
SELECT date_trunc('minute', now()), d.queue, d.tier, d.queued, d.scheduled, d.running, d.overdue
FROM angela_queue.queue_depth d
WHERE d.queued + d.scheduled + d.running > 0
ON CONFLICT (minute, queue, tier) DO NOTHING;

-- name: stats_progress_read
-- Where the rollup stands (no row: it never ran), and the minute now is in.
SELECT (SELECT p.rolled_until FROM angela_queue.stats_progress p) AS rolled_until,
       date_trunc('minute', now()) AS this_minute;

-- name: stats_progress_write
-- The rollup has written every minute before %(rolled_until)s.
INSERT INTO angela_queue.stats_progress (only_row, rolled_until) VALUES (true, %(rolled_until)s)
ON CONFLICT (only_row) DO UPDATE SET rolled_until = excluded.rolled_until;

-- name: stats_prune
-- Drop the history older than %(keep_s)s seconds (7 days): a range of each
-- table's primary key.
WITH s AS (
    DELETE FROM angela_queue.stats_minute
    WHERE minute < now() - make_interval(secs => %(keep_s)s::double precision) RETURNING 1
), d AS (
    DELETE FROM angela_queue.depth_minute
    WHERE minute < now() - make_interval(secs => %(keep_s)s::double precision) RETURNING 1
)
SELECT (SELECT count(*) FROM s) + (SELECT count(*) FROM d) AS pruned;

-- name: stats_history
-- The history the dashboard charts: per %(bucket_s)s-second bucket since
-- %(since)s and tier, summed over queues and kinds (%(queue)s: one queue
-- only, NULL: all). wait_p95_ms is the worst minute's p95 in the bucket
-- (a bound, not a recomputed percentile); wait_buckets sums the histogram.
SELECT to_timestamp(floor(extract(epoch FROM s.minute) / %(bucket_s)s) * %(bucket_s)s) AS bucket, s.tier,
       sum(s.enqueued) AS enqueued, sum(s.started) AS started, sum(s.on_time) AS on_time,
       sum(s.succeeded) AS succeeded, sum(s.failed) AS failed, sum(s.retried) AS retried,
       sum(s.cancelled) AS cancelled, sum(s.dropped) AS dropped,
       max(s.wait_p95_ms) AS wait_p95_ms, max(s.run_p95_ms) AS run_p95_ms
FROM angela_queue.stats_minute s
WHERE s.minute >= %(since)s::timestamptz AND (%(queue)s::text IS NULL OR s.queue = %(queue)s::text)
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: stats_depth_history
-- Depth per bucket and tier (the average of the minutes looked at in the
-- bucket), summed over queues.
SELECT to_timestamp(floor(extract(epoch FROM m.minute) / %(bucket_s)s) * %(bucket_s)s) AS bucket, m.tier,
       avg(m.queued) AS queued, avg(m.scheduled) AS scheduled, avg(m.running) AS running,
       max(m.overdue) AS overdue
FROM (SELECT d.minute, d.tier, sum(d.queued) AS queued, sum(d.scheduled) AS scheduled, sum(d.running) AS running,
             sum(d.overdue) AS overdue
      FROM angela_queue.depth_minute d
      WHERE d.minute >= %(since)s::timestamptz AND (%(queue)s::text IS NULL OR d.queue = %(queue)s::text)
      GROUP BY d.minute, d.tier) m
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: stats_minutes_since
-- Every rolled-up row of the whole minutes in [%(since)s, %(until)s): what
-- /metrics adds to its counters (each minute once, when it is final).
SELECT s.minute, s.queue, s.tier, s.kind, s.enqueued, s.started, s.on_time, s.succeeded, s.failed, s.retried,
       s.cancelled, s.dropped, s.wait_buckets, s.run_buckets, s.wait_sum_ms, s.run_sum_ms
FROM angela_queue.stats_minute s
WHERE s.minute >= %(since)s::timestamptz AND s.minute < %(until)s::timestamptz
ORDER BY s.minute;
