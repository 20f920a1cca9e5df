-- angela-queue revision 0002, downgrade: back to exactly the 0001 schema.
-- Rows keep their data; the kinds column of workers is dropped.

DROP VIEW angela_queue.worker_health;
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
    w.current_tasks
FROM angela_queue.workers w;

CREATE OR REPLACE VIEW angela_queue.queued_tasks AS
SELECT
    t.id, t.queue, t.kind, t.priority, t.boost, t.boost_rules, t.tier,
    t.run_at, t.deadline, t.attempts, t.created_at,
    round(extract(epoch FROM now() - t.run_at)::numeric / 60, 3) AS minutes_waiting,
    (t.priority + t.boost
        + t.aging_rate * greatest(extract(epoch FROM now() - t.run_at)::double precision, 0) / 60.0
    ) AS effective_priority,
    t.payload
FROM angela_queue.tasks t
WHERE t.status = 'queued'
ORDER BY effective_priority DESC, t.id;

CREATE OR REPLACE VIEW angela_queue.queue_depth AS
WITH tiers(tier, rank) AS (
    VALUES ('critical', 1), ('high', 2), ('medium', 3), ('low', 4)
), counts AS (
    SELECT t.queue, t.tier,
           count(*) FILTER (WHERE t.status = 'queued')    AS queued,
           count(*) FILTER (WHERE t.status = 'scheduled') AS scheduled,
           count(*) FILTER (WHERE t.status = 'running')   AS running,
           min(t.run_at) FILTER (WHERE t.status = 'queued') AS oldest_run_at,
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

CREATE OR REPLACE VIEW angela_queue.sla_attainment AS
SELECT t.queue, t.tier,
       count(*) AS started,
       count(*) FILTER (WHERE t.started_at <= t.deadline + q.sla_grace) AS on_time,
       round(100.0 * count(*) FILTER (WHERE t.started_at <= t.deadline + q.sla_grace)
             / nullif(count(*), 0), 2) AS attainment_pct,
       round((percentile_cont(0.5) WITHIN GROUP (
             ORDER BY extract(epoch FROM t.started_at - t.run_at)))::numeric * 1000, 3) AS p50_start_ms,
       round((percentile_cont(0.99) WITHIN GROUP (
             ORDER BY extract(epoch FROM t.started_at - t.run_at)))::numeric * 1000, 3) AS p99_start_ms
FROM angela_queue.tasks t
JOIN angela_queue.queues q ON q.name = t.queue
WHERE t.started_at IS NOT NULL AND t.started_at > now() - interval '24 hours'
GROUP BY t.queue, t.tier;

ALTER TABLE angela_queue.workers DROP COLUMN kinds;
DROP INDEX angela_queue.tasks_finished_idx;

ALTER TABLE angela_queue.tasks
    DROP CONSTRAINT task_timeout_positive_and_finite,
    DROP CONSTRAINT task_aging_rate_in_range,
    DROP CONSTRAINT task_created_at_in_range,
    DROP CONSTRAINT task_run_at_in_range,
    DROP CONSTRAINT task_deadline_in_range,
    DROP CONSTRAINT task_started_at_in_range,
    DROP CONSTRAINT task_finished_at_in_range,
    ADD CONSTRAINT task_timeout_positive CHECK (timeout_s IS NULL OR timeout_s > 0);

DROP TRIGGER tasks_before_update_order ON angela_queue.tasks;
CREATE TRIGGER tasks_before_update_order
    BEFORE UPDATE OF run_at, priority, boost, aging_rate ON angela_queue.tasks
    FOR EACH ROW EXECUTE FUNCTION angela_queue.tasks_before_update_order();

CREATE OR REPLACE FUNCTION angela_queue.tasks_before_update_order() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.priority NOT BETWEEN 1 AND 10 THEN
        RAISE EXCEPTION 'angela_queue: priority must be between 1 and 10 (got %)', NEW.priority
            USING ERRCODE = 'check_violation', COLUMN = 'priority';
    END IF;
    NEW.deadline := NEW.run_at + angela_queue.tier_window(NEW.priority);
    NEW.priority_key := angela_queue.priority_key(NEW.priority, NEW.boost, NEW.aging_rate, NEW.run_at);
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION angela_queue.tasks_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q          angela_queue.queues%ROWTYPE;
    r_rule     record;
    n_queued   integer;
BEGIN
    -- Validation first, so each mistake gets a message that names it instead
    -- of a bare constraint name. SQLSTATEs are the standard ones.
    IF NEW.kind IS NULL OR btrim(NEW.kind) = '' THEN
        RAISE EXCEPTION 'angela_queue: a task needs a kind (got %)', coalesce(quote_literal(NEW.kind), 'NULL')
            USING ERRCODE = 'not_null_violation', COLUMN = 'kind';
    END IF;
    IF NEW.priority IS NULL OR NEW.priority NOT BETWEEN 1 AND 10 THEN
        RAISE EXCEPTION 'angela_queue: priority must be between 1 and 10 (got %)', coalesce(NEW.priority::text, 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'priority';
    END IF;
    IF NEW.payload IS NULL OR jsonb_typeof(NEW.payload) <> 'object' THEN
        RAISE EXCEPTION 'angela_queue: payload must be a JSON object (got %)', coalesce(jsonb_typeof(NEW.payload), 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'payload';
    END IF;
    IF NEW.status NOT IN ('queued', 'scheduled') THEN
        RAISE EXCEPTION 'angela_queue: a new task must be queued or scheduled (got %)', quote_literal(NEW.status)
            USING ERRCODE = 'check_violation', COLUMN = 'status';
    END IF;
    IF NEW.max_attempts IS NULL OR NEW.max_attempts < 1 THEN
        RAISE EXCEPTION 'angela_queue: max_attempts must be at least 1 (got %)', coalesce(NEW.max_attempts::text, 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'max_attempts';
    END IF;

    NEW.queue := coalesce(nullif(btrim(NEW.queue), ''), 'default');
    NEW.run_at := coalesce(NEW.run_at, now());
    NEW.created_at := coalesce(NEW.created_at, now());
    NEW.boost := coalesce(NEW.boost, 0);
    NEW.boost_rules := coalesce(NEW.boost_rules, '{}');
    NEW.attempts := 0;

    -- A task names its queue; an unknown queue is created with the defaults
    -- (unbounded), so producers need no setup step.
    SELECT * INTO q FROM angela_queue.queues WHERE name = NEW.queue;
    IF NOT FOUND THEN
        INSERT INTO angela_queue.queues (name) VALUES (NEW.queue) ON CONFLICT (name) DO NOTHING;
        SELECT * INTO q FROM angela_queue.queues WHERE name = NEW.queue;
    END IF;

    -- silent => true: a rule that errors on this payload (a strict path with
    -- a missing key, a division by zero) is a non-match, not a failed insert.
    FOR r_rule IN
        SELECT r.name, r.boost FROM angela_queue.boost_rules r
        WHERE r.enabled AND jsonb_path_exists(NEW.payload, r.condition, '{}', true)
        ORDER BY r.name
    LOOP
        NEW.boost := NEW.boost + r_rule.boost;
        NEW.boost_rules := NEW.boost_rules || r_rule.name;
    END LOOP;

    NEW.status := CASE WHEN NEW.run_at > now() THEN 'scheduled' ELSE 'queued' END;
    NEW.aging_rate := q.aging_rate;
    NEW.deadline := NEW.run_at + angela_queue.tier_window(NEW.priority);
    NEW.priority_key := angela_queue.priority_key(NEW.priority, NEW.boost, NEW.aging_rate, NEW.run_at);

    -- Bounded queue: max_size caps the tasks waiting in it, queued or
    -- scheduled (a delayed task counts from its insert, or a burst of them
    -- would overrun the bound the moment they come due). Each count stops at
    -- max_size (LIMIT) and walks a small partial index (tasks_claim_idx,
    -- tasks_scheduled_idx), so it costs O(max_size) only for bounded queues and
    -- nothing for unbounded ones: no full count, and no hot counter row that
    -- every insert and claim would serialize on.
    -- Concurrent inserts do not see each other's rows, so a queue can exceed
    -- max_size by at most the number of transactions inserting at once.
    IF q.max_size IS NOT NULL THEN
        SELECT (SELECT count(*) FROM (
                    SELECT 1 FROM angela_queue.tasks t
                    WHERE t.queue = NEW.queue AND t.status = 'queued'
                    LIMIT q.max_size) AS queued)
             + (SELECT count(*) FROM (
                    SELECT 1 FROM angela_queue.tasks t
                    WHERE t.queue = NEW.queue AND t.status = 'scheduled'
                    LIMIT q.max_size) AS scheduled)
          INTO n_queued;
        IF n_queued >= q.max_size THEN
            IF NEW.priority < 5 THEN
                -- Kept as a row, never silently lost.
                NEW.status := 'dropped';
                NEW.finished_at := now();
                NEW.last_error := format(
                    'dropped: queue %L is full (max_size %s) and priority %s < 5',
                    NEW.queue, q.max_size, NEW.priority);
            ELSE
                RAISE EXCEPTION 'angela_queue: queue % is full (max_size %)', quote_literal(NEW.queue), q.max_size
                    USING ERRCODE = 'AQ001',
                          HINT = 'Wait for workers to drain it, raise angela_queue.queues.max_size, or enqueue with priority < 5 to drop instead of failing.';
            END IF;
        END IF;
    END IF;

    RETURN NEW;
END
$$;

DROP FUNCTION angela_queue.check_task_timeout(double precision);
DROP FUNCTION angela_queue.check_task_time(text, timestamptz);

ALTER TABLE angela_queue.boost_rules DROP CONSTRAINT boost_rule_boost_in_range;
ALTER TABLE angela_queue.queues
    DROP CONSTRAINT queue_sla_grace_in_range,
    DROP CONSTRAINT queue_aging_rate_in_range,
    ADD CONSTRAINT queue_aging_rate_not_negative CHECK (aging_rate >= 0);
