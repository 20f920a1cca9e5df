-- angela-queue revision 0008 (Schedule): global concurrency caps and rate
-- limits per kind, enforced in the claim; periodic tasks.
--
-- * kinds.concurrency, rate_limit, rate_period_s: the limits.
-- * tasks.limited_kind: set by the insert trigger (and by
--   kinds_after_change_limits when a kind gains or loses a limit); the claim
--   index groups each limited kind's tasks under it, so the walk for
--   unlimited kinds never reads a capped backlog.
-- * kind_starts: the sliding window of rate-limited starts; claim_room: the
--   room a claim has for a limited kind, under the kind's row lock.
-- * periodic and the periodic_status view: tasks the leader enqueues on a
--   schedule, each slot once.
--
-- Frozen once shipped. New grants are applied after this file by the
-- revision's Python (0008_roles.sql).

ALTER TABLE angela_queue.kinds
    ADD COLUMN concurrency integer
        CONSTRAINT kind_concurrency_in_range CHECK (concurrency BETWEEN 1 AND 1000000),
    ADD COLUMN rate_limit integer
        CONSTRAINT kind_rate_limit_in_range CHECK (rate_limit BETWEEN 1 AND 1000000),
    ADD COLUMN rate_period_s integer
        CONSTRAINT kind_rate_period_known CHECK (rate_period_s IN (1, 60, 3600)),
    ADD CONSTRAINT kind_rate_has_a_period CHECK ((rate_limit IS NULL) = (rate_period_s IS NULL));

-- A constant default: no table rewrite.
ALTER TABLE angela_queue.tasks ADD COLUMN limited_kind text NOT NULL DEFAULT '';

DROP INDEX angela_queue.tasks_claim_idx;
CREATE INDEX tasks_claim_idx ON angela_queue.tasks (queue, limited_kind, priority_key DESC, id)
    WHERE status = 'queued';
CREATE INDEX tasks_limited_running_idx ON angela_queue.tasks (limited_kind)
    WHERE status = 'running' AND limited_kind <> '';

-- The insert trigger now always reads the kind's row (its limits set
-- tasks.limited_kind).
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

    -- The kind's defaults and limits: one primary-key probe.
    NEW.queue := nullif(btrim(NEW.queue), '');
    SELECT * INTO k FROM angela_queue.kinds WHERE kind = NEW.kind;
    NEW.limited_kind := CASE WHEN k.concurrency IS NOT NULL OR k.rate_limit IS NOT NULL THEN NEW.kind ELSE '' END;
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

-- A retried task takes its kind's limits as they are now.
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
    -- A task back from a final status (a retry sets run_at) takes its kind's
    -- limits as they are now: kinds_after_change_limits moves only
    -- unfinished rows.
    IF OLD.status IN ('succeeded', 'failed', 'cancelled', 'dropped') AND NEW.status IN ('scheduled', 'queued') THEN
        NEW.limited_kind := coalesce((SELECT CASE WHEN k.concurrency IS NOT NULL OR k.rate_limit IS NOT NULL
                                                  THEN NEW.kind END
                                      FROM angela_queue.kinds k WHERE k.kind = NEW.kind), '');
    END IF;
    RETURN NEW;
END
$$;

-- ---------------------------------------------------------------------------
-- Global limits per kind (kinds.concurrency, kinds.rate_limit), enforced in
-- the claim (sql/tasks.sql, tasks_claim) for every worker on every host.
-- ---------------------------------------------------------------------------

-- The starts of rate-limited kinds in their current window: the claim
-- appends one row per task it starts, claim_room drops what has left the
-- window. A sliding window, so no window of rate_period_s ever holds more
-- than rate_limit starts (a fixed window would allow twice that across a
-- boundary).
CREATE TABLE angela_queue.kind_starts (
    kind        text NOT NULL,
    started_at  timestamptz NOT NULL
);
CREATE INDEX kind_starts_kind_idx ON angela_queue.kind_starts (kind, started_at);

