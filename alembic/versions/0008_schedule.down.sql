-- angela-queue revision 0008, downgrade: back to exactly revision 0007.

DROP VIEW angela_queue.periodic_status;
DROP TABLE angela_queue.periodic;
DROP FUNCTION angela_queue.periodic_before_write();
DROP TRIGGER kinds_after_insert_limits ON angela_queue.kinds;
DROP TRIGGER kinds_after_update_limits ON angela_queue.kinds;
DROP TRIGGER kinds_after_delete_limits ON angela_queue.kinds;
DROP FUNCTION angela_queue.kinds_after_change_limits();
DROP FUNCTION angela_queue.claim_room(text, integer);
DROP TABLE angela_queue.kind_starts;
DROP INDEX angela_queue.tasks_limited_running_idx;
DROP INDEX angela_queue.tasks_claim_idx;
CREATE INDEX tasks_claim_idx ON angela_queue.tasks (queue, priority_key DESC, id)
    WHERE status = 'queued';
ALTER TABLE angela_queue.tasks DROP COLUMN limited_kind;
ALTER TABLE angela_queue.kinds
    DROP CONSTRAINT kind_rate_has_a_period,
    DROP COLUMN rate_period_s,
    DROP COLUMN rate_limit,
    DROP COLUMN concurrency;

CREATE OR REPLACE FUNCTION angela_queue.tasks_before_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q          angela_queue.queues%ROWTYPE;
    k          angela_queue.kinds%ROWTYPE;
    r_rule     record;
    n_queued   integer;
BEGIN
    -- Validation first, so each mistake gets a message that names it instead
    -- of a bare constraint name. SQLSTATEs are the standard ones.
    IF NEW.kind IS NULL OR btrim(NEW.kind) = '' THEN
        RAISE EXCEPTION 'angela_queue: a task needs a kind (got %)', coalesce(quote_literal(NEW.kind), 'NULL')
            USING ERRCODE = 'not_null_violation', COLUMN = 'kind';
    END IF;
    IF octet_length(NEW.kind) > 255 OR octet_length(NEW.queue) > 255 THEN
        RAISE EXCEPTION 'angela_queue: kind and queue must be at most 255 bytes (got % and %)',
                        octet_length(NEW.kind), octet_length(NEW.queue)
            USING ERRCODE = 'string_data_right_truncation';
    END IF;

    -- The kind's defaults: one primary-key probe, skipped when the insert
    -- sets every column a kind can default (the Python client with the
    -- handler's module imported does).
    NEW.queue := nullif(btrim(NEW.queue), '');
    IF NEW.queue IS NULL OR NEW.priority IS NULL OR NEW.max_attempts IS NULL OR NEW.timeout_s IS NULL THEN
        SELECT * INTO k FROM angela_queue.kinds WHERE kind = NEW.kind;
    END IF;
    NEW.queue := coalesce(NEW.queue, k.queue, 'default');

    -- A task names its queue; an unknown queue is created with the defaults
    -- (unbounded), so producers need no setup step.
    SELECT * INTO q FROM angela_queue.queues WHERE name = NEW.queue;
    IF NOT FOUND THEN
        INSERT INTO angela_queue.queues (name) VALUES (NEW.queue) ON CONFLICT (name) DO NOTHING;
        SELECT * INTO q FROM angela_queue.queues WHERE name = NEW.queue;
    END IF;
    NEW.priority := coalesce(NEW.priority, k.priority, q.default_priority, 5);
    NEW.max_attempts := coalesce(NEW.max_attempts, k.max_attempts, q.default_max_attempts, 5);
    NEW.timeout_s := coalesce(NEW.timeout_s, k.timeout_s, q.default_timeout_s);

    IF NEW.priority NOT BETWEEN 1 AND 10 THEN
        RAISE EXCEPTION 'angela_queue: priority must be between 1 and 10 (got %)', NEW.priority
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
    IF NEW.max_attempts NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'angela_queue: max_attempts must be between 1 and 1000000 (got %)', NEW.max_attempts
            USING ERRCODE = 'check_violation', COLUMN = 'max_attempts';
    END IF;
    IF octet_length(NEW.dedup_key) > 2000 THEN
        RAISE EXCEPTION 'angela_queue: dedup_key must be at most 2000 bytes (got %)', octet_length(NEW.dedup_key)
            USING ERRCODE = 'string_data_right_truncation', COLUMN = 'dedup_key';
    END IF;

    PERFORM angela_queue.check_task_time('run_at', NEW.run_at);
    PERFORM angela_queue.check_task_timeout(NEW.timeout_s);

    NEW.run_at := coalesce(NEW.run_at, now());
    NEW.created_at := now();
    NEW.enqueued_by := session_user;
    NEW.boost := coalesce(NEW.boost, 0);
    NEW.boost_rules := coalesce(NEW.boost_rules, '{}');
    -- What workers write is theirs alone: a new task has run nowhere yet,
    -- whatever the insert says (a forged failed_at or errors would rewrite
    -- recent_failures and status for everyone).
    NEW.attempts := 0;
    NEW.worker_id := NULL;
    NEW.started_at := NULL;
    NEW.finished_at := NULL;
    NEW.result := NULL;
    NEW.last_error := NULL;
    NEW.errors := '[]';
    NEW.failed_at := NULL;
    NEW.cancel_requested_at := NULL;

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

CREATE OR REPLACE FUNCTION angela_queue.tasks_before_update_order() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.priority NOT BETWEEN 1 AND 10 THEN
        RAISE EXCEPTION 'angela_queue: priority must be between 1 and 10 (got %)', NEW.priority
            USING ERRCODE = 'check_violation', COLUMN = 'priority';
    END IF;
    IF NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'angela_queue: created_at is set when a task is inserted and cannot be changed'
            USING ERRCODE = 'check_violation', COLUMN = 'created_at';
    END IF;
    PERFORM angela_queue.check_task_time('run_at', NEW.run_at);
    PERFORM angela_queue.check_task_timeout(NEW.timeout_s);
    NEW.deadline := greatest(NEW.run_at, NEW.created_at) + angela_queue.tier_window(NEW.priority);
    NEW.priority_key := angela_queue.priority_key(NEW.priority, NEW.boost, NEW.aging_rate,
                                                  greatest(NEW.run_at, NEW.created_at));
    RETURN NEW;
END
$$;
