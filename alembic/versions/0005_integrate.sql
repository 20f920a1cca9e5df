-- angela-queue revision 0005 (Integrate): @task defaults reach every
-- producer, and finished tasks are announced to whoever waits on them.
--
-- * angela_queue.kinds records each registered kind's defaults; queues gain
--   default_priority, default_max_attempts and default_timeout_s.
-- * tasks.queue, priority and max_attempts lose their column defaults: the
--   insert trigger fills an unset (NULL) one from the kind, then the queue,
--   then the global default ('default', 5, 5), and validates the result.
-- * notify_done: one NOTIFY on 'angela_queue_done' per statement that
--   finishes tasks (Client.wait); cancel_task and reclaim_tasks send it.
--
-- Frozen once shipped. New grants are applied after this file by the
-- revision's Python (0005_roles.sql).

ALTER TABLE angela_queue.queues
    ADD COLUMN default_priority integer
        CONSTRAINT queue_default_priority_in_range CHECK (default_priority BETWEEN 1 AND 10),
    ADD COLUMN default_max_attempts integer
        CONSTRAINT queue_default_max_attempts_in_range CHECK (default_max_attempts BETWEEN 1 AND 1000000),
    ADD COLUMN default_timeout_s double precision
        CONSTRAINT queue_default_timeout_positive_and_finite
        CHECK (default_timeout_s > 0 AND default_timeout_s < 'Infinity');

CREATE TABLE angela_queue.kinds (
    kind           text PRIMARY KEY
                   CONSTRAINT kind_name_not_empty CHECK (btrim(kind) <> '')
                   CONSTRAINT kind_name_length CHECK (octet_length(kind) <= 255),
    queue          text
                   CONSTRAINT kind_queue_valid
                   CHECK (queue = btrim(queue) AND queue <> '' AND octet_length(queue) <= 255),
    priority       integer
                   CONSTRAINT kind_priority_in_range CHECK (priority BETWEEN 1 AND 10),
    max_attempts   integer
                   CONSTRAINT kind_max_attempts_in_range CHECK (max_attempts BETWEEN 1 AND 1000000),
    timeout_s      double precision
                   CONSTRAINT kind_timeout_positive_and_finite CHECK (timeout_s > 0 AND timeout_s < 'Infinity'),
    -- The worker's retry backoff for this kind (informational here: the
    -- worker running the handler applies its own decorator's values).
    backoff_base_s double precision
                   CONSTRAINT kind_backoff_base_positive_and_finite
                   CHECK (backoff_base_s > 0 AND backoff_base_s < 'Infinity'),
    backoff_max_s  double precision
                   CONSTRAINT kind_backoff_max_positive_and_finite
                   CHECK (backoff_max_s > 0 AND backoff_max_s < 'Infinity'),
    batch          boolean NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- Who recorded it: a worker's host and pid, or the login that ran kinds sync.
    updated_by     text NOT NULL DEFAULT session_user
);

ALTER TABLE angela_queue.tasks
    ALTER COLUMN queue DROP DEFAULT,
    ALTER COLUMN priority DROP DEFAULT,
    ALTER COLUMN max_attempts DROP DEFAULT;

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

CREATE FUNCTION angela_queue.notify_done(p_ids bigint[]) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(cardinality(p_ids), 0) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pg_notify('angela_queue_done',
                      CASE WHEN cardinality(p_ids) <= 300 THEN array_to_string(p_ids, ',') ELSE '*' END);
    RETURN cardinality(p_ids);
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

CREATE OR REPLACE FUNCTION angela_queue.reclaim_tasks(p_ids bigint[], p_workers uuid[], p_reasons text[],
                                           p_now timestamptz DEFAULT NULL)
RETURNS TABLE (id bigint, queue text, status text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    at timestamptz := coalesce(p_now, now());
BEGIN
    RETURN QUERY
    WITH reclaimed AS (
        UPDATE angela_queue.tasks t
        SET status = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled'
                          WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'queued' END,
            worker_id = CASE WHEN t.cancel_requested_at IS NOT NULL OR t.attempts >= t.max_attempts
                             THEN t.worker_id END,
            started_at = CASE WHEN t.cancel_requested_at IS NOT NULL OR t.attempts >= t.max_attempts
                              THEN t.started_at END,
            finished_at = CASE WHEN t.cancel_requested_at IS NOT NULL OR t.attempts >= t.max_attempts
                               THEN at END,
            last_error = CASE WHEN t.started_at IS NULL
                              THEN format('%s, before its handler started (no attempt counted)', d.reason)
                              ELSE format('%s (attempt %s of %s)', d.reason, t.attempts, t.max_attempts) END,
            errors = CASE WHEN t.started_at IS NULL THEN t.errors
                          ELSE angela_queue.error_history(t.errors, t.attempts, at, t.worker_id, d.reason) END,
            failed_at = CASE WHEN t.started_at IS NULL THEN t.failed_at ELSE at END
        FROM unnest(p_ids, p_workers, p_reasons) AS d(id, worker, reason)
        WHERE t.id = d.id AND t.status = 'running' AND t.worker_id IS NOT DISTINCT FROM d.worker
        RETURNING t.id, t.queue, t.status
    ), woken AS (
        SELECT pg_notify('angela_queue_insert', w.queue)
        FROM (SELECT DISTINCT r.queue FROM reclaimed r WHERE r.status = 'queued') w
    ), finished AS (
        SELECT angela_queue.notify_done(array_agg(r.id)) AS n
        FROM reclaimed r WHERE r.status IN ('failed', 'cancelled')
    )
    -- A CTE runs only if referenced: the counts are what send the NOTIFYs.
    SELECT r.id, r.queue, r.status FROM reclaimed r
    WHERE (SELECT count(*) FROM woken) >= 0 AND (SELECT sum(f.n) FROM finished f) >= 0;
END
$$;
