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
-- how many queued tasks are already past their deadline plus sla_grace.
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
           count(*) FILTER (WHERE t.status = 'queued'
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
       q.max_size
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