-- How many more tasks of a limited kind one claim may start now, or 0.
-- Locks the kind's row until the claim's transaction ends, so claims of one
-- limited kind go one at a time and none can count before another's claim
-- is visible; a claim that finds the row locked skips the kind this turn
-- (SKIP LOCKED: claims of other kinds never wait on it).
-- Hazard: the counts must run after the lock is taken, in statements of
-- their own (each takes a fresh snapshot under READ COMMITTED); counted in
-- the claim statement itself, they would miss the claim committed just
-- before the lock was granted, and two claims could exceed the cap together.
CREATE FUNCTION angela_queue.claim_room(p_kind text, p_wanted integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    k        record;
    v_room   integer := p_wanted;
    v_count  integer;
BEGIN
    SELECT l.concurrency, l.rate_limit, l.rate_period_s INTO k
    FROM angela_queue.kinds l
    WHERE l.kind = p_kind
    FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    IF k.concurrency IS NOT NULL THEN
        SELECT count(*) INTO v_count FROM angela_queue.tasks t
        WHERE t.status = 'running' AND t.limited_kind = p_kind;
        v_room := least(v_room, k.concurrency - v_count);
    END IF;
    IF k.rate_limit IS NOT NULL AND v_room > 0 THEN
        DELETE FROM angela_queue.kind_starts s
        WHERE s.kind = p_kind AND s.started_at <= now() - make_interval(secs => k.rate_period_s);
        SELECT count(*) INTO v_count FROM angela_queue.kind_starts s WHERE s.kind = p_kind;
        v_room := least(v_room, k.rate_limit - v_count);
    END IF;
    RETURN greatest(v_room, 0);
END
$$;

-- A kind that gains or loses its last limit moves its unfinished tasks in or
-- out of the limited part of the claim index (and running ones into the
-- count). Fires only when that changes: a rare configuration step, which
-- reads the kind's unfinished rows.
-- Hazard: an insert racing the change may keep the old flag (it read the
-- kinds row before); such a task is claimed as before the change.
CREATE FUNCTION angela_queue.kinds_after_change_limits() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_kind     text := CASE WHEN TG_OP = 'DELETE' THEN OLD.kind ELSE NEW.kind END;
    v_limited  boolean := TG_OP <> 'DELETE' AND (NEW.concurrency IS NOT NULL OR NEW.rate_limit IS NOT NULL);
BEGIN
    UPDATE angela_queue.tasks t SET limited_kind = CASE WHEN v_limited THEN v_kind ELSE '' END
    WHERE t.kind = v_kind AND t.status IN ('scheduled', 'queued', 'running')
      AND t.limited_kind <> CASE WHEN v_limited THEN v_kind ELSE '' END;
    RETURN NULL;
END
$$;

CREATE TRIGGER kinds_after_insert_limits
    AFTER INSERT ON angela_queue.kinds
    FOR EACH ROW WHEN (NEW.concurrency IS NOT NULL OR NEW.rate_limit IS NOT NULL)
    EXECUTE FUNCTION angela_queue.kinds_after_change_limits();
CREATE TRIGGER kinds_after_update_limits
    AFTER UPDATE OF concurrency, rate_limit ON angela_queue.kinds
    FOR EACH ROW WHEN ((OLD.concurrency IS NULL AND OLD.rate_limit IS NULL)
                       IS DISTINCT FROM (NEW.concurrency IS NULL AND NEW.rate_limit IS NULL))
    EXECUTE FUNCTION angela_queue.kinds_after_change_limits();
CREATE TRIGGER kinds_after_delete_limits
    AFTER DELETE ON angela_queue.kinds
    FOR EACH ROW WHEN (OLD.concurrency IS NOT NULL OR OLD.rate_limit IS NOT NULL)
    EXECUTE FUNCTION angela_queue.kinds_after_change_limits();

-- ---------------------------------------------------------------------------
-- periodic: tasks enqueued on a schedule by the maintenance leader
-- (maintenance/periodic.py), each slot exactly once across every supervisor.
-- Declared by @task(cron=, every=) (rewritten when a worker starts), or by
-- hand here; pause one with paused_at.
-- ---------------------------------------------------------------------------
CREATE TABLE angela_queue.periodic (
    name          text PRIMARY KEY
                  CONSTRAINT periodic_name_valid CHECK (btrim(name) <> '' AND octet_length(name) <= 200),
    kind          text NOT NULL
                  CONSTRAINT periodic_kind_valid CHECK (btrim(kind) <> '' AND octet_length(kind) <= 255),
    -- Exactly one schedule: a standard five-field cron expression (or
    -- @hourly, @daily, ...) read in `timezone`; or a period in seconds, whose
    -- slots are the whole multiples of it since the Unix epoch (so every host
    -- agrees on them).
    cron          text
                  CONSTRAINT periodic_cron_has_five_fields
                  CHECK (cron ~ '^\s*\S+(\s+\S+){4}\s*$'
                         OR cron ~ '^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$'),
    every_s       double precision
                  CONSTRAINT periodic_every_in_range CHECK (every_s >= 1 AND every_s <= 31622400),
    timezone      text NOT NULL DEFAULT 'UTC',
    payload       jsonb NOT NULL DEFAULT '{}'::jsonb
                  CONSTRAINT periodic_payload_is_object CHECK (jsonb_typeof(payload) = 'object'),
    -- NULL: the kind's default, as for any insert.
    queue         text,
    priority      integer
                  CONSTRAINT periodic_priority_in_range CHECK (priority BETWEEN 1 AND 10),
    paused_at     timestamptz,
    -- 'code': from @task(cron=/every=), rewritten when a worker starts;
    -- 'sql': by hand, left alone by workers.
    declared_in   text NOT NULL DEFAULT 'sql'
                  CONSTRAINT periodic_declared_in_known CHECK (declared_in IN ('code', 'sql')),
    -- The leader's: the last slot enqueued (a slot is enqueued only if it is
    -- later, in the same transaction that moves this on), the task it made,
    -- the next slot due, and why it cannot schedule this row (an expression
    -- or time zone the cron parser refuses), or NULL.
    last_slot     timestamptz,
    last_task_id  bigint,
    next_slot     timestamptz,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT periodic_one_schedule CHECK ((cron IS NULL) <> (every_s IS NULL))
);

