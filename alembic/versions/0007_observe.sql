-- angela-queue revision 0007 (Observe): history that survives restarts, and
-- the trace context a task carries from its producer to its handler.
--
-- * stats_minute and depth_minute: per-minute rollups the maintenance leader
--   writes (sql/stats.sql) and keeps 7 days; stats_progress: how far it got;
--   the stats_buckets aggregate makes their histograms.
-- * tasks_created_brin: the rollup counts enqueues by created_at.
-- * tasks.trace_context: W3C trace context, set by the producer.
--
-- Frozen once shipped. New grants are applied after this file by the
-- revision's Python (0007_roles.sql).

ALTER TABLE angela_queue.tasks
    ADD COLUMN trace_context jsonb
        CONSTRAINT task_trace_context_small_object
        CHECK (trace_context IS NULL OR (jsonb_typeof(trace_context) = 'object'
                                          AND octet_length(trace_context::text) <= 1024));

CREATE INDEX tasks_created_brin ON angela_queue.tasks USING brin (created_at);

-- The views that read finished rows through tasks_finished_since (SETOF
-- tasks) list the table's columns as of their creation: made again, they
-- list the new one too, as a fresh schema's do.
CREATE OR REPLACE VIEW angela_queue.tier_sla AS
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

CREATE OR REPLACE VIEW angela_queue.throughput AS
SELECT date_trunc('minute', t.finished_at) AS minute, t.queue, t.kind,
       count(*) FILTER (WHERE t.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE t.status = 'failed') AS failed
FROM angela_queue.tasks_finished_since(date_trunc('minute', now()) - interval '59 minutes') t
WHERE t.status IN ('succeeded', 'failed')
GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW angela_queue.kind_stats AS
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

CREATE FUNCTION angela_queue.stats_bucket_bounds_ms() RETURNS double precision[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '{5,10,25,50,100,250,500,1000,2500,5000,10000,30000,60000,300000,1800000}'::double precision[]
$$;

CREATE FUNCTION angela_queue.stats_bucket_step(p_counts bigint[], p_value double precision) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    bounds double precision[] := angela_queue.stats_bucket_bounds_ms();
    i integer;
BEGIN
    IF p_value IS NULL THEN
        RETURN p_counts;
    END IF;
    IF p_counts IS NULL THEN
        p_counts := array_fill(0::bigint, ARRAY[cardinality(bounds) + 1]);
    END IF;
    i := 1;
    WHILE i <= cardinality(bounds) AND p_value > bounds[i] LOOP
        i := i + 1;
    END LOOP;
    p_counts[i] := p_counts[i] + 1;
    RETURN p_counts;
END
$$;

CREATE AGGREGATE angela_queue.stats_buckets(double precision) (
    SFUNC = angela_queue.stats_bucket_step,
    STYPE = bigint[]
);


CREATE TABLE angela_queue.stats_minute (
    minute       timestamptz NOT NULL,
    queue        text NOT NULL,
    tier         text NOT NULL,
    kind         text NOT NULL,
    enqueued     bigint NOT NULL DEFAULT 0,
    started      bigint NOT NULL DEFAULT 0,
    on_time      bigint NOT NULL DEFAULT 0,
    succeeded    bigint NOT NULL DEFAULT 0,
    failed       bigint NOT NULL DEFAULT 0,
    retried      bigint NOT NULL DEFAULT 0,
    cancelled    bigint NOT NULL DEFAULT 0,
    dropped      bigint NOT NULL DEFAULT 0,
    wait_p50_ms  double precision,
    wait_p95_ms  double precision,
    wait_p99_ms  double precision,
    run_p50_ms   double precision,
    run_p95_ms   double precision,
    run_p99_ms   double precision,
    wait_buckets bigint[],
    run_buckets  bigint[],
    -- The sums behind the histograms (Prometheus's _sum).
    wait_sum_ms  double precision NOT NULL DEFAULT 0,
    run_sum_ms   double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, queue, tier, kind)
);

CREATE TABLE angela_queue.depth_minute (
    minute     timestamptz NOT NULL,
    queue      text NOT NULL,
    tier       text NOT NULL,
    queued     bigint NOT NULL,
    scheduled  bigint NOT NULL,
    running    bigint NOT NULL,
    overdue    bigint NOT NULL,
    PRIMARY KEY (minute, queue, tier)
);

CREATE TABLE angela_queue.stats_progress (
    only_row      boolean PRIMARY KEY DEFAULT true CONSTRAINT stats_progress_one_row CHECK (only_row),
    rolled_until  timestamptz NOT NULL
);
