-- angela-queue revision 0004 (Operate): retry, cancel running tasks, pause and
-- resume queues, purge; attempt history; the operator's views. Also the
-- hardening review's bounds: kind, queue and dedup_key lengths, attempts,
-- and finished rows always carry finished_at.
--
-- Frozen once shipped. New grants are applied after this file by the
-- revision's Python (0004_roles.sql).

-- 1. Repair rows the new bounds refuse, so nothing stored is lost: a waiting
--    task whose kind or queue is over 255 bytes could never be moved (a NOTIFY
--    payload or an index entry too big), so it is failed, saying why; every
--    over-long name is then cut to 255 bytes (on a character boundary).

CREATE FUNCTION pg_temp.fit_bytes(p text, p_limit integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    s text := p;
BEGIN
    WHILE octet_length(s) > p_limit LOOP
        s := left(s, length(s) - greatest(1, (octet_length(s) - p_limit) / 4));
    END LOOP;
    RETURN s;
END
$$;

UPDATE angela_queue.tasks
SET status = 'failed', finished_at = now(), worker_id = NULL,
    last_error = 'failed by migration 0004: its kind or queue name is over 255 bytes, so it could never be '
                 'promoted, claimed or notified'
WHERE status IN ('scheduled', 'queued', 'running') AND (octet_length(kind) > 255 OR octet_length(queue) > 255);
UPDATE angela_queue.tasks SET kind = pg_temp.fit_bytes(kind, 255) WHERE octet_length(kind) > 255;
UPDATE angela_queue.tasks SET queue = pg_temp.fit_bytes(queue, 255) WHERE octet_length(queue) > 255;
UPDATE angela_queue.tasks SET dedup_key = NULL WHERE octet_length(dedup_key) > 2000;
DELETE FROM angela_queue.queues WHERE octet_length(name) > 255;
UPDATE angela_queue.tasks SET max_attempts = 1000000 WHERE max_attempts > 1000000;
UPDATE angela_queue.tasks SET attempts = least(attempts, max_attempts) WHERE attempts > 1000000;
UPDATE angela_queue.tasks SET finished_at = greatest(coalesce(started_at, created_at), created_at)
WHERE status IN ('succeeded', 'failed', 'cancelled', 'dropped') AND finished_at IS NULL;

-- 2. Columns and constraints.

ALTER TABLE angela_queue.queues
    ADD COLUMN paused_at timestamptz,
    ADD CONSTRAINT queue_name_length CHECK (octet_length(name) <= 255);

ALTER TABLE angela_queue.tasks
    ADD COLUMN errors jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN failed_at timestamptz,
    ADD COLUMN cancel_requested_at timestamptz,
    ADD CONSTRAINT task_queue_length CHECK (octet_length(queue) <= 255),
    ADD CONSTRAINT task_kind_length CHECK (octet_length(kind) <= 255),
    ADD CONSTRAINT task_dedup_key_length CHECK (octet_length(dedup_key) <= 2000),
    ADD CONSTRAINT task_attempts_in_range CHECK (attempts <= 1000000),
    ADD CONSTRAINT task_max_attempts_in_range CHECK (max_attempts <= 1000000),
    ADD CONSTRAINT task_final_has_finished_at
        CHECK (status NOT IN ('succeeded', 'failed', 'cancelled', 'dropped') OR finished_at IS NOT NULL);

-- Tasks that failed before this revision keep their last error as history.
UPDATE angela_queue.tasks
SET errors = jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', coalesce(finished_at, started_at),
                                                  'worker', worker_id, 'error', last_error)),
    failed_at = coalesce(finished_at, started_at, created_at)
WHERE last_error IS NOT NULL AND status IN ('failed', 'scheduled') AND attempts > 0;

CREATE INDEX tasks_failed_at_idx ON angela_queue.tasks (failed_at DESC)
    WHERE failed_at IS NOT NULL;

-- 3. Functions: the attempt history, the one reclaim, and the operations.

