-- angela-queue: named queries behind `angela-queue dashboard`. Read only; the
-- dashboard's collector runs them once a second at most, whoever is watching,
-- so each one must stay cheap on a tasks table of millions of rows:
-- the unfinished tasks are read through their partial indexes, finished ones
-- only through a bounded walk of the primary key, and the heartbeat tables
-- are small.

-- name: dashboard_session
-- Make the collector's session harmless: a query that runs away is cancelled
-- after %(statement_timeout_ms)s ms, and no statement can write.
SELECT set_config('statement_timeout', %(statement_timeout_ms)s::text, false) AS statement_timeout,
       set_config('default_transaction_read_only', 'on', false) AS read_only;

-- name: dashboard_ping
-- /healthz: the database answers and the schema is there.
SELECT 1 AS ok FROM angela_queue.queues LIMIT 1;

-- name: dashboard_clock
-- The database clock (the transaction's start): how the collector tells a
-- worker row that appeared since its previous sample from an old one.
SELECT now() AS db_now;

-- name: dashboard_depth
-- Queue depth per queue and tier, zeros included, with the overdue count
-- (queued past deadline + sla_grace: SLA misses still in the making, which
-- the started-task sample below cannot see). The view reads only the
-- unfinished rows through the partial indexes.
SELECT queue, max_size, tier, queued, scheduled, running, oldest_wait_s, overdue
FROM angela_queue.queue_depth;

-- name: dashboard_recent_starts
-- Per tier: enqueue-to-start latency (run_at -> started_at, p50/p99/max) of
-- the tasks started in the last %(latency_window_s)s seconds, and SLA
-- attainment (started by deadline + the queue's sla_grace) of those started
-- in the last %(sla_window_s)s seconds. Zeros and NULLs for idle tiers.
-- Hazard: there is deliberately no index on started_at or finished_at (see
-- maintenance_prune_tasks), so a time window alone would be a sequential scan
-- of the whole table, once a second. The read is bounded on the primary key
-- instead, in two steps:
-- 1. `search` finds the first id enqueued in the last %(lookback_s)s seconds
--    by bisecting the id range, one LIMIT 1 index probe per step (ids are
--    handed out in insert order, so created_at grows with id);
-- 2. `sample` walks the primary key backwards from the newest id down to
--    that floor, and stops after %(row_limit)s rows in any case.
-- The time windows then filter the sample. A task enqueued before the floor
-- (or beyond the row limit) but started inside a window is missed. Unless it
-- was scheduled that far ahead, it waited longer than the lookback minus the
-- window, so it missed its deadline in every tier, and dashboard_depth's
-- overdue counts such waiters while they wait. sample_rows and
-- sample_oldest_s say how far back the sample reaches.
-- MATERIALIZED: the sample is read once for the figures and once to measure it.
WITH RECURSIVE search(lo, hi) AS (
    SELECT coalesce((SELECT min(t.id) FROM angela_queue.tasks t), 0),
           coalesce((SELECT max(t.id) FROM angela_queue.tasks t), 0) + 1
    UNION ALL
    -- The answer stays in [lo, hi]: the first id enqueued since the cutoff,
    -- or max(id) + 1 if there is none. A missing probe (no id >= mid) is not old.
    SELECT CASE WHEN p.created_at < now() - make_interval(secs => %(lookback_s)s::double precision)
                THEN m.mid + 1 ELSE s.lo END,
           CASE WHEN p.created_at < now() - make_interval(secs => %(lookback_s)s::double precision)
                THEN s.hi ELSE m.mid END
    FROM search s
    CROSS JOIN LATERAL (SELECT s.lo + (s.hi - s.lo) / 2 AS mid) m
    LEFT JOIN LATERAL (
        SELECT t.created_at FROM angela_queue.tasks t WHERE t.id >= m.mid ORDER BY t.id LIMIT 1
    ) p ON true
    WHERE s.lo < s.hi
), sample AS MATERIALIZED (
    SELECT t.queue, t.tier, t.created_at, t.run_at, t.started_at, t.deadline
    FROM angela_queue.tasks t
    WHERE t.id >= (SELECT min(hi) FROM search)
    ORDER BY t.id DESC
    LIMIT %(row_limit)s
), coverage AS (
    SELECT count(*) AS sample_rows, min(s.created_at) AS oldest FROM sample s
), measured AS (
    SELECT s.tier,
           s.started_at > now() - make_interval(secs => %(latency_window_s)s::double precision) AS recent,
           1000 * extract(epoch FROM s.started_at - greatest(s.run_at, s.created_at))::double precision AS wait_ms,
           s.started_at <= s.deadline + coalesce(q.sla_grace, interval '1 second') AS on_time
    FROM sample s
    LEFT JOIN angela_queue.queues q ON q.name = s.queue
    WHERE s.started_at > now() - make_interval(secs => %(sla_window_s)s::double precision)
), tiers(tier, rank, priority) AS (
    VALUES ('critical', 1, 9), ('high', 2, 7), ('medium', 3, 5), ('low', 4, 1)
)
SELECT tiers.tier,
       extract(epoch FROM angela_queue.tier_window(tiers.priority))::double precision AS start_within_s,
       count(m.tier) FILTER (WHERE m.recent) AS latency_started,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY m.wait_ms) FILTER (WHERE m.recent) AS p50_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY m.wait_ms) FILTER (WHERE m.recent) AS p99_ms,
       max(m.wait_ms) FILTER (WHERE m.recent) AS max_ms,
       count(m.tier) AS sla_started,
       count(m.tier) FILTER (WHERE m.on_time) AS on_time,
       round(100.0 * count(m.tier) FILTER (WHERE m.on_time) / nullif(count(m.tier), 0), 2)::double precision
           AS attainment_pct,
       c.sample_rows,
       extract(epoch FROM now() - c.oldest)::double precision AS sample_oldest_s
