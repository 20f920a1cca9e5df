-- angela-queue: inspection views. Part of the canonical schema (applied after
-- schema.sql). Views are recreated wholesale by migrations, so each one here
-- is CREATE OR REPLACE-safe.

-- Every queued task with its live effective priority, best first: the order
-- the claim takes (per queue it walks tasks_claim_idx; across queues it merges
-- by this same live value). Aging counts from greatest(run_at, created_at).
CREATE VIEW angela_queue.queued_tasks AS
SELECT
    t.id, t.queue, t.kind, t.priority, t.boost, t.boost_rules, t.tier,
    t.run_at, t.deadline, t.attempts, t.created_at,
    round(extract(epoch FROM now() - greatest(t.run_at, t.created_at))::numeric / 60, 3) AS minutes_waiting,
    (t.priority + t.boost
        + t.aging_rate * greatest(extract(epoch FROM now() - greatest(t.run_at, t.created_at))::double precision, 0)
          / 60.0
    ) AS effective_priority,
    t.payload
FROM angela_queue.tasks t
WHERE t.status = 'queued'
ORDER BY effective_priority DESC, t.id;

-- One row per queue and tier, zeros included, with the number queued (ready
-- to start), scheduled (waiting for run_at) and running, the oldest wait, and
-- how many queued tasks are already past their deadline plus sla_grace (none
-- while the queue is paused: waiting is what a paused queue is for).
-- Hazard: `status IN ('queued', 'scheduled', 'running')` matches none of the
-- per-status partial indexes and scans the whole table (finished rows
-- included). Spelled as ORs, each arm matches its partial index
-- (tasks_claim_idx, tasks_scheduled_idx, tasks_running_idx): the cost is the
-- backlog, not the table.
CREATE VIEW angela_queue.queue_depth AS
WITH tiers(tier, rank) AS (
    VALUES ('critical', 1), ('high', 2), ('medium', 3), ('low', 4)
), counts AS (
    SELECT t.queue, t.tier,
           count(*) FILTER (WHERE t.status = 'queued')    AS queued,
           count(*) FILTER (WHERE t.status = 'scheduled') AS scheduled,
           count(*) FILTER (WHERE t.status = 'running')   AS running,
           min(greatest(t.run_at, t.created_at)) FILTER (WHERE t.status = 'queued') AS oldest_run_at,
           count(*) FILTER (WHERE t.status = 'queued' AND g.paused_at IS NULL
                              AND t.deadline + coalesce(g.sla_grace, interval '1 second') < now()) AS overdue
    FROM angela_queue.tasks t
    LEFT JOIN angela_queue.queues g ON g.name = t.queue
    WHERE t.status = 'queued' OR t.status = 'scheduled' OR t.status = 'running'
    GROUP BY t.queue, t.tier
)
SELECT q.name AS queue, tiers.tier,
       coalesce(c.queued, 0)::bigint    AS queued,
       coalesce(c.scheduled, 0)::bigint AS scheduled,
       coalesce(c.running, 0)::bigint   AS running,
       extract(epoch FROM now() - c.oldest_run_at)::double precision AS oldest_wait_s,
       coalesce(c.overdue, 0)::bigint   AS overdue,
       q.max_size,
       q.paused_at IS NOT NULL          AS paused
FROM angela_queue.queues q
CROSS JOIN tiers
LEFT JOIN counts c ON c.queue = q.name AND c.tier = tiers.tier
ORDER BY q.name, tiers.rank;

