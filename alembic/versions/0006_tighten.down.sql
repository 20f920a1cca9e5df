-- angela-queue revision 0006, downgrade: back to exactly revision 0005.

DROP FUNCTION angela_queue.purge_tasks(text, interval, bigint);

CREATE FUNCTION angela_queue.purge_tasks(p_status text, p_older_than interval) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    total bigint := 0;
    n bigint;
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('succeeded', 'failed', 'cancelled', 'dropped') THEN
        RAISE EXCEPTION 'angela_queue: only finished tasks can be purged: status must be succeeded, failed, '
                        'cancelled or dropped (got %)', coalesce(quote_literal(p_status), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'angela_queue: older_than must be an interval of 0 or more (got %)',
                        coalesce(p_older_than::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        DELETE FROM angela_queue.tasks k
        WHERE k.id = ANY (ARRAY(
            SELECT d.id FROM angela_queue.tasks d
            WHERE d.status IN ('succeeded', 'failed', 'cancelled', 'dropped') AND d.status = p_status
              AND d.finished_at < now() - p_older_than
            ORDER BY d.finished_at
            LIMIT 10000
            FOR UPDATE SKIP LOCKED))
          AND k.status = p_status;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
        EXIT WHEN n < 10000;
    END LOOP;
    RETURN total;
END
$$;

CREATE OR REPLACE FUNCTION angela_queue.pause_queue(p_name text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    paused timestamptz;
BEGIN
    IF p_name IS NULL OR btrim(p_name) = '' THEN
        RAISE EXCEPTION 'angela_queue: a queue needs a name' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO angela_queue.queues (name) VALUES (btrim(p_name)) ON CONFLICT (name) DO NOTHING;
    SELECT q.paused_at INTO paused FROM angela_queue.queues q WHERE q.name = btrim(p_name) FOR UPDATE;
    IF paused IS NOT NULL THEN
        RETURN false;
    END IF;
    UPDATE angela_queue.queues q SET paused_at = now() WHERE q.name = btrim(p_name);
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION angela_queue.retry_tasks(p_status text, p_kind text DEFAULT NULL, p_queue text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
    queues_woken bigint;
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('failed', 'cancelled', 'dropped') THEN
        RAISE EXCEPTION 'angela_queue: only failed, cancelled or dropped tasks can be retried (got %)',
                        coalesce(quote_literal(p_status), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Of several with one dedup key, the newest goes back; none whose key an
    -- unfinished task holds (the key is unique among unfinished tasks).
    WITH candidates AS MATERIALIZED (
        SELECT k.id, k.queue, k.dedup_key,
               row_number() OVER (PARTITION BY k.queue, k.dedup_key ORDER BY k.id DESC) AS nth
        FROM angela_queue.tasks k
        WHERE k.status IN ('succeeded', 'failed', 'cancelled', 'dropped') AND k.status = p_status
          AND (p_kind IS NULL OR k.kind = p_kind) AND (p_queue IS NULL OR k.queue = p_queue)
    ), retried AS (
        UPDATE angela_queue.tasks k
        SET status = 'queued', run_at = now(), attempts = 0, finished_at = NULL, started_at = NULL,
            worker_id = NULL, result = NULL, cancel_requested_at = NULL
        FROM candidates c
        WHERE k.id = c.id AND k.status = p_status
          AND (c.dedup_key IS NULL OR (c.nth = 1 AND NOT EXISTS (
                SELECT 1 FROM angela_queue.tasks u
                WHERE u.queue = c.queue AND u.dedup_key = c.dedup_key
                  AND u.status IN ('scheduled', 'queued', 'running'))))
        RETURNING k.queue
    ), woken AS (
        SELECT pg_notify('angela_queue_insert', w.queue) FROM (SELECT DISTINCT r.queue FROM retried r) w
    )
    -- A CTE runs only if referenced: counting `woken` is what sends the NOTIFYs.
    SELECT (SELECT count(*) FROM retried), (SELECT count(*) FROM woken) INTO n, queues_woken;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION angela_queue.retry_task(p_id bigint)
RETURNS TABLE (id bigint, status text, outcome text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
BEGIN
    SELECT k.id, k.queue, k.status, k.dedup_key INTO t FROM angela_queue.tasks k WHERE k.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF t.status NOT IN ('failed', 'cancelled', 'dropped') THEN
        RETURN QUERY SELECT t.id, t.status, 'unchanged'::text;
        RETURN;
    END IF;
    -- Its dedup key may have been taken by a newer task since it finished.
    IF t.dedup_key IS NOT NULL AND EXISTS (
            SELECT 1 FROM angela_queue.tasks u
            WHERE u.queue = t.queue AND u.dedup_key = t.dedup_key
              AND u.status IN ('scheduled', 'queued', 'running')) THEN
        RETURN QUERY SELECT t.id, t.status, 'dedup_key_held'::text;
        RETURN;
    END IF;
    UPDATE angela_queue.tasks k
    SET status = 'queued', run_at = now(), attempts = 0, finished_at = NULL, started_at = NULL,
        worker_id = NULL, result = NULL, cancel_requested_at = NULL
    WHERE k.id = p_id;
    PERFORM pg_notify('angela_queue_insert', t.queue);
    RETURN QUERY SELECT t.id, 'queued'::text, 'retried'::text;
END
$$;

DROP FUNCTION angela_queue.queue_room(text);

-- Revision 0005 left EXECUTE to PUBLIC unless the roles' grants revoked it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'angela_queue_producer') THEN
        GRANT EXECUTE ON FUNCTION angela_queue.find_unfinished_task(text, text), angela_queue.cancel_task(bigint)
            TO PUBLIC;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION angela_queue.cancel_task(p_id bigint)
RETURNS TABLE (id bigint, status text, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
BEGIN
    SELECT k.id, k.queue, k.status, k.enqueued_by, k.worker_id, k.cancel_requested_at INTO t
    FROM angela_queue.tasks k WHERE k.id = p_id FOR UPDATE;
    IF NOT FOUND OR NOT (t.enqueued_by = session_user::text OR angela_queue.reads_all_tasks(session_user)) THEN
        RETURN;
    END IF;
    IF t.status = 'running' THEN
        IF t.cancel_requested_at IS NULL THEN
            UPDATE angela_queue.tasks k SET cancel_requested_at = now() WHERE k.id = p_id;
            PERFORM pg_notify('angela_queue_cancel', p_id::text);
        END IF;
        RETURN QUERY SELECT t.id, t.status, 'cancel_requested'::text;
        RETURN;
    END IF;
    IF t.status NOT IN ('scheduled', 'queued') THEN
        RETURN QUERY SELECT t.id, t.status, 'unchanged'::text;
        RETURN;
    END IF;
    UPDATE angela_queue.tasks k SET status = 'cancelled', finished_at = now(), last_error = 'cancelled'
    WHERE k.id = p_id;
    PERFORM pg_notify('angela_queue_space', t.queue);
    PERFORM angela_queue.notify_done(ARRAY[p_id]);
    RETURN QUERY SELECT t.id, 'cancelled'::text, 'cancelled'::text;
END
$$;

CREATE OR REPLACE FUNCTION angela_queue.find_unfinished_task(p_queue text, p_dedup_key text)
RETURNS TABLE (id bigint, queue text, kind text, status text, priority integer, boost integer, tier text,
               run_at timestamptz, dedup_key text, last_error text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.id, t.queue, t.kind, t.status, t.priority, t.boost, t.tier, t.run_at, t.dedup_key,
           CASE WHEN t.enqueued_by = session_user::text OR angela_queue.reads_all_tasks(session_user)
                THEN t.last_error END
    FROM angela_queue.tasks t
    WHERE t.queue = p_queue AND t.dedup_key = p_dedup_key
      AND t.status IN ('scheduled', 'queued', 'running')
$$;

CREATE OR REPLACE FUNCTION angela_queue.error_history(p_errors jsonb, p_attempt integer, p_at timestamptz,
                                           p_worker uuid, p_error text) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_path_query_array(
        coalesce(p_errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
            'attempt', p_attempt, 'at', p_at, 'worker', p_worker, 'error', p_error)),
        '$[last - 19 to last]')
$$;

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
    NEW.attempts := 0;

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

ALTER TABLE angela_queue.tasks
    DROP CONSTRAINT task_failed_at_in_range,
    DROP CONSTRAINT task_waiting_has_an_attempt_left;