FROM tiers
CROSS JOIN coverage c
LEFT JOIN measured m ON m.tier = tiers.tier
GROUP BY tiers.tier, tiers.rank, tiers.priority, c.sample_rows, c.oldest
ORDER BY tiers.rank;

-- name: dashboard_workers
-- Workers as worker_health judges them now: the live ones, and those that
-- stopped or died in the last %(recent_s)s seconds (so a crash stays visible
-- for a while). Their counters also feed the throughput: the collector
-- differences tasks_completed and tasks_failed between samples, which costs
-- nothing on the tasks table.
SELECT h.id, h.supervisor_id, h.host, h.pid, h.status, h.queues, h.concurrency,
       h.tasks_completed, h.tasks_failed, h.avg_processing_time_ms::double precision AS avg_processing_time_ms,
       h.current_tasks, h.started_at, h.stopped_at,
       extract(epoch FROM now() - h.last_heartbeat)::double precision AS heartbeat_age_s,
       extract(epoch FROM now() - h.last_active)::double precision AS idle_for_s
FROM angela_queue.worker_health h
WHERE h.status NOT IN ('stopped', 'dead')
   OR coalesce(h.stopped_at, h.last_heartbeat) > now() - make_interval(secs => %(recent_s)s::double precision)
ORDER BY h.status IN ('stopped', 'dead'), h.host, h.pid, h.id;



-- name: dashboard_tier_sla
-- SLA attainment per tier over the last hour, summed over queues: the
-- tier_sla view, which `angela-queue status` reads too, so the two agree.
SELECT s.tier, sum(s.started)::bigint AS started, sum(s.on_time)::bigint AS on_time,
       round(100.0 * sum(s.on_time) / nullif(sum(s.started), 0), 2)::double precision AS attainment_pct
FROM angela_queue.tier_sla s
GROUP BY s.tier;

-- name: dashboard_queues
-- Every queue's settings the page shows: its bound, whether it is paused
-- (and since when) and its SLA grace. The queues table is small.
SELECT q.name AS queue, q.max_size, q.paused_at,
       extract(epoch FROM q.sla_grace)::double precision AS sla_grace_s
FROM angela_queue.queues q
ORDER BY q.name;

-- name: dashboard_privileges
-- Whether this login may act from the page. Retrying, pausing and resuming
-- run with the caller's rights (UPDATE on tasks and queues), cancelling
-- needs EXECUTE on cancel_task (revoked from PUBLIC): a reader login has
-- none of them. Hazard: retry_task alone is not enough, since EXECUTE on it
-- is PUBLIC's; the UPDATE it then takes is what a reader lacks.
SELECT current_user AS login,
       has_function_privilege('angela_queue.retry_task(bigint)', 'EXECUTE')
       AND has_function_privilege('angela_queue.retry_tasks(text, text, text)', 'EXECUTE')
       AND has_function_privilege('angela_queue.cancel_task(bigint)', 'EXECUTE')
       AND has_function_privilege('angela_queue.pause_queue(text)', 'EXECUTE')
       AND has_function_privilege('angela_queue.resume_queue(text)', 'EXECUTE')
       AND has_table_privilege('angela_queue.tasks', 'UPDATE')
       AND has_table_privilege('angela_queue.queues', 'UPDATE') AS can_act;

