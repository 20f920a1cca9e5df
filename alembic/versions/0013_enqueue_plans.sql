-- angela-queue revision 0013 (Enqueue plans): angela_queue.enqueue_many
-- plans its statements once per session and does less per task; the
-- client decides a 'fast' commit inside its own statements, so
-- angela_queue.commit_fast goes.
--
-- - Generic plans only, inside the function (SET plan_cache_mode): its
--   statements were planned afresh at every call (the custom plans looked
--   cheaper than the generic one), which cost a bulk of ten tasks 0.6 ms of
--   its 1.7.
-- - The room of each bounded queue is counted once (MATERIALIZED: inlined,
--   angela_queue.queue_room ran once per task), and only the tasks of
--   bounded queues are ranked in their queue's line (no sort for the rest).
-- - The enabled boost rules are read once per call, and each task's test
--   rescans those few rows in memory instead of the table.
-- What a task gets is unchanged.
--
-- Frozen once shipped.

CREATE OR REPLACE FUNCTION angela_queue.enqueue_many(p_tasks jsonb, p_trace_context jsonb DEFAULT NULL)
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


-- The client now tests a queue's durability inline, in tasks_enqueue and
-- tasks_enqueue_many (sql/tasks.sql): the PL/pgSQL call and its query cost
-- each enqueue 20-50 us.
DROP FUNCTION angela_queue.commit_fast(text[]);
