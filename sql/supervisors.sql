-- angela-queue: named queries on angela_queue.supervisors (one row per
-- supervisor process, with its heartbeat), the reads a supervisor makes to
-- scale and watch its workers, and the reads behind `angela-queue status`.

-- name: supervisors_register
-- A supervisor announces itself before it starts any worker. Also used to
-- come back after its row was lost (pruned while it was cut off for long).
INSERT INTO angela_queue.supervisors (id, host, pid, queues, status, workers_target, last_decision)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s::text[], 'running', %(workers_target)s, %(last_decision)s)
ON CONFLICT (id) DO UPDATE
SET status = 'running', stopped_at = NULL, last_heartbeat = now(),
    workers_target = EXCLUDED.workers_target, last_decision = EXCLUDED.last_decision
RETURNING id, started_at;

-- name: supervisors_heartbeat
-- Periodic proof of life with the current target and the last scaling
-- decision. A row the leader marked 'dead' (we were paused or cut off longer
-- than dead_after_s) comes back to 'running': the process is evidently alive.
-- A row marked 'stopped' stays stopped (no row returned).
UPDATE angela_queue.supervisors
SET last_heartbeat = now(), status = 'running', stopped_at = NULL,
    workers_target = %(workers_target)s, last_decision = %(last_decision)s
WHERE id = %(id)s AND status <> 'stopped'
RETURNING id;

-- name: supervisors_mark_stopped
-- Final word of a supervisor that shut down cleanly.
UPDATE angela_queue.supervisors
SET status = 'stopped', stopped_at = now(), last_heartbeat = now(), workers_target = 0,
    last_decision = %(last_decision)s
WHERE id = %(id)s
RETURNING id;

-- name: supervisors_load
-- What one scaling decision needs: how many live supervisors serve at least
-- one of these queues (this one included), and the global depth of these
-- queues, counted only up to %(cap_per_supervisor)s per live supervisor: a
-- decision only needs to know "more than the scale-up threshold", never the
-- exact size of a big backlog (the count walks tasks_claim_idx).
WITH peers AS (
    SELECT count(*) AS n
    FROM angela_queue.supervisors s
    WHERE s.status = 'running' AND s.queues && %(queues)s::text[]
      AND s.last_heartbeat >= now() - make_interval(secs => %(dead_after_s)s::double precision)
)
SELECT greatest(peers.n, 1) AS live_supervisors,
       (SELECT count(*) FROM (
            SELECT 1 FROM angela_queue.tasks t
            WHERE t.status = 'queued' AND t.queue = ANY(%(queues)s::text[])
              -- a paused queue's backlog needs no workers
              AND t.queue NOT IN (SELECT p.name FROM angela_queue.queues p WHERE p.paused_at IS NOT NULL)
            LIMIT %(cap_per_supervisor)s * greatest(peers.n, 1)) AS waiting) AS depth
FROM peers;

-- name: supervisors_workers
-- This supervisor's live worker rows, each with the tasks the database says
-- it runs: what the stuck check and the choice of whom to retire look at.
-- db_now is the database clock, so judging staleness never mixes clocks.
SELECT w.id, w.pid, w.status, w.last_heartbeat, w.started_at,
       coalesce(w.last_active, w.started_at) AS last_active,
       coalesce(array_agg(t.id ORDER BY t.id) FILTER (WHERE t.id IS NOT NULL), '{}') AS task_ids,
       coalesce(array_agg(t.kind ORDER BY t.id) FILTER (WHERE t.id IS NOT NULL), '{}') AS task_kinds,
       coalesce(array_agg(t.timeout_s ORDER BY t.id) FILTER (WHERE t.id IS NOT NULL), '{}') AS task_timeouts_s,
       coalesce(bool_or(t.priority < 5), false) AS holds_low_priority,
       max(t.started_at) AS newest_task_started_at,
       now() AS db_now
FROM angela_queue.workers w
LEFT JOIN angela_queue.tasks t ON t.worker_id = w.id AND t.status = 'running'
WHERE w.supervisor_id = %(supervisor_id)s AND w.status IN ('active', 'idle', 'stopping', 'stuck')
GROUP BY w.id;