-- name: dashboard_failures
-- The failures panel: tasks failed for good, grouped by queue, kind and the
-- first line of their error, largest groups first. Reads the failed range
-- of tasks_finished_idx only; the pruner bounds it (failed rows are kept
-- for their own retention). all_failed: over every group, not only those
-- shown.
SELECT t.queue, t.kind, split_part(coalesce(t.last_error, ''), E'\n', 1) AS error, count(*) AS tasks,
       max(t.finished_at) AS last_at, max(t.id) AS last_id, sum(count(*)) OVER () AS all_failed
FROM angela_queue.tasks t
WHERE t.status = 'failed' AND t.finished_at IS NOT NULL
GROUP BY t.queue, t.kind, split_part(coalesce(t.last_error, ''), E'\n', 1)
ORDER BY count(*) DESC, max(t.finished_at) DESC
LIMIT %(limit)s;

-- name: dashboard_tasks
-- The task list: newest first, filtered by status, kind, queue and the
-- first line of the error (each NULL: any), %(limit)s a page, before
-- %(before_id)s (NULL: from the newest). Walks the primary key backwards,
-- as tasks_list does: a rare filter on a huge table reads further, but the
-- statement timeout of the session bounds it.
SELECT t.id, t.queue, t.kind, t.status, t.priority, t.tier, t.attempts, t.max_attempts, t.created_at,
       t.run_at, t.started_at, t.finished_at, t.cancel_requested_at IS NOT NULL AS cancel_requested,
       split_part(t.last_error, E'\n', 1) AS last_error
FROM angela_queue.tasks t
WHERE (%(status)s::text IS NULL OR t.status = %(status)s::text)
  AND (%(kind)s::text IS NULL OR t.kind = %(kind)s::text)
  AND (%(queue)s::text IS NULL OR t.queue = %(queue)s::text)
  AND (%(error)s::text IS NULL OR split_part(coalesce(t.last_error, ''), E'\n', 1) = %(error)s::text)
  AND (%(before_id)s::bigint IS NULL OR t.id < %(before_id)s::bigint)
ORDER BY t.id DESC
LIMIT %(limit)s;

-- name: dashboard_task
-- The task page: one task, its payload, result, timings (wait: from when it
-- could run to its start; run: start to finish) and its error history.
SELECT t.id, t.queue, t.kind, t.status, t.priority, t.boost, t.boost_rules, t.tier, t.attempts,
       t.max_attempts, t.timeout_s, t.dedup_key, t.worker_id, t.enqueued_by, t.payload, t.result,
       t.last_error, t.errors, t.created_at, t.run_at, t.deadline, t.started_at, t.finished_at, t.failed_at,
       t.cancel_requested_at,
       extract(epoch FROM t.started_at - greatest(t.run_at, t.created_at))::double precision * 1000 AS wait_ms,
       extract(epoch FROM t.finished_at - t.started_at)::double precision * 1000 AS run_ms,
       extract(epoch FROM angela_queue.tier_window(t.priority))::double precision AS start_within_s
FROM angela_queue.tasks t
WHERE t.id = %(id)s;

-- name: dashboard_history_clock
-- Where the history stands: the rollup's progress (minutes before it are
-- final), the database clock, and the SLA grace the queues allow (the most
-- of them), for the charts' windows.
SELECT now() AS db_now,
       (SELECT p.rolled_until FROM angela_queue.stats_progress p) AS rolled_until,
       coalesce((SELECT max(extract(epoch FROM q.sla_grace)) FROM angela_queue.queues q), 1)::double precision
           AS sla_grace_s;

-- name: dashboard_action_session
-- The session the page's actions run on (a connection of their own, never
-- the collector's read-only one): a statement that waits on a row lock, a
-- retry behind a long claim, say, gives up after %(lock_timeout_ms)s ms and
-- any statement after %(statement_timeout_ms)s ms.
SELECT set_config('statement_timeout', %(statement_timeout_ms)s::text, false) AS statement_timeout,
       set_config('lock_timeout', %(lock_timeout_ms)s::text, false) AS lock_timeout;
