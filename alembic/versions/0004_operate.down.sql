-- angela-queue revision 0004, downgrade: back to exactly the 0003 schema. The
-- attempt histories, pauses and cancel requests are dropped with their columns.

DROP VIEW angela_queue.kind_stats;
DROP VIEW angela_queue.recent_failures;
DROP VIEW angela_queue.throughput;
DROP VIEW angela_queue.tier_sla;
DROP VIEW angela_queue.queue_depth;
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

-- Recreated, queue_depth lost its grants: give them back (as 0003 had them).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'angela_queue_worker')
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'angela_queue_reader') THEN
        GRANT SELECT ON angela_queue.queue_depth TO angela_queue_worker, angela_queue_reader;
    END IF;
END
$$;

DROP FUNCTION angela_queue.tasks_finished_since(timestamptz);
DROP FUNCTION angela_queue.purge_tasks(text, interval);
DROP FUNCTION angela_queue.resume_queue(text);
DROP FUNCTION angela_queue.pause_queue(text);
DROP FUNCTION angela_queue.retry_tasks(text, text, text);
DROP FUNCTION angela_queue.retry_task(bigint);
DROP FUNCTION angela_queue.reclaim_tasks(bigint[], uuid[], text[], timestamptz);
CREATE OR REPLACE FUNCTION angela_queue.cancel_task(p_id bigint)
RETURNS TABLE (id bigint, status text, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
BEGIN
    SELECT k.id, k.queue, k.status, k.enqueued_by INTO t
    FROM angela_queue.tasks k WHERE k.id = p_id FOR UPDATE;
    IF NOT FOUND OR NOT (t.enqueued_by = session_user::text OR angela_queue.reads_all_tasks(session_user)) THEN
        RETURN;
    END IF;
    IF t.status NOT IN ('scheduled', 'queued') THEN
        RETURN QUERY SELECT t.id, t.status, 'unchanged'::text;
        RETURN;
    END IF;
    UPDATE angela_queue.tasks k SET status = 'cancelled', finished_at = now(), last_error = 'cancelled'
    WHERE k.id = p_id;
    PERFORM pg_notify('angela_queue_space', t.queue);
    RETURN QUERY SELECT t.id, 'cancelled'::text, 'cancelled'::text;
END
$$;

CREATE OR REPLACE FUNCTION angela_queue.tasks_before_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

    PERFORM angela_queue.check_task_time('run_at', NEW.run_at);
    PERFORM angela_queue.check_task_timeout(NEW.timeout_s);

    NEW.queue := coalesce(nullif(btrim(NEW.queue), ''), 'default');
    NEW.run_at := coalesce(NEW.run_at, now());
    NEW.created_at := now();
    NEW.enqueued_by := session_user;
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
    NEW.deadline := greatest(NEW.run_at, NEW.created_at) + angela_queue.tier_window(NEW.priority);
    NEW.priority_key := angela_queue.priority_key(NEW.priority, NEW.boost, NEW.aging_rate,
                                                  greatest(NEW.run_at, NEW.created_at));

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

DROP FUNCTION angela_queue.error_history(jsonb, integer, timestamptz, uuid, text);
DROP INDEX angela_queue.tasks_failed_at_idx;

ALTER TABLE angela_queue.tasks
    DROP CONSTRAINT task_final_has_finished_at,
    DROP CONSTRAINT task_max_attempts_in_range,
    DROP CONSTRAINT task_attempts_in_range,
    DROP CONSTRAINT task_dedup_key_length,
    DROP CONSTRAINT task_kind_length,
    DROP CONSTRAINT task_queue_length,
    DROP COLUMN cancel_requested_at,
    DROP COLUMN failed_at,
    DROP COLUMN errors;

ALTER TABLE angela_queue.queues
    DROP CONSTRAINT queue_name_length,
    DROP COLUMN paused_at;