-- name: supervisors_apply_max_queue_size
-- Apply a profile's (or --max-queue-size's) bound to the queues served,
-- creating queue rows that do not exist yet. Takes effect for the next insert.
INSERT INTO angela_queue.queues (name, max_size)
SELECT q.name, %(max_size)s FROM unnest(%(queues)s::text[]) AS q(name)
ON CONFLICT (name) DO UPDATE SET max_size = EXCLUDED.max_size
RETURNING name, max_size;

-- name: status_queues
-- `angela-queue status`: per queue and tier, what waits and runs, how long
-- the oldest has waited, whether the queue is paused, and the SLA of the
-- last hour (tier_sla: the dashboard reads the same view, so they agree).
-- Quiet queues (nothing waiting, running or started in the hour, unbounded,
-- not paused) are left out unless %(all)s: a producer can name thousands.
-- `activity` (per queue) orders the busiest first.
WITH rows AS (
    SELECT d.queue, d.max_size, d.paused, d.tier, d.queued, d.scheduled, d.running, d.overdue, d.oldest_wait_s,
           coalesce(s.started, 0) AS started_1h, coalesce(s.on_time, 0) AS on_time_1h,
           s.attainment_pct, s.wait_p50_ms, s.wait_p95_ms, s.wait_p99_ms,
           sum(d.queued + d.scheduled + d.running + coalesce(s.started, 0)) OVER (PARTITION BY d.queue) AS activity
    FROM angela_queue.queue_depth d
    LEFT JOIN angela_queue.tier_sla s ON s.queue = d.queue AND s.tier = d.tier
)
SELECT * FROM rows r
WHERE %(all)s OR r.activity > 0 OR r.paused OR r.max_size IS NOT NULL OR r.queue = 'default'
ORDER BY r.queue, CASE r.tier WHEN 'critical' THEN 1 WHEN 'high' THEN 2 WHEN 'medium' THEN 3 ELSE 4 END;

-- name: status_failures
-- Failed attempts of the last hour, grouped by kind, queue and the first
-- line of the error: trouble first. Every one of the hour is counted (a
-- range of tasks_failed_at_idx), not only the newest the recent_failures
-- view lists, so one burst cannot hide the others nor undercount itself.
SELECT t.kind, t.queue, split_part(t.last_error, E'\n', 1) AS error, count(*) AS tasks,
       max(t.failed_at) AS last_at, max(t.id) AS latest_id,
       count(*) FILTER (WHERE t.status = 'failed') AS failed_for_good
FROM angela_queue.tasks t
WHERE t.failed_at > now() - interval '1 hour'
GROUP BY t.kind, t.queue, split_part(t.last_error, E'\n', 1)
ORDER BY count(*) DESC, max(t.failed_at) DESC
LIMIT %(limit)s;

-- name: supervisors_health
-- Supervisors for `angela-queue status` and the dashboard: whether each holds
-- the maintenance lease, and the status as of now (a 'running' row whose
-- heartbeat stopped shows as 'lost' until the leader marks it dead).
-- Rows: the running ones; every other one too if %(all)s; and those that
-- stopped in the last %(recent_s)s seconds (0: none). Oldest first, the
-- running ones ahead of the rest if %(running_first)s.
SELECT s.id, s.host, s.pid, s.queues,
       CASE WHEN s.status = 'running'
                 AND s.last_heartbeat < now() - make_interval(secs => %(dead_after_s)s::double precision)
            THEN 'lost' ELSE s.status END AS status,
       s.workers_target,
       (SELECT count(*) FROM angela_queue.workers w
        WHERE w.supervisor_id = s.id AND w.status IN ('active', 'idle', 'stopping', 'stuck')) AS workers_live,
       coalesce(l.holder = s.id AND l.expires_at > now(), false) AS leader,
       s.last_decision, s.started_at,
       extract(epoch FROM now() - s.last_heartbeat)::double precision AS heartbeat_age_s