-- A time zone the database does not know is refused at once, by name (the
-- leader would otherwise only record an error).
CREATE FUNCTION angela_queue.periodic_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names z WHERE z.name = NEW.timezone) THEN
        RAISE EXCEPTION 'angela_queue: unknown time zone % for periodic task %', quote_literal(NEW.timezone),
                        quote_literal(NEW.name)
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'timezone',
                  HINT = 'Use an IANA name such as UTC or Europe/Paris (SELECT name FROM pg_timezone_names).';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER periodic_before_write
    BEFORE INSERT OR UPDATE OF timezone ON angela_queue.periodic
    FOR EACH ROW EXECUTE FUNCTION angela_queue.periodic_before_write();

-- The views that read tasks_finished_since (SETOF tasks) list the table's
-- columns as of their creation: made again, they list the new one too.
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

CREATE VIEW angela_queue.periodic_status AS
SELECT p.name,
       p.kind,
       coalesce(p.cron, 'every ' || p.every_s::text || ' s') AS schedule,
       p.timezone,
       p.paused_at IS NOT NULL AS paused,
       p.declared_in,
       p.last_slot,
       p.last_task_id,
       t.status AS last_status,
       p.next_slot,
       p.error
FROM angela_queue.periodic p
LEFT JOIN angela_queue.tasks t ON t.id = p.last_task_id;

