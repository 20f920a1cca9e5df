-- angela-queue: the canonical schema.
--
-- This file is the single source of truth for the database shape. Alembic
-- revisions are deltas on top of it, and tests/migrations diffs a database
-- built from this file against one upgraded through every revision.
--
-- Everything lives in the schema `angela_queue`. Any program can enqueue with
--     INSERT INTO angela_queue.tasks (kind) VALUES ('send_email');
-- and the triggers below give it the same defaults, boosts, tiers, deadlines,
-- bounds and wake-ups as the Python API.

CREATE SCHEMA IF NOT EXISTS angela_queue;

-- ---------------------------------------------------------------------------
-- queues: one row per queue and its settings.
-- ---------------------------------------------------------------------------
CREATE TABLE angela_queue.queues (
    name        text PRIMARY KEY
                CONSTRAINT queue_name_not_empty CHECK (name <> '')
                -- A queue name travels as a NOTIFY payload (at most 8000 bytes)
                -- and in index keys: bounded, so no name can break either.
                CONSTRAINT queue_name_length CHECK (octet_length(name) <= 255),
    -- NULL means unbounded. Counted against the tasks waiting in the queue:
    -- status 'queued' or 'scheduled'.
    max_size    integer
                CONSTRAINT queue_max_size_not_negative CHECK (max_size IS NULL OR max_size >= 0),
    -- Effective-priority points gained per minute of waiting (the plan: 0.1).
    -- Copied onto each task at insert, so a change applies to new tasks.
    -- Bounded, and NaN is out (NaN > 1000 in Postgres): the rate multiplies
    -- into every task's claim key.
    aging_rate  double precision NOT NULL DEFAULT 0.1
                CONSTRAINT queue_aging_rate_in_range CHECK (aging_rate >= 0 AND aging_rate <= 1000),
    -- A start within deadline + sla_grace counts as on time. Bounded, so that
    -- deadline + sla_grace can never leave the timestamp range in a view.
    sla_grace   interval NOT NULL DEFAULT interval '1 second'
                CONSTRAINT queue_sla_grace_in_range CHECK (sla_grace >= interval '0' AND sla_grace <= interval '7 days'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Set while the queue is paused (angela_queue.pause_queue): it keeps
    -- accepting tasks, but none is claimed, and none counts as overdue.
    paused_at   timestamptz,
    -- What a task in this queue gets for a column its insert leaves unset
    -- (NULL) when its kind has no default either: explicit value > kind
    -- default (angela_queue.kinds) > these > the global 5 / 5 / no timeout.
    default_priority     integer
                         CONSTRAINT queue_default_priority_in_range CHECK (default_priority BETWEEN 1 AND 10),
    default_max_attempts integer
                         CONSTRAINT queue_default_max_attempts_in_range
                         CHECK (default_max_attempts BETWEEN 1 AND 1000000),
    -- NaN passes "> 0" in Postgres (it sorts above every number): hence the upper bound.
    default_timeout_s    double precision
                         CONSTRAINT queue_default_timeout_positive_and_finite
                         CHECK (default_timeout_s > 0 AND default_timeout_s < 'Infinity'),
    -- 'durable' (the default): every enqueue and outcome is on disk when it
    -- is acknowledged. 'fast': the Python client's own enqueues into the
    -- queue, and the workers that serve only fast queues, commit with
    -- synchronous_commit = off (sql/tasks.sql, tasks_enqueue): after a crash of
    -- the database server the last few hundred milliseconds of acknowledged
    -- writes may be lost (an enqueue, or an outcome: that task runs again),
    -- never corrupted or half-applied.
    durability           text NOT NULL DEFAULT 'durable'
                         CONSTRAINT queue_durability_known CHECK (durability IN ('durable', 'fast'))
);

INSERT INTO angela_queue.queues (name) VALUES ('default');

-- ---------------------------------------------------------------------------
-- kinds: each registered kind's defaults, as its @task decorator declares
-- them. Workers record their kinds when they start (and `angela-queue kinds
-- sync --app MODULE` does it from a deploy step), so an insert from psql,
-- another language or the CLI that leaves a column unset gets what the
-- Python code says. NULL: the kind sets nothing for that column. The code
-- is the source of truth: an edit here lasts until a worker starts again.
-- ---------------------------------------------------------------------------
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
    updated_by     text NOT NULL DEFAULT session_user,
    -- Global limits, enforced inside the claim across every worker and host
    -- (angela_queue.claim_room): at most `concurrency` tasks of the kind
    -- running at once, at most `rate_limit` starts in any `rate_period_s`
    -- seconds. NULL: no limit. @task(concurrency=, rate=) sets them when a
    -- worker starts; a limit set here by hand stays until changed here (a
    -- deploy never lifts an operator's throttle), unless the code sets one.
    concurrency    integer
                   CONSTRAINT kind_concurrency_in_range CHECK (concurrency BETWEEN 1 AND 1000000),
    rate_limit     integer
                   CONSTRAINT kind_rate_limit_in_range CHECK (rate_limit BETWEEN 1 AND 1000000),
    rate_period_s  integer
                   CONSTRAINT kind_rate_period_known CHECK (rate_period_s IN (1, 60, 3600)),
    CONSTRAINT kind_rate_has_a_period CHECK ((rate_limit IS NULL) = (rate_period_s IS NULL))
);

-- ---------------------------------------------------------------------------
-- boost_rules: data, not code. Each rule is a SQL/JSON path predicate tested
-- against the payload at insert; the boosts of every rule that matches add up.
-- ---------------------------------------------------------------------------
CREATE TABLE angela_queue.boost_rules (
    name        text PRIMARY KEY
                CONSTRAINT boost_rule_name_not_empty CHECK (name <> ''),
    -- e.g. '$.text ? (@ like_regex "urgent" flag "i")'; jsonpath is parsed and
    -- validated when the rule is stored, so a broken rule is rejected up front.
    condition   jsonpath NOT NULL
                -- A path naming a $variable fails on every insert (no
                -- variables are passed, and silent mode does not cover it):
                -- reject it when the rule is stored. Variables print as $"name".
                CONSTRAINT boost_rule_condition_has_no_variables
                CHECK (condition::text !~ '\$"[A-Za-z_][A-Za-z0-9_]*"'),
    -- Bounded: boosts add up in an integer, and one rule of two billion
    -- points would make every insert that matches it fail with an overflow.
    boost       integer NOT NULL
                CONSTRAINT boost_rule_boost_in_range CHECK (boost BETWEEN -100 AND 100),
    enabled     boolean NOT NULL DEFAULT true,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO angela_queue.boost_rules (name, condition, boost, description) VALUES
    ('emotional', '$.emotional ? (@ == true)', 2,
     'an emotional conversation: payload has "emotional": true'),
    ('urgent', '$.text ? (@ like_regex "urgent" flag "i")', 3,
     'the text says "urgent", in any case'),
    ('question', '$.text ? (@ like_regex "\\?$")', 1,
     'the text is a question: it ends with "?"');

-- ---------------------------------------------------------------------------
-- tasks: one row per task, from enqueue to its final status.
-- ---------------------------------------------------------------------------
CREATE TABLE angela_queue.tasks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Bounded (255 bytes), like kind: both are index keys (a btree entry
    -- holds at most 2704 bytes) and the queue a NOTIFY payload; one row over
    -- either limit would fail every statement that moves it.
    -- queue, priority and max_attempts have no column default: the insert
    -- trigger fills an unset (NULL) one from the kind, then the queue, then
    -- the global default ('default', 5, 5).
    queue           text NOT NULL
                    CONSTRAINT task_queue_length CHECK (octet_length(queue) <= 255),
    kind            text NOT NULL
                    CONSTRAINT task_kind_length CHECK (octet_length(kind) <= 255),
    payload         jsonb NOT NULL DEFAULT '{}'::jsonb,
    priority        integer NOT NULL
                    CONSTRAINT task_priority_between_1_and_10 CHECK (priority BETWEEN 1 AND 10),
    boost           integer NOT NULL DEFAULT 0,
    -- Names of the boost rules that fired at insert.
    boost_rules     text[] NOT NULL DEFAULT '{}',
    tier            text GENERATED ALWAYS AS (
                        CASE WHEN priority >= 9 THEN 'critical'
                             WHEN priority >= 7 THEN 'high'
                             WHEN priority >= 5 THEN 'medium'
                             ELSE 'low' END) STORED,
    status          text NOT NULL DEFAULT 'queued'
                    CONSTRAINT task_status_known CHECK (status IN (
                        'scheduled', 'queued', 'running',
                        'succeeded', 'failed', 'cancelled', 'dropped')),
    -- Set by the insert trigger (the caller's value is ignored) and never
    -- changed: a created_at in the future would pin retention and aging.
    created_at      timestamptz NOT NULL DEFAULT now()
                    CONSTRAINT task_created_at_in_range
                    CHECK (created_at >= '1900-01-01 00:00:00+00' AND created_at < '9999-01-01 00:00:00+00'),
    -- Not startable before run_at. Aging counts from greatest(run_at,
    -- created_at): a run_at in 1900 means "now", not "ahead of everything".
    -- Finite and between 1900 and 9999 (angela_queue.check_task_time).
    run_at          timestamptz NOT NULL DEFAULT now()
                    CONSTRAINT task_run_at_in_range
                    CHECK (run_at >= '1900-01-01 00:00:00+00' AND run_at < '9999-01-01 00:00:00+00'),
    -- greatest(run_at, created_at) + the tier's start window; set by trigger.
    deadline        timestamptz NOT NULL
                    CONSTRAINT task_deadline_in_range
                    CHECK (deadline >= '1900-01-01 00:00:00+00' AND deadline < '9999-01-02 00:00:00+00'),
    -- The queue's aging rate when the task was inserted; set by trigger.
    aging_rate      double precision NOT NULL DEFAULT 0.1
                    CONSTRAINT task_aging_rate_in_range CHECK (aging_rate >= 0 AND aging_rate <= 1000),
    -- The claim order, stored so it can be indexed:
    --   priority + boost + aging_rate * minutes_since(start)
    -- orders rows exactly like
    --   priority + boost - aging_rate * epoch(start) / 60
    -- because the now() term is the same for every row; start is
    -- greatest(run_at, created_at). Set by trigger.
    priority_key    double precision NOT NULL DEFAULT 0,
    -- Bounded well inside an integer: the claim adds one, and an overflow
    -- there would fail every claim of the queue.
    attempts        integer NOT NULL DEFAULT 0
                    CONSTRAINT task_attempts_not_negative CHECK (attempts >= 0)
                    CONSTRAINT task_attempts_in_range CHECK (attempts <= 1000000),
    max_attempts    integer NOT NULL
                    CONSTRAINT task_max_attempts_positive CHECK (max_attempts >= 1)
                    CONSTRAINT task_max_attempts_in_range CHECK (max_attempts <= 1000000),
    -- Seconds a single attempt may run; NULL means the handler's or worker's
    -- default. NaN passes "> 0" in Postgres (NaN sorts above every number),
    -- hence the upper bound.
    timeout_s       double precision
                    CONSTRAINT task_timeout_positive_and_finite
                    CHECK (timeout_s IS NULL OR (timeout_s > 0 AND timeout_s < 'Infinity')),
    -- While a task with this key is waiting or running, another enqueue with
    -- the same (queue, dedup_key) returns the existing task.
    dedup_key       text
                    CONSTRAINT task_dedup_key_length CHECK (octet_length(dedup_key) <= 2000),
    worker_id       uuid,
    -- Set by the claim and by the outcome; the range checks (cheap, unlike a
    -- trigger on the hot path) keep a hand-edited row readable.
    started_at      timestamptz
                    CONSTRAINT task_started_at_in_range
                    CHECK (started_at IS NULL OR (started_at >= '1900-01-01 00:00:00+00' AND started_at < '9999-01-01 00:00:00+00')),
    finished_at     timestamptz
                    CONSTRAINT task_finished_at_in_range
                    CHECK (finished_at IS NULL OR (finished_at >= '1900-01-01 00:00:00+00' AND finished_at < '9999-01-01 00:00:00+00')),
    result          jsonb,
    last_error      text,
    -- The login that enqueued the task (session_user, set by the insert
    -- trigger). A login with only angela_queue_producer sees its own tasks
    -- and no others (the tasks_visible policy).
    enqueued_by     text,
    -- The last 20 failed attempts, oldest first: [{"attempt", "at", "worker",
    -- "error"}] (angela_queue.error_history). last_error is the newest.
    errors          jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- When the newest failed attempt ended (recent_failures walks an index on
    -- it). Bounded like the other times: one far-future row would sort first
    -- in recent_failures forever, and 'infinity' breaks every reader.
    failed_at       timestamptz
                    CONSTRAINT task_failed_at_in_range
                    CHECK (failed_at IS NULL OR (failed_at >= '1900-01-01 00:00:00+00' AND failed_at < '9999-01-01 00:00:00+00')),
    -- Set when a running task is asked to stop (angela_queue.cancel_task):
    -- whatever its attempt's outcome, it is recorded as cancelled, and it is
    -- never retried.
    cancel_requested_at timestamptz,
    -- The producer's trace context (W3C: {"traceparent": ..., "tracestate":
    -- ...}), so the handler's span joins the enqueue's trace (the [otel]
    -- extra). Small and an object, or NULL.
    trace_context   jsonb
                    CONSTRAINT task_trace_context_small_object
                    CHECK (trace_context IS NULL OR (jsonb_typeof(trace_context) = 'object'
                                                      AND octet_length(trace_context::text) <= 1024)),
    -- The kind, when it has a concurrency cap or a rate limit; '' when it has
    -- neither (set by the insert trigger, kept true by
    -- kinds_after_change_limits). The claim index groups tasks by it, so the
    -- walk for unlimited kinds never reads a capped kind's backlog, and each
    -- limited kind is walked on its own, in priority order.
    limited_kind    text NOT NULL DEFAULT '',
    -- A task in a final status has finished: retention goes by finished_at.
    CONSTRAINT task_final_has_finished_at
        CHECK (status NOT IN ('succeeded', 'failed', 'cancelled', 'dropped') OR finished_at IS NOT NULL),
    -- A waiting task has an attempt left: the claim passes over one that has
    -- none, and nothing else would ever move it (it would sit, overdue, for
    -- good). An edit that spends them is refused; retry resets them.
    CONSTRAINT task_waiting_has_an_attempt_left
        CHECK (status NOT IN ('scheduled', 'queued') OR attempts < max_attempts)
)
-- Queue rows churn: every task is inserted, updated two or three times and
-- deleted by the pruner. Free space on each page (fillfactor) lets the new row
-- versions stay on their page, and aggressive autovacuum keeps dead versions
-- from bloating the claim index between runs.
WITH (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim walks this index, per queue, in effective-priority order: no
-- sort, and only startable rows are in it. Per queue because the stored key
-- is exact only among rows that share an aging rate (one rate per queue);
-- the claim merges queues by the live effective priority. It also serves the
-- bounded-queue count at insert and the depth reads.
-- Within a queue, the tasks of each limited kind (a concurrency cap or a
-- rate limit) sort apart under limited_kind, so the walk for unlimited
-- kinds (limited_kind = '') never reads them, and each limited kind's walk
-- reads only its own.
CREATE INDEX tasks_claim_idx ON angela_queue.tasks (queue, limited_kind, priority_key DESC, id)
    WHERE status = 'queued';
-- The running count of a capped kind, under its claim lock. Only limited
-- tasks are in it.
CREATE INDEX tasks_limited_running_idx ON angela_queue.tasks (limited_kind)
    WHERE status = 'running' AND limited_kind <> '';
-- Filling a low-priority batch: the best waiting tasks of one kind below
-- priority 5, without walking past every higher-priority task first.
CREATE INDEX tasks_batch_fill_idx ON angela_queue.tasks (queue, kind, priority_key DESC, id)
    WHERE status = 'queued' AND priority < 5;
-- Promotion of delayed and retrying tasks once their run_at arrives.
CREATE INDEX tasks_scheduled_idx ON angela_queue.tasks (run_at)
    WHERE status = 'scheduled';
-- Reclaim of the tasks a dead or stuck worker held.
CREATE INDEX tasks_running_idx ON angela_queue.tasks (worker_id)
    WHERE status = 'running';
-- Retention: the pruner deletes each final status by age, oldest first,
-- through this index (and the views count recent outcomes with it). Only
-- final rows are in it, so enqueue and claim never write to it.
CREATE INDEX tasks_finished_idx ON angela_queue.tasks (status, finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'dropped');
-- The latest failed attempts, newest first (recent_failures, status, the
-- dashboard). Only tasks that ever failed an attempt are in it.
CREATE INDEX tasks_failed_at_idx ON angela_queue.tasks (failed_at DESC)
    WHERE failed_at IS NOT NULL;

-- The per-minute rollup counts the tasks enqueued in each minute. A BRIN
-- index costs an insert next to nothing (it summarises page ranges, and
-- rows are appended in created_at order), where a btree would be written on
-- every enqueue.
CREATE INDEX tasks_created_brin ON angela_queue.tasks USING brin (created_at);
-- Deduplication: one unfinished task per (queue, dedup_key).
CREATE UNIQUE INDEX tasks_dedup_idx ON angela_queue.tasks (queue, dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running');

-- ---------------------------------------------------------------------------
-- Insert trigger: validation with clear errors, queue row, boosts, status,
-- deadline, claim key and the bounded-queue rule. Runs for every INSERT, so
-- a task from psql gets exactly what a task from Python gets.
-- ---------------------------------------------------------------------------

-- Seconds a tier has to start, from run_at.
CREATE FUNCTION angela_queue.tier_window(p_priority integer) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_priority >= 9 THEN interval '0 seconds'
                WHEN p_priority >= 7 THEN interval '1 minute'
                WHEN p_priority >= 5 THEN interval '5 minutes'
                ELSE interval '30 minutes' END
$$;

-- The stored claim key. Epoch is taken in minutes so aging_rate reads as
-- "points per minute". Written over the interval since the epoch, which is
-- IMMUTABLE (extract(epoch FROM timestamptz) is only STABLE), so the planner
-- inlines it into a set-based insert (revision 0012).
CREATE FUNCTION angela_queue.priority_key(
    p_priority integer, p_boost integer, p_aging_rate double precision, p_run_at timestamptz
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_priority + p_boost
           - p_aging_rate * (extract(epoch FROM p_run_at - timestamptz '1970-01-01 00:00:00+00')::double precision / 60.0)
$$;

-- Timestamps a worker must be able to read, and aging to count from: finite
-- and between 1900 and 9999. Python's datetime ends at year 9999 (a later one
-- fails to decode after the claim has committed, orphaning the claim), and
-- now() - '-infinity' is out of the interval range (every claim on the queue
-- would fail).
CREATE FUNCTION angela_queue.check_task_time(p_column text, p_value timestamptz) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_value IS NOT NULL AND (NOT isfinite(p_value)
                                OR p_value < timestamptz '1900-01-01 00:00:00+00'
                                OR p_value >= timestamptz '9999-01-01 00:00:00+00') THEN
        RAISE EXCEPTION 'angela_queue: % must be a finite time between 1900-01-01 and 9999-01-01 (got %)',
                        p_column, p_value
            USING ERRCODE = 'datetime_field_overflow', COLUMN = p_column;
    END IF;
END
$$;

-- The attempt history after one more failed attempt: the newest 20 kept,
-- oldest first. Every writer of a failure (the worker's outcomes, the
-- reclaims) goes through this one function.
CREATE FUNCTION angela_queue.error_history(p_errors jsonb, p_attempt integer, p_at timestamptz,
                                           p_worker uuid, p_error text) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- Each error cut to 8000 characters: 20 of them stay a small document
    -- whatever a handler's message holds.
    SELECT jsonb_path_query_array(
        coalesce(p_errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
            'attempt', p_attempt, 'at', p_at, 'worker', p_worker, 'error', left(p_error, 8000))),
        '$[last - 19 to last]')
$$;

-- A timeout the worker can wait for: positive and finite (NaN is neither).
CREATE FUNCTION angela_queue.check_task_timeout(p_value double precision) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_value IS NOT NULL AND (p_value = 'NaN' OR p_value <= 0 OR p_value = 'Infinity') THEN
        RAISE EXCEPTION 'angela_queue: timeout_s must be a positive, finite number of seconds (got %)', p_value
            USING ERRCODE = 'check_violation', COLUMN = 'timeout_s';
    END IF;
END
$$;

-- SECURITY DEFINER, with a pinned search_path (nothing a caller puts on its
-- search_path can stand in for a function or operator here): a producer
-- that may only INSERT into tasks still gets its kind's defaults, its queue
-- created, its boosts applied and its bound checked, though it may not read
-- queues, boost rules or other tasks itself.
-- Defaults: a NULL queue, priority, max_attempts or timeout_s is unset, and
-- gets the kind's default (angela_queue.kinds), else the queue's, else the
-- global one. Validation runs on the values that result, so a bad default
-- can never slip in.
CREATE FUNCTION angela_queue.tasks_before_insert() RETURNS trigger
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

-- Only for rows not already complete: angela_queue.enqueue_many builds its
-- rows whole and sets enqueued_by, which a producer's INSERT cannot name
-- (roles.sql); every other INSERT leaves it unset (revision 0012).
CREATE TRIGGER tasks_before_insert
    BEFORE INSERT ON angela_queue.tasks
    FOR EACH ROW WHEN (NEW.enqueued_by IS NULL)
    EXECUTE FUNCTION angela_queue.tasks_before_insert();

-- Keep deadline and claim key true, and the times readable, when a retry, a
-- reschedule or an edit changes run_at, priority or boost, and refuse edits
-- that would break them (deadline and priority_key are derived: a direct
-- edit is recomputed away; created_at is fixed). Fires only for those
-- columns, so claim and completion updates never pay for it.
CREATE FUNCTION angela_queue.tasks_before_update_order() RETURNS trigger
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

CREATE TRIGGER tasks_before_update_order
    BEFORE UPDATE OF run_at, priority, boost, aging_rate, deadline, priority_key, created_at, timeout_s
    ON angela_queue.tasks
    FOR EACH ROW EXECUTE FUNCTION angela_queue.tasks_before_update_order();

-- ---------------------------------------------------------------------------
-- Bulk enqueue (revision 0012): the insert trigger's work for a whole list
-- of tasks, set-based.
-- ---------------------------------------------------------------------------

-- Raise a rejected task's error from inside a statement: the set-based
-- checks call it from a CASE branch, so it runs only for a bad row, and the
-- message, SQLSTATE and column are the insert trigger's own.
CREATE FUNCTION angela_queue.reject_task(p_sqlstate text, p_column text, p_message text,
                                         p_hint text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_column IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = p_message, ERRCODE = p_sqlstate, COLUMN = p_column;
    ELSIF p_hint IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = p_message, ERRCODE = p_sqlstate, HINT = p_hint;
    ELSE
        RAISE EXCEPTION USING MESSAGE = p_message, ERRCODE = p_sqlstate;
    END IF;
END
$$;

-- Enqueue many tasks in two statements. p_tasks is a JSON array of
-- {"kind", "payload", and any of "queue", "priority", "run_at", "delay_s",
-- "max_attempts", "timeout_s", "dedup_key"}; a key left out is unset and
-- gets the kind's default, else the queue's, else the global one, exactly as
-- the insert trigger gives them. p_trace_context is the one enqueue call's
-- trace context, or NULL. Rows come back in the order given; a row whose
-- dedup key an unfinished task holds is skipped (no row). All or nothing:
-- one bad task, or one task of priority >= 5 over a full queue, fails the
-- call with the trigger's own error.
-- SECURITY DEFINER like the trigger: a producer that may not read queues or
-- boost rules still gets its defaults, queues, boosts and bound.
-- Generic plans only (revision 0013): the custom plans of its statements
-- looked cheaper than the generic ones, so each call planned them again,
-- which cost a bulk of ten tasks a third of its time.
CREATE FUNCTION angela_queue.enqueue_many(p_tasks jsonb, p_trace_context jsonb DEFAULT NULL)
RETURNS TABLE (id bigint, queue text, kind text, status text, priority integer, boost integer,
               tier text, run_at timestamptz, dedup_key text, last_error text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    IF p_tasks IS NULL OR jsonb_typeof(p_tasks) <> 'array' THEN
        PERFORM angela_queue.reject_task('22023', NULL,
            format('angela_queue: enqueue_many takes a JSON array of tasks (got %s)',
                   coalesce(jsonb_typeof(p_tasks), 'NULL')));
    END IF;

    -- The kinds and lengths first (a queue name must be valid before its
    -- row is created), then the queues no task has named before, created
    -- with the defaults in name order: two bulks creating the same queues
    -- take their locks in one order and cannot deadlock.
    INSERT INTO angela_queue.queues (name)
    SELECT DISTINCT named.queue
    FROM (SELECT CASE
                     WHEN s.kind IS NULL OR btrim(s.kind) = '' THEN
                         angela_queue.reject_task('23502', 'kind', format(
                             'angela_queue: a task needs a kind (got %s)',
                             coalesce(quote_literal(s.kind), 'NULL')))::text
                     WHEN octet_length(s.kind) > 255 OR octet_length(s.queue) > 255 THEN
                         angela_queue.reject_task('22001', NULL, format(
                             'angela_queue: kind and queue must be at most 255 bytes (got %s and %s)',
                             octet_length(s.kind), coalesce(octet_length(s.queue)::text, '<NULL>')))::text
                     ELSE coalesce(nullif(btrim(s.queue), ''), k.queue, 'default')
                 END AS queue
          FROM jsonb_to_recordset(p_tasks) AS s(queue text, kind text)
          LEFT JOIN angela_queue.kinds k ON k.kind = s.kind) AS named
    WHERE NOT EXISTS (SELECT 1 FROM angela_queue.queues q WHERE q.name = named.queue)
    ORDER BY named.queue
    ON CONFLICT (name) DO NOTHING;

    RETURN QUERY
    WITH given AS (
        SELECT s.n, s.kind, s.payload, s.dedup_key,
               coalesce(nullif(btrim(s.queue), ''), k.queue, 'default') AS queue,
               CASE WHEN k.concurrency IS NOT NULL OR k.rate_limit IS NOT NULL THEN s.kind ELSE '' END
                   AS limited_kind,
               coalesce(s.priority, k.priority) AS priority,
               coalesce(s.max_attempts, k.max_attempts) AS max_attempts,
               coalesce(s.timeout_s, k.timeout_s) AS timeout_s,
               coalesce(s.run_at, now() + make_interval(secs => coalesce(s.delay_s, 0))) AS run_at
        FROM ROWS FROM (jsonb_to_recordset(p_tasks)
                        AS (queue text, kind text, payload jsonb, priority integer, run_at timestamptz,
                            delay_s double precision, max_attempts integer, timeout_s double precision,
                            dedup_key text))
             WITH ORDINALITY AS s(queue, kind, payload, priority, run_at, delay_s, max_attempts, timeout_s,
                                  dedup_key, n)
        LEFT JOIN angela_queue.kinds k ON k.kind = s.kind
    ),
    -- The room left in each bounded queue this call fills
    -- (angela_queue.queue_room: the trigger's counts, stopping at max_size),
    -- once per queue instead of once per row; NULL for an unbounded one.
    room AS MATERIALIZED (
        SELECT d.queue AS name, angela_queue.queue_room(d.queue) AS left_over
        FROM (SELECT DISTINCT g.queue FROM given g) AS d
    ),
    -- Each task's place in its bounded queue's line, in the order given;
    -- only bounded queues' tasks are ranked (no sort for the others).
    ranked AS MATERIALIZED (
        SELECT g.n, r.left_over,
               row_number() OVER (PARTITION BY g.queue ORDER BY g.n) AS nth
        FROM given g
        JOIN room r ON r.name = g.queue
        WHERE r.left_over IS NOT NULL
    ),
    resolved AS (
        SELECT g.n, g.kind, g.payload, g.dedup_key, g.queue, g.limited_kind, g.run_at,
               coalesce(g.priority, q.default_priority, 5) AS priority,
               coalesce(g.max_attempts, q.default_max_attempts, 5) AS max_attempts,
               coalesce(g.timeout_s, q.default_timeout_s) AS timeout_s,
               q.aging_rate, q.max_size,
               -- Past the room, a task meets a full queue, as the trigger
               -- would find it row by row: admitted tasks fill it in order.
               coalesce(w.nth > w.left_over, false) AS over_bound
        FROM given g
        JOIN angela_queue.queues q ON q.name = g.queue
        LEFT JOIN ranked w ON w.n = g.n
    ),
    -- The trigger's checks, in its order, on the values that result.
    checked AS (
        SELECT v.*, now() AS created_at,
               CASE
                   WHEN v.priority NOT BETWEEN 1 AND 10 THEN angela_queue.reject_task('23514', 'priority',
                       format('angela_queue: priority must be between 1 and 10 (got %s)', v.priority))
                   WHEN v.payload IS NULL OR jsonb_typeof(v.payload) <> 'object' THEN
                       angela_queue.reject_task('23514', 'payload', format(
                           'angela_queue: payload must be a JSON object (got %s)',
                           coalesce(jsonb_typeof(v.payload), 'NULL')))
                   WHEN v.max_attempts NOT BETWEEN 1 AND 1000000 THEN angela_queue.reject_task('23514',
                       'max_attempts',
                       format('angela_queue: max_attempts must be between 1 and 1000000 (got %s)', v.max_attempts))
                   WHEN octet_length(v.dedup_key) > 2000 THEN angela_queue.reject_task('22001', 'dedup_key',
                       format('angela_queue: dedup_key must be at most 2000 bytes (got %s)',
                              octet_length(v.dedup_key)))
                   WHEN NOT isfinite(v.run_at) OR v.run_at < timestamptz '1900-01-01 00:00:00+00'
                        OR v.run_at >= timestamptz '9999-01-01 00:00:00+00' THEN
                       angela_queue.reject_task('22008', 'run_at', format(
                           'angela_queue: run_at must be a finite time between 1900-01-01 and 9999-01-01 (got %s)',
                           v.run_at))
                   WHEN v.timeout_s = 'NaN' OR v.timeout_s <= 0 OR v.timeout_s = 'Infinity' THEN
                       angela_queue.reject_task('23514', 'timeout_s', format(
                           'angela_queue: timeout_s must be a positive, finite number of seconds (got %s)',
                           v.timeout_s))
                   WHEN v.over_bound AND v.priority >= 5 THEN angela_queue.reject_task('AQ001', NULL,
                       format('angela_queue: queue %s is full (max_size %s)', quote_literal(v.queue), v.max_size),
                       'Wait for workers to drain it, raise angela_queue.queues.max_size, or enqueue with priority < 5 to drop instead of failing.')
                   ELSE true
               END AS ok
        FROM resolved v
    ),
    -- The enabled rules, read once for the call (a tuplestore each task's
    -- test rescans, not the table's heap page).
    rules AS MATERIALIZED (
        SELECT r.name, r.condition, r.boost FROM angela_queue.boost_rules r WHERE r.enabled
    ),
    boosted AS (
        SELECT c.*, coalesce(b.boost, 0) AS boost, coalesce(b.rules, '{}') AS boost_rules,
               greatest(c.run_at, c.created_at) AS start_at
        FROM checked c
        -- silent => true: a rule that errors on a payload is a non-match.
        LEFT JOIN LATERAL (
            SELECT sum(r.boost)::integer AS boost, array_agg(r.name ORDER BY r.name) AS rules
            FROM rules r
            WHERE jsonb_path_exists(c.payload, r.condition, '{}', true)) AS b ON true
        WHERE c.ok
    )
    INSERT INTO angela_queue.tasks AS t
        (queue, kind, payload, priority, boost, boost_rules, status, created_at, run_at, deadline,
         aging_rate, priority_key, max_attempts, timeout_s, dedup_key, enqueued_by, trace_context,
         limited_kind, finished_at, last_error)
    SELECT b.queue, b.kind, b.payload, b.priority, b.boost, b.boost_rules,
           CASE WHEN b.over_bound THEN 'dropped' WHEN b.run_at > now() THEN 'scheduled' ELSE 'queued' END,
           b.created_at, b.run_at,
           b.start_at + angela_queue.tier_window(b.priority),
           b.aging_rate, angela_queue.priority_key(b.priority, b.boost, b.aging_rate, b.start_at),
           b.max_attempts, b.timeout_s, b.dedup_key, session_user, p_trace_context, b.limited_kind,
           CASE WHEN b.over_bound THEN now() END,
           CASE WHEN b.over_bound THEN format('dropped: queue %L is full (max_size %s) and priority %s < 5',
                                              b.queue, b.max_size, b.priority) END
    FROM boosted b
    ORDER BY b.n
    ON CONFLICT (queue, dedup_key)
        WHERE dedup_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running')
        DO NOTHING
    RETURNING t.id, t.queue, t.kind, t.status, t.priority, t.boost, t.tier, t.run_at, t.dedup_key, t.last_error;
END
$$;


-- Called by producers and workers, through their grants (roles.sql).
REVOKE EXECUTE ON FUNCTION angela_queue.enqueue_many(jsonb, jsonb), angela_queue.reject_task(text, text, text, text)
    FROM PUBLIC;

-- A new queues.aging_rate also applies to the queue's unfinished tasks.
-- Hazard: priority_key drops the now() term, which is only the same for rows
-- that share one rate; between rows of different rates it differs by
-- rate x epoch-minutes (millions of points), so tasks inserted after a rate
-- change would sort above or below every older task regardless of priority.
-- Re-keying (via tasks_before_update_order) keeps one rate per queue. An
-- insert racing the change may keep the old rate; change it again to fix.
CREATE FUNCTION angela_queue.queues_after_update_aging_rate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE angela_queue.tasks t SET aging_rate = NEW.aging_rate
    WHERE t.queue = NEW.name AND t.status IN ('scheduled', 'queued', 'running')
      AND t.aging_rate IS DISTINCT FROM NEW.aging_rate;
    RETURN NULL;
END
$$;

CREATE TRIGGER queues_after_update_aging_rate
    AFTER UPDATE OF aging_rate ON angela_queue.queues
    FOR EACH ROW WHEN (OLD.aging_rate IS DISTINCT FROM NEW.aging_rate)
    EXECUTE FUNCTION angela_queue.queues_after_update_aging_rate();

-- Wake idle workers. One NOTIFY per statement and queue, not per row, so a
-- bulk insert of 10,000 tasks sends a handful of notifications. The payload is
-- the queue name; workers LISTEN on 'angela_queue_insert'. A statement that
-- queues a critical task (priority >= 9) also notifies 'angela_queue_critical':
-- a worker whose ordinary slots are all busy fills its critical slot on it
-- (revision 0011; worker/slots.py).
CREATE FUNCTION angela_queue.tasks_after_insert_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q text;
    critical boolean;
BEGIN
    FOR q, critical IN
        SELECT n.queue, bool_or(n.priority >= 9) FROM new_tasks n WHERE n.status = 'queued' GROUP BY n.queue
    LOOP
        PERFORM pg_notify('angela_queue_insert', q);
        IF critical THEN
            PERFORM pg_notify('angela_queue_critical', q);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_after_insert_notify
    AFTER INSERT ON angela_queue.tasks
    REFERENCING NEW TABLE AS new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION angela_queue.tasks_after_insert_notify();

-- ---------------------------------------------------------------------------
-- Who sees which tasks: row-level security, and the functions a producer
-- calls for what its grants alone do not allow.
-- ---------------------------------------------------------------------------

-- Whether a role reads every task: anyone but a pure producer (a member of
-- angela_queue_producer that is in neither angela_queue_worker nor
-- angela_queue_reader). Roles the schema predates (custom grants) keep
-- seeing every row, as before row-level security was on. The table's owner
-- and superusers bypass the policy altogether.
CREATE FUNCTION angela_queue.reads_all_tasks(p_role name) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT NOT EXISTS (SELECT 1 FROM pg_roles p
                       WHERE p.rolname = 'angela_queue_producer' AND pg_has_role(p_role, p.oid, 'MEMBER'))
        OR EXISTS (SELECT 1 FROM pg_roles r
                   WHERE r.rolname IN ('angela_queue_worker', 'angela_queue_reader')
                     AND pg_has_role(p_role, r.oid, 'MEMBER'))
$$;

ALTER TABLE angela_queue.tasks ENABLE ROW LEVEL SECURITY;

-- (SELECT ...): an init plan, evaluated once per statement, not per row; for
-- every role but a producer it is true, and the row test is never reached.
CREATE POLICY tasks_visible ON angela_queue.tasks
    USING ((SELECT angela_queue.reads_all_tasks(current_user)) OR enqueued_by = session_user::text);

-- The unfinished task holding a dedup key, for an enqueue that met it.
-- A producer may not see another login's task: for such a holder only the
-- queue and key come back, every other column NULL (the client raises
-- DedupKeyHeld), so a key cannot be used to read another login's task id,
-- kind or schedule. SECURITY DEFINER with a pinned search_path.
CREATE FUNCTION angela_queue.find_unfinished_task(p_queue text, p_dedup_key text)
RETURNS TABLE (id bigint, queue text, kind text, status text, priority integer, boost integer, tier text,
               run_at timestamptz, dedup_key text, last_error text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN v.visible THEN t.id END, t.queue, CASE WHEN v.visible THEN t.kind END,
           CASE WHEN v.visible THEN t.status END, CASE WHEN v.visible THEN t.priority END,
           CASE WHEN v.visible THEN t.boost END, CASE WHEN v.visible THEN t.tier END,
           CASE WHEN v.visible THEN t.run_at END, t.dedup_key, CASE WHEN v.visible THEN t.last_error END
    FROM angela_queue.tasks t
    CROSS JOIN LATERAL (SELECT t.enqueued_by = session_user::text
                               OR angela_queue.reads_all_tasks(session_user) AS visible) AS v
    WHERE t.queue = p_queue AND t.dedup_key = p_dedup_key
      AND t.status IN ('scheduled', 'queued', 'running')
$$;

-- Tell whoever waits on tasks (Client.wait) that they reached a final
-- status: one NOTIFY on 'angela_queue_done' per call, its payload the ids
-- comma-separated, or '*' ("look again") when more than 300 would not fit
-- in one notification (8000 bytes). Every statement that finishes tasks
-- calls it once, so a flush of 500 outcomes costs one notification, not 500.
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

-- Cancel a task: the one implementation, for psql, the CLI, the dashboard
-- and the Python client. A scheduled or queued task is cancelled at once. A
-- running one is asked to stop (cancel_requested_at, and a NOTIFY to its
-- worker): an async handler is cancelled at the worker's next turn, a sync
-- one finishes; either way its outcome is recorded as cancelled and it is
-- not retried. Returns the status afterwards and the outcome ('cancelled',
-- 'cancel_requested', or 'unchanged' for a finished task); no row when there
-- is no such task or the caller may not see it (a producer cancels its own
-- tasks only). The row lock waits for a claim in progress, so the status
-- returned is never a stale 'queued'. Wakes enqueuers waiting for space.
-- Hazard: the lock is taken only once the caller is known to own the task
-- (a read first, without it): otherwise any producer could lock any row,
-- for as long as its transaction stays open, and stall the worker that
-- holds it.
CREATE FUNCTION angela_queue.cancel_task(p_id bigint)
RETURNS TABLE (id bigint, status text, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    owner text;
BEGIN
    SELECT k.enqueued_by INTO owner FROM angela_queue.tasks k WHERE k.id = p_id;
    IF NOT FOUND OR NOT (owner = session_user::text OR angela_queue.reads_all_tasks(session_user)) THEN
        RETURN;
    END IF;
    SELECT k.id, k.queue, k.status, k.enqueued_by, k.worker_id, k.cancel_requested_at INTO t
    FROM angela_queue.tasks k WHERE k.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;      -- purged meanwhile
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

-- The SECURITY DEFINER functions run as the schema's owner: only the owner,
-- and the roles roles.sql grants them to, may call them. Without the roles
-- (a managed Postgres where migrate could not create them), a login that
-- merely may use the schema cannot cancel, or find, another login's task.
REVOKE EXECUTE ON FUNCTION angela_queue.find_unfinished_task(text, text), angela_queue.cancel_task(bigint)
    FROM PUBLIC;

-- Reclaim running tasks whose worker can no longer finish them (it exited, is
-- stuck, or was lost): the one implementation behind every reclaim. Each id
-- comes with the worker the caller found holding it, and is reclaimed only if
-- it is still running there (a completion that committed first wins). The
-- attempt stays counted: back to 'queued' while attempts remain, 'failed'
-- once spent (a task that kills its worker each time stops), 'cancelled' if
-- it was asked to stop. A task claimed unstarted (held in a collecting
-- batch) never ran: no attempt, no entry in its history. Wakes the workers
-- of each queue that got work back.
-- Hazard (visibility): callers compute the ids in the same statement, in a
-- CTE; this function's UPDATE runs on a newer snapshot, so its own guard
-- (status and worker) is what decides, never the caller's read.
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
    ), finished AS (
        SELECT angela_queue.notify_done(array_agg(r.id)) AS n
        FROM reclaimed r WHERE r.status IN ('failed', 'cancelled')
    )
    -- A CTE runs only if referenced: the counts are what send the NOTIFYs.
    SELECT r.id, r.queue, r.status FROM reclaimed r
    WHERE (SELECT count(*) FROM woken) >= 0 AND (SELECT sum(f.n) FROM finished f) >= 0;
END
$$;

-- The tasks that finished after p_since, whatever their final status: one
-- range of tasks_finished_idx per status. The views read finished rows
-- through this. Hazard: `status IN (all four) AND finished_at > x` matches the
-- partial index's predicate exactly, so the planner drops the status test and
-- is left with a range on the second column: a walk of the whole index (no
-- skip scan before Postgres 18). One arm per status keeps each a range.
-- Plain SQL, STABLE, no SET: the planner inlines it into the view.
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

-- ---------------------------------------------------------------------------
-- Operations on tasks and queues: the single implementation behind psql,
-- the CLI, the dashboard and the Python client. Each is a guarded UPDATE
-- (it names the statuses it may move a task from) and sends the NOTIFY that
-- wakes whoever must act. They run with the caller's rights: retrying,
-- pausing and purging take UPDATE or DELETE on tasks (angela_queue_worker
-- has them; a producer or a reader does not).
-- ---------------------------------------------------------------------------

-- The room left in a bounded queue (max_size minus the tasks waiting in
-- it, never below 0); NULL for an unbounded or unknown queue. Counts stop
-- at max_size, as the insert trigger's do.
CREATE FUNCTION angela_queue.queue_room(p_queue text) RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT greatest(q.max_size
                    - (SELECT count(*) FROM (SELECT 1 FROM angela_queue.tasks t
                                             WHERE t.queue = q.name AND t.status = 'queued' LIMIT q.max_size) a)
                    - (SELECT count(*) FROM (SELECT 1 FROM angela_queue.tasks t
                                             WHERE t.queue = q.name AND t.status = 'scheduled' LIMIT q.max_size) b),
                    0)
    FROM angela_queue.queues q WHERE q.name = p_queue AND q.max_size IS NOT NULL
$$;

-- Put a failed, cancelled or dropped task back in its queue: queued now,
-- with a fresh deadline (the update trigger recomputes it from run_at) and
-- its attempts reset. Its attempt history (errors) stays. Returns the status
-- afterwards and the outcome: 'retried'; 'unchanged' (not in a status that
-- retries); 'dedup_key_held' (a newer task holds its key); 'queue_full' (its
-- bounded queue has no room: a retry is held to max_size like an insert).
-- No row if there is no such task.
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
    IF angela_queue.queue_room(t.queue) = 0 THEN
        RETURN QUERY SELECT t.id, t.status, 'queue_full'::text;
        RETURN;
    END IF;
    BEGIN
        UPDATE angela_queue.tasks k
        SET status = 'queued', run_at = now(), attempts = 0, finished_at = NULL, started_at = NULL,
            worker_id = NULL, result = NULL, cancel_requested_at = NULL
        WHERE k.id = p_id;
    EXCEPTION WHEN unique_violation THEN
        -- A concurrent retry of another task with the same key won.
        RETURN QUERY SELECT t.id, t.status, 'dedup_key_held'::text;
        RETURN;
    END;
    PERFORM pg_notify('angela_queue_insert', t.queue);
    RETURN QUERY SELECT t.id, 'queued'::text, 'retried'::text;
END
$$;

-- Retry every task in a final status that can be retried ('failed',
-- 'cancelled' or 'dropped'), of one kind and one queue, or of any (NULL).
-- Returns how many went back. A bounded queue takes only as many as it has
-- room for, oldest first; the rest stay as they are. One NOTIFY per queue
-- that got work.
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
               row_number() OVER (PARTITION BY k.queue, k.dedup_key ORDER BY k.id DESC) AS nth,
               row_number() OVER (PARTITION BY k.queue ORDER BY k.id) AS in_queue
        FROM angela_queue.tasks k
        WHERE k.status IN ('succeeded', 'failed', 'cancelled', 'dropped') AND k.status = p_status
          AND (p_kind IS NULL OR k.kind = p_kind) AND (p_queue IS NULL OR k.queue = p_queue)
    ), room AS MATERIALIZED (
        SELECT c.queue, angela_queue.queue_room(c.queue) AS room FROM (SELECT DISTINCT queue FROM candidates) c
    ), retried AS (
        UPDATE angela_queue.tasks k
        SET status = 'queued', run_at = now(), attempts = 0, finished_at = NULL, started_at = NULL,
            worker_id = NULL, result = NULL, cancel_requested_at = NULL
        FROM candidates c JOIN room r ON r.queue = c.queue
        WHERE k.id = c.id AND k.status = p_status AND (r.room IS NULL OR c.in_queue <= r.room)
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

-- Pause a queue: it keeps accepting tasks, but none is claimed (running ones
-- finish, and a collected batch does not start), and none counts as overdue
-- while it is paused. Returns whether it was running before (false: already
-- paused). An unknown queue is an error: a mistyped name must not pause a
-- new, empty queue while the real one runs on. (To pause one before its
-- first task: INSERT INTO angela_queue.queues (name, paused_at) VALUES (...).)
CREATE FUNCTION angela_queue.pause_queue(p_name text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    paused timestamptz;
BEGIN
    IF p_name IS NULL OR btrim(p_name) = '' THEN
        RAISE EXCEPTION 'angela_queue: a queue needs a name' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT q.paused_at INTO paused FROM angela_queue.queues q WHERE q.name = btrim(p_name) FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'angela_queue: no queue named %', quote_literal(btrim(p_name))
            USING ERRCODE = 'undefined_object';
    END IF;
    IF paused IS NOT NULL THEN
        RETURN false;
    END IF;
    UPDATE angela_queue.queues q SET paused_at = now() WHERE q.name = btrim(p_name);
    RETURN true;
END
$$;

-- Resume a paused queue, and wake the workers that serve it at once.
-- Returns whether it was paused; an unknown queue is an error.
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

-- Delete finished tasks of one final status that finished longer ago than
-- p_older_than, in chunks of 10,000 through tasks_finished_idx (SKIP LOCKED
-- passes over rows being changed). Returns the count. Unfinished tasks are
-- never touched. With p_limit, at most that many, in one chunk: a caller
-- that calls again, one transaction per call, until fewer come back (the
-- client and the CLI do) keeps every transaction short; in one call, the
-- whole purge is one transaction.
CREATE FUNCTION angela_queue.purge_tasks(p_status text, p_older_than interval, p_limit bigint DEFAULT NULL)
RETURNS bigint
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
    IF p_limit IS NOT NULL AND p_limit < 1 THEN
        RAISE EXCEPTION 'angela_queue: limit must be 1 or more (got %)', p_limit
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        DELETE FROM angela_queue.tasks k
        WHERE k.id = ANY (ARRAY(
            SELECT d.id FROM angela_queue.tasks d
            WHERE d.status IN ('succeeded', 'failed', 'cancelled', 'dropped') AND d.status = p_status
              AND d.finished_at < now() - p_older_than
            ORDER BY d.finished_at
            LIMIT least(coalesce(p_limit - total, 10000), 10000)
            FOR UPDATE SKIP LOCKED))
          AND k.status = p_status;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
        EXIT WHEN n < 10000 OR (p_limit IS NOT NULL AND total >= p_limit);
    END LOOP;
    RETURN total;
END
$$;

-- ---------------------------------------------------------------------------
-- History: per-minute rollups the maintenance leader writes from the tasks
-- table (sql/stats.sql), kept 7 days. Charts and /metrics read these, so
-- history survives restarts of the dashboard and of every worker.
-- ---------------------------------------------------------------------------

-- The upper bounds (ms) of the wait and run-time histograms' buckets; the
-- bucket arrays hold one count per bound, then one for everything above.
CREATE FUNCTION angela_queue.stats_bucket_bounds_ms() RETURNS double precision[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '{5,10,25,50,100,250,500,1000,2500,5000,10000,30000,60000,300000,1800000}'::double precision[]
$$;

-- An aggregate: the histogram of its values over stats_bucket_bounds_ms
-- (a value equal to a bound counts in that bound's bucket, as Prometheus's
-- "le" does). In place on the state array: O(1) a row.
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

-- Per minute, queue, tier and kind: what happened in that minute.
-- started/on_time/wait_*: attempts that started (on time: by the deadline
-- plus the queue's sla_grace; wait from greatest(run_at, created_at));
-- succeeded/failed/cancelled/dropped: tasks that reached that final status
-- (failed: for good); retried: failed attempts that will be retried;
-- run_*: run times of the successes.
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

-- Per minute, queue and tier: the depth when the leader looked, once a minute.
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

-- How far the rollup has come: minutes before rolled_until are written
-- (each is written once more on the next pass, for late outcomes).
CREATE TABLE angela_queue.stats_progress (
    only_row      boolean PRIMARY KEY DEFAULT true CONSTRAINT stats_progress_one_row CHECK (only_row),
    rolled_until  timestamptz NOT NULL
);

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
        -- limited_kind <> '' (implied by the kind's own flag) lets a generic
        -- plan prove tasks_limited_running_idx applies: the worker's
        -- connection runs generic plans only (db.HOT_PATH_SETTINGS), and
        -- without it the count read every running task of every kind.
        SELECT count(*) INTO v_count FROM angela_queue.tasks t
        WHERE t.status = 'running' AND t.limited_kind <> '' AND t.limited_kind = p_kind;
        v_room := least(v_room, k.concurrency - v_count);
    END IF;
    IF k.rate_limit IS NOT NULL AND v_room > 0 THEN
        -- The clock now, after the lock, not the transaction's start: a claim
        -- whose transaction began a while ago must not date the window back
        -- (the claim stamps its starts with clock_timestamp() too).
        DELETE FROM angela_queue.kind_starts s
        WHERE s.kind = p_kind AND s.started_at <= clock_timestamp() - make_interval(secs => k.rate_period_s);
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
-- Hazard: an insert racing the change keeps the old flag (it read the
-- kinds row before, and this update cannot see its row). The claim heals
-- both directions (sql/tasks.sql, tasks_claim): a flag that outlived its
-- kind's limit is still found and claimed; a task of a limited kind that
-- carries no flag is relabelled instead of claimed.
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

-- ---------------------------------------------------------------------------
-- supervisors and workers: heartbeat rows. Owned by workers.sql.
-- ---------------------------------------------------------------------------
CREATE TABLE angela_queue.supervisors (
    id              uuid PRIMARY KEY,
    host            text NOT NULL,
    pid             integer NOT NULL,
    queues          text[] NOT NULL DEFAULT '{default}',
    status          text NOT NULL DEFAULT 'running'
                    CONSTRAINT supervisor_status_known CHECK (status IN ('running', 'stopped', 'dead')),
    -- How many workers this supervisor runs now, and why it chose that.
    workers_target  integer NOT NULL DEFAULT 0,
    last_decision   text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    stopped_at      timestamptz
);

CREATE TABLE angela_queue.workers (
    id                      uuid PRIMARY KEY,
    supervisor_id           uuid,
    host                    text NOT NULL,
    pid                     integer NOT NULL,
    queues                  text[] NOT NULL DEFAULT '{default}',
    concurrency             integer NOT NULL DEFAULT 1,
    status                  text NOT NULL DEFAULT 'idle'
                            CONSTRAINT worker_status_known CHECK (status IN (
                                'active', 'idle', 'stuck', 'stopping', 'stopped', 'dead')),
    started_at              timestamptz NOT NULL DEFAULT now(),
    last_heartbeat          timestamptz NOT NULL DEFAULT now(),
    -- Last time a task started or finished here: the measure of progress.
    last_active             timestamptz,
    current_tasks           bigint[] NOT NULL DEFAULT '{}',
    tasks_completed         bigint NOT NULL DEFAULT 0,
    tasks_failed            bigint NOT NULL DEFAULT 0,
    avg_processing_time_ms  double precision NOT NULL DEFAULT 0,
    -- Seconds without progress, while holding a task, before it counts as stuck.
    stuck_after_s           double precision NOT NULL DEFAULT 60,
    -- Seconds without a heartbeat before the row counts as dead.
    dead_after_s            double precision NOT NULL DEFAULT 30,
    stopped_at              timestamptz,
    -- The task kinds this worker has handlers for: what status shows as
    -- served, and what no live worker serves.
    kinds                   text[] NOT NULL DEFAULT '{}'
);

CREATE INDEX workers_supervisor_idx ON angela_queue.workers (supervisor_id);

-- ---------------------------------------------------------------------------
-- leader: lease rows for maintenance that must run on one host only.
-- ---------------------------------------------------------------------------
CREATE TABLE angela_queue.leader (
    name        text PRIMARY KEY,
    holder      uuid NOT NULL,
    elected_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