-- One row per worker. The status is the truth as of now: a row whose
-- heartbeat stopped is 'dead' even if the process never got to say so, and a
-- worker holding a task without progress for stuck_after_s is 'stuck'.
CREATE VIEW angela_queue.worker_health AS
SELECT
    w.id, w.supervisor_id, w.host, w.pid, w.queues, w.concurrency,
    CASE
        WHEN w.status IN ('stopped', 'dead') THEN w.status
        WHEN w.last_heartbeat < now() - make_interval(secs => w.dead_after_s) THEN 'dead'
        WHEN w.status = 'stuck' THEN 'stuck'
        WHEN cardinality(w.current_tasks) > 0
             AND coalesce(w.last_active, w.started_at) < now() - make_interval(secs => w.stuck_after_s)
            THEN 'stuck'
        ELSE w.status
    END AS status,
    w.tasks_completed, w.tasks_failed,
    round(w.avg_processing_time_ms::numeric, 3) AS avg_processing_time_ms,
    w.last_active, w.last_heartbeat, w.started_at, w.stopped_at,
    w.current_tasks, w.kinds
FROM angela_queue.workers w;

-- How often each queue and tier started its tasks by their deadline (plus the
-- queue's sla_grace), over the tasks started in the last 24 hours.
CREATE VIEW angela_queue.sla_attainment AS
SELECT t.queue, t.tier,
       count(*) AS started,
       count(*) FILTER (WHERE t.started_at <= t.deadline + q.sla_grace) AS on_time,
       round(100.0 * count(*) FILTER (WHERE t.started_at <= t.deadline + q.sla_grace)
             / nullif(count(*), 0), 2) AS attainment_pct,
       round((percentile_cont(0.5) WITHIN GROUP (
             ORDER BY extract(epoch FROM t.started_at - greatest(t.run_at, t.created_at))))::numeric * 1000, 3) AS p50_start_ms,
       round((percentile_cont(0.99) WITHIN GROUP (
             ORDER BY extract(epoch FROM t.started_at - greatest(t.run_at, t.created_at))))::numeric * 1000, 3) AS p99_start_ms
FROM angela_queue.tasks t
JOIN angela_queue.queues q ON q.name = t.queue
WHERE t.started_at IS NOT NULL AND t.started_at > now() - interval '24 hours'
GROUP BY t.queue, t.tier;

-- ---------------------------------------------------------------------------
-- The operator's views. `angela-queue status` and the dashboard read these,
-- so they agree with each other and with psql. Each reads only the rows it
-- needs, through an index, whatever the number of finished tasks: finished
-- rows through tasks_finished_idx (status, finished_at), unfinished ones
-- through their partial indexes, failures through tasks_failed_at_idx.
-- ---------------------------------------------------------------------------

-- Per queue and tier, over the tasks started in the last hour (running, or
-- finished since): how many started, how many on time (by deadline + the
-- queue's sla_grace), the attainment, and the wait from
-- greatest(run_at, created_at) to the start (p50, p95, p99, in ms).
CREATE VIEW angela_queue.tier_sla AS
WITH started AS (
    SELECT t.queue, t.tier, t.started_at, greatest(t.run_at, t.created_at) AS ready_at, t.deadline
    FROM angela_queue.tasks_finished_since(now() - interval '1 hour') t
    WHERE t.started_at > now() - interval '1 hour'
    UNION ALL
    SELECT t.queue, t.tier, t.started_at, greatest(t.run_at, t.created_at), t.deadline
    FROM angela_queue.tasks t
    WHERE t.status = 'running' AND t.started_at > now() - interval '1 hour'
)
SELECT s.queue, s.tier,
       count(*) AS started,
       count(*) FILTER (WHERE s.started_at <= s.deadline + coalesce(q.sla_grace, interval '1 second')) AS on_time,
       round(100.0 * count(*) FILTER (WHERE s.started_at <= s.deadline + coalesce(q.sla_grace, interval '1 second'))
             / count(*), 2) AS attainment_pct,
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM s.started_at - s.ready_at)))::numeric
             * 1000, 3) AS wait_p50_ms,
       round((percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM s.started_at - s.ready_at)))::numeric
             * 1000, 3) AS wait_p95_ms,
       round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM s.started_at - s.ready_at)))::numeric
             * 1000, 3) AS wait_p99_ms
FROM started s
LEFT JOIN angela_queue.queues q ON q.name = s.queue
GROUP BY s.queue, s.tier;