CREATE FUNCTION angela_queue.error_history(p_errors jsonb, p_attempt integer, p_at timestamptz,
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
    IF NEW.max_attempts IS NULL OR NEW.max_attempts NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'angela_queue: max_attempts must be between 1 and 1000000 (got %)',
                        coalesce(NEW.max_attempts::text, 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'max_attempts';
    END IF;
    IF octet_length(NEW.kind) > 255 OR octet_length(NEW.queue) > 255 THEN
        RAISE EXCEPTION 'angela_queue: kind and queue must be at most 255 bytes (got % and %)',
                        octet_length(NEW.kind), octet_length(NEW.queue)
            USING ERRCODE = 'string_data_right_truncation';
    END IF;
    IF octet_length(NEW.dedup_key) > 2000 THEN
        RAISE EXCEPTION 'angela_queue: dedup_key must be at most 2000 bytes (got %)', octet_length(NEW.dedup_key)
            USING ERRCODE = 'string_data_right_truncation', COLUMN = 'dedup_key';
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
    RETURN QUERY SELECT t.id, 'cancelled'::text, 'cancelled'::text;
END
$$;

CREATE FUNCTION angela_queue.reclaim_tasks(p_ids bigint[], p_workers uuid[], p_reasons text[],
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
    )
    -- A CTE runs only if referenced: the count is what sends the NOTIFYs.
    SELECT r.id, r.queue, r.status FROM reclaimed r WHERE (SELECT count(*) FROM woken) >= 0;
END
$$;

CREATE FUNCTION angela_queue.retry_task(p_id bigint)
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

CREATE FUNCTION angela_queue.retry_tasks(p_status text, p_kind text DEFAULT NULL, p_queue text DEFAULT NULL)
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

CREATE FUNCTION angela_queue.pause_queue(p_name text) RETURNS boolean
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

CREATE FUNCTION angela_queue.resume_queue(p_name text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was_paused boolean;
BEGIN
    SELECT q.paused_at IS NOT NULL INTO was_paused FROM angela_queue.queues q WHERE q.name = btrim(p_name)
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'angela_queue: no queue named %', quote_literal(p_name)
            USING ERRCODE = 'undefined_object';
    END IF;
    UPDATE angela_queue.queues q SET paused_at = NULL WHERE q.name = btrim(p_name);
    PERFORM pg_notify('angela_queue_insert', btrim(p_name));
    RETURN was_paused;
END
$$;

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

-- 4. Views: paused queues in queue_depth, and the operator's views, which read
--    finished rows through tasks_finished_since.

CREATE FUNCTION angela_queue.tasks_finished_since(p_since timestamptz)
RETURNS SETOF angela_queue.tasks
LANGUAGE sql STABLE AS $$
    SELECT * FROM angela_queue.tasks t WHERE t.status = 'succeeded' AND t.finished_at > p_since
    UNION ALL
    SELECT * FROM angela_queue.tasks t WHERE t.status = 'failed' AND t.finished_at > p_since
    UNION ALL
    SELECT * FROM angela_queue.tasks t WHERE t.status = 'cancelled' AND t.finished_at > p_since
    UNION ALL
    SELECT * FROM angela_queue.tasks t WHERE t.status = 'dropped' AND t.finished_at > p_since
$$;

CREATE OR REPLACE VIEW angela_queue.queue_depth AS
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

CREATE VIEW angela_queue.throughput AS
SELECT date_trunc('minute', t.finished_at) AS minute, t.queue, t.kind,
       count(*) FILTER (WHERE t.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE t.status = 'failed') AS failed
FROM angela_queue.tasks_finished_since(date_trunc('minute', now()) - interval '59 minutes') t
WHERE t.status IN ('succeeded', 'failed')
GROUP BY 1, 2, 3;

CREATE VIEW angela_queue.recent_failures AS
SELECT t.id, t.kind, t.queue, (t.errors -> -1 ->> 'attempt')::integer AS attempt, t.max_attempts,
       t.status, split_part(t.last_error, E'\n', 1) AS error, t.failed_at AS at
FROM angela_queue.tasks t
WHERE t.failed_at IS NOT NULL
ORDER BY t.failed_at DESC
LIMIT 1000;

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