FROM angela_queue.supervisors s
LEFT JOIN angela_queue.leader l ON l.name = %(lease_name)s
WHERE s.status = 'running' OR %(all)s
   OR coalesce(s.stopped_at, s.last_heartbeat) > now() - make_interval(secs => %(recent_s)s::double precision)
ORDER BY CASE WHEN %(running_first)s THEN s.status <> 'running' END, s.started_at, s.id;

-- name: status_workers
-- `angela-queue status`: workers as worker_health judges them now (live ones
-- only unless %(all)s), newest first within each supervisor.
SELECT h.id, h.supervisor_id, h.host, h.pid, h.status, h.concurrency, h.tasks_completed, h.tasks_failed,
       h.avg_processing_time_ms, h.current_tasks,
       extract(epoch FROM now() - h.last_heartbeat)::double precision AS heartbeat_age_s,
       extract(epoch FROM now() - h.last_active)::double precision AS idle_for_s
FROM angela_queue.worker_health h
WHERE %(all)s OR h.status NOT IN ('stopped', 'dead')
ORDER BY h.supervisor_id NULLS LAST, h.started_at DESC, h.id;

-- name: status_unserved_kinds
-- Kinds waiting (queued or scheduled) in a queue that no live worker serves:
-- no active or idle worker on that queue has a handler for the kind. A
-- rolling deploy or a typo in a producer shows up here before anyone wonders
-- why the queue is not draining. The waiting rows are counted once per
-- (queue, kind), through the partial indexes; the workers table is small.
WITH waiting AS (
    SELECT t.queue, t.kind, count(*) AS waiting
    FROM angela_queue.tasks t
    WHERE t.status = 'queued' OR t.status = 'scheduled'
    GROUP BY t.queue, t.kind
), serving AS (
    SELECT h.queues, h.kinds FROM angela_queue.worker_health h WHERE h.status IN ('active', 'idle')
)
SELECT w.queue, w.kind, w.waiting,
       EXISTS (SELECT 1 FROM serving s WHERE w.queue = ANY(s.queues)) AS queue_served
FROM waiting w
WHERE NOT EXISTS (SELECT 1 FROM serving s WHERE w.queue = ANY(s.queues) AND w.kind = ANY(s.kinds))
ORDER BY w.waiting DESC, w.queue, w.kind
LIMIT %(limit)s;

-- name: status_dropped
-- Tasks dropped by a full queue in the last %(window_s)s seconds, per queue,
-- with the latest reason (through tasks_finished_idx).
SELECT t.queue, count(*) AS dropped, max(t.finished_at) AS last_at,
       (array_agg(t.last_error ORDER BY t.finished_at DESC))[1] AS last_reason
FROM angela_queue.tasks t
WHERE t.status = 'dropped'
  AND t.finished_at > now() - make_interval(secs => %(window_s)s::double precision)
GROUP BY t.queue
ORDER BY dropped DESC, t.queue;

-- name: supervisors_live_count
-- How many supervisors are alive (running, heartbeat younger than
-- %(dead_after_s)s): while any is, standalone workers leave the maintenance
-- lease to them (a supervisor's retention and settings are the deployment's).
SELECT count(*) AS live FROM angela_queue.supervisors s
WHERE s.status = 'running'
  AND s.last_heartbeat >= now() - make_interval(secs => %(dead_after_s)s::double precision);

-- name: status_limits
-- The kinds with a global limit, and how close each is to it: running now
-- (against concurrency), started in the current window (against the rate).
SELECT k.kind, k.concurrency, k.rate_limit, k.rate_period_s,
       (SELECT count(*) FROM angela_queue.tasks t
        WHERE t.status = 'running' AND t.limited_kind = k.kind) AS running,
       (SELECT count(*) FROM angela_queue.kind_starts s
        WHERE s.kind = k.kind AND s.started_at > now() - make_interval(secs => coalesce(k.rate_period_s, 0)))
           AS started_in_window
FROM angela_queue.kinds k
WHERE k.concurrency IS NOT NULL OR k.rate_limit IS NOT NULL
ORDER BY k.kind;