-- Per minute over the last hour, per queue and kind: the tasks that
-- succeeded and that failed for good in that minute.
CREATE VIEW angela_queue.throughput AS
SELECT date_trunc('minute', t.finished_at) AS minute, t.queue, t.kind,
       count(*) FILTER (WHERE t.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE t.status = 'failed') AS failed
FROM angela_queue.tasks_finished_since(date_trunc('minute', now()) - interval '59 minutes') t
WHERE t.status IN ('succeeded', 'failed')
GROUP BY 1, 2, 3;

-- The latest failed attempts, newest first (at most 1,000): each task's
-- newest failure, with its attempt, the first line of its error, and where
-- the task stands now (retrying, failed for good, or since succeeded).
CREATE VIEW angela_queue.recent_failures AS
SELECT t.id, t.kind, t.queue, (t.errors -> -1 ->> 'attempt')::integer AS attempt, t.max_attempts,
       t.status, split_part(t.last_error, E'\n', 1) AS error, t.failed_at AS at
FROM angela_queue.tasks t
WHERE t.failed_at IS NOT NULL
ORDER BY t.failed_at DESC
LIMIT 1000;

-- Per kind: what waits and runs now, what succeeded and failed in the last
-- hour, the average run time of those successes, and whether any live
-- worker (active or idle) has a handler for it. Kinds live workers serve
-- appear even with nothing to do.
CREATE VIEW angela_queue.kind_stats AS
WITH unfinished AS (
    SELECT t.kind,
           count(*) FILTER (WHERE t.status = 'queued') AS queued,
           count(*) FILTER (WHERE t.status = 'scheduled') AS scheduled,
           count(*) FILTER (WHERE t.status = 'running') AS running
    FROM angela_queue.tasks t
    WHERE t.status = 'queued' OR t.status = 'scheduled' OR t.status = 'running'
    GROUP BY t.kind
), finished AS (
    SELECT t.kind,
           count(*) FILTER (WHERE t.status = 'succeeded') AS succeeded_1h,
           count(*) FILTER (WHERE t.status = 'failed') AS failed_1h,
           avg(extract(epoch FROM t.finished_at - t.started_at)) FILTER (WHERE t.status = 'succeeded')
               AS avg_run_s
    FROM angela_queue.tasks_finished_since(now() - interval '1 hour') t
    WHERE t.status IN ('succeeded', 'failed')
    GROUP BY t.kind
), served AS (
    SELECT DISTINCT unnest(w.kinds) AS kind FROM angela_queue.worker_health w WHERE w.status IN ('active', 'idle')
), kinds AS (
    SELECT kind FROM unfinished UNION SELECT kind FROM finished UNION SELECT kind FROM served
)
SELECT k.kind,
       coalesce(u.queued, 0)::bigint AS queued,
       coalesce(u.scheduled, 0)::bigint AS scheduled,
       coalesce(u.running, 0)::bigint AS running,
       coalesce(f.succeeded_1h, 0)::bigint AS succeeded_1h,
       coalesce(f.failed_1h, 0)::bigint AS failed_1h,
       round((f.avg_run_s * 1000)::numeric, 3) AS avg_run_ms,
       EXISTS (SELECT 1 FROM served s WHERE s.kind = k.kind) AS served
FROM kinds k
LEFT JOIN unfinished u ON u.kind = k.kind
LEFT JOIN finished f ON f.kind = k.kind;

-- Each periodic task: its schedule, whether it is paused, the last slot
-- enqueued and what became of that task, and the next slot due.
CREATE VIEW angela_queue.periodic_status AS
SELECT p.name,
       p.kind,
       coalesce(p.cron, 'every ' || p.every_s::text || ' s') AS schedule,
       p.timezone,
       p.paused_at IS NOT NULL AS paused,
       p.declared_in,
       p.last_slot,
       p.last_task_id,
       t.status AS last_status,
       p.next_slot,
       p.error
FROM angela_queue.periodic p
LEFT JOIN angela_queue.tasks t ON t.id = p.last_task_id;
