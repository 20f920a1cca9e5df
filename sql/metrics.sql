-- angela-queue: what /metrics reads at each scrape (angela_queue/inspect/metrics.py):
-- the live gauges here, the counters from stats_minute (sql/stats.sql).

-- name: metrics_depth
-- Tasks per queue, tier and state now, and the oldest queued task's wait.
SELECT d.queue, d.tier, d.queued, d.scheduled, d.running, d.overdue, d.oldest_wait_s, d.paused
FROM angela_queue.queue_depth d;

-- name: metrics_workers
-- Workers per status as worker_health judges them now (stopped and dead rows
-- of the last 10 minutes included, as the dashboard shows them).
SELECT h.status, count(*) AS workers
FROM angela_queue.worker_health h
WHERE h.status NOT IN ('stopped', 'dead') OR h.last_heartbeat > now() - interval '10 minutes'
GROUP BY h.status;

-- name: metrics_sla
-- SLA of the last hour per queue and tier (the tier_sla view).
SELECT s.queue, s.tier, s.started, s.on_time, s.attainment_pct FROM angela_queue.tier_sla s;

-- name: metrics_supervisors
-- Running supervisors: how many workers each wants and has.
SELECT s.id, s.host, s.workers_target,
       (SELECT count(*) FROM angela_queue.workers w
        WHERE w.supervisor_id = s.id AND w.status IN ('active', 'idle', 'stopping', 'stuck')) AS workers_live
FROM angela_queue.supervisors s
WHERE s.status = 'running';
