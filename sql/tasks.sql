-- angela-queue: named queries on angela_queue.tasks.
--
-- Every state change is one guarded UPDATE: it names the status (and, for a
-- running task, the worker) it expects, and RETURNING tells the caller whether
-- the row was still theirs. Zero rows means someone else moved the task on.

-- name: tasks_enqueue
-- Insert one task. Returns no row when an unfinished task already holds the
-- same (queue, dedup_key); the caller then looks that one up.
INSERT INTO angela_queue.tasks
    (queue, kind, payload, priority, run_at, max_attempts, timeout_s, dedup_key)
VALUES (
    %(queue)s, %(kind)s, %(payload)s, %(priority)s,
    coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => coalesce(%(delay_s)s::double precision, 0))),
    %(max_attempts)s, %(timeout_s)s, %(dedup_key)s)
ON CONFLICT (queue, dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running')
    DO NOTHING
RETURNING id, queue, kind, status, priority, boost, tier, run_at, dedup_key, last_error;

-- name: tasks_enqueue_many
-- Insert many tasks in one statement (one round trip). Rows whose dedup_key
-- is already held by an unfinished task are skipped, as in tasks_enqueue.
INSERT INTO angela_queue.tasks
    (queue, kind, payload, priority, run_at, max_attempts, timeout_s, dedup_key)
SELECT s.queue, s.kind, s.payload, s.priority,
       coalesce(s.run_at, now() + make_interval(secs => coalesce(s.delay_s, 0))),
       s.max_attempts, s.timeout_s, s.dedup_key
FROM unnest(
    %(queues)s::text[], %(kinds)s::text[], %(payloads)s::jsonb[], %(priorities)s::int[],
    %(run_ats)s::timestamptz[], %(delays_s)s::double precision[], %(max_attempts)s::int[],
    %(timeouts_s)s::double precision[], %(dedup_keys)s::text[]
) WITH ORDINALITY AS s(queue, kind, payload, priority, run_at, delay_s, max_attempts, timeout_s, dedup_key, n)
ORDER BY s.n
ON CONFLICT (queue, dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running')
    DO NOTHING
RETURNING id, queue, kind, status, priority, boost, tier, run_at, dedup_key, last_error;

-- name: tasks_find_unfinished_by_dedup_key
-- The unfinished task that holds a dedup key, if any (through the SECURITY
-- DEFINER function: a producer may not read another login's task).
SELECT id, queue, kind, status, priority, boost, tier, run_at, dedup_key, last_error
FROM angela_queue.find_unfinished_task(%(queue)s, %(dedup_key)s);

-- name: tasks_get
-- One task row, whole.
SELECT * FROM angela_queue.tasks WHERE id = %(id)s;

-- name: tasks_cancel
-- Cancel a task that has not started (angela_queue.cancel_task: guarded,
-- waits out a claim in progress, and a producer may cancel only its own).
-- No row: no such task, or not the caller's to see.
SELECT id, status, outcome FROM angela_queue.cancel_task(%(id)s);

-- name: tasks_claim
-- Claim up to %(limit)s startable tasks from the given queues, best effective
-- priority first, for one worker.
-- Hazard: written as UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE
-- SKIP LOCKED), the planner may turn the sub-select into a semi-join and run
-- it more than once, locking and updating more rows than the LIMIT. The
-- MATERIALIZED CTE is a fence: the pick runs exactly once.
-- The pick walks tasks_claim_idx per queue in priority_key order (no sort of
-- the queue), takes at most %(limit)s from each, and merges those few rows by
-- the live effective priority: exact even when queues age at different rates.
-- SKIP LOCKED lets concurrent workers pass over each other's rows instead of
-- queueing; a row picked from one queue but cut by the merge stays locked
-- only until this statement's transaction ends.
-- Claiming from a bounded queue frees space: enqueuers waiting on a full
-- queue are woken (only bounded queues pay for the NOTIFY).
-- The payload comes back as text, decoded per task by the worker: a payload
-- Python cannot decode then fails its own task, not the whole claim after
-- it committed.
-- Tasks below priority %(batch_below)s go to a collecting batch, where they
-- may wait before their handler starts: they are claimed without counting
-- an attempt and with no started_at; tasks_start_many counts it when their
-- batch starts. A worker that dies holding them has not cost them an
-- attempt. 0 claims every task started.
WITH picked AS MATERIALIZED (
    SELECT c.id, c.effective_priority
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT t.id,
               t.priority + t.boost + t.aging_rate
                   * greatest(extract(epoch FROM now() - greatest(t.run_at, t.created_at))::double precision, 0) / 60.0
                   AS effective_priority
        FROM angela_queue.tasks t
        WHERE t.status = 'queued' AND t.queue = q.name AND t.run_at <= now()
        ORDER BY t.priority_key DESC, t.id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    -- NULL takes any task; 5 takes only work that outranks a low-priority
    -- batch (see Worker._claim_size). A row passed over here was locked only
    -- until this statement's transaction ends.
    WHERE %(min_effective)s::double precision IS NULL
       OR c.effective_priority >= %(min_effective)s::double precision
    ORDER BY c.effective_priority DESC, c.id
    LIMIT %(limit)s
), claimed AS (
    UPDATE angela_queue.tasks t
    SET status = 'running',
        attempts = t.attempts + CASE WHEN t.priority < %(batch_below)s THEN 0 ELSE 1 END,
        worker_id = %(worker_id)s,
        started_at = CASE WHEN t.priority < %(batch_below)s THEN NULL ELSE now() END, finished_at = NULL
    FROM picked
    WHERE t.id = picked.id AND t.status = 'queued'
    RETURNING t.id, t.queue, t.kind, t.payload, t.priority, t.attempts, t.max_attempts, t.timeout_s,
              picked.effective_priority
)
SELECT c.id, c.queue, c.kind, c.payload::text AS payload, c.priority, c.attempts, c.max_attempts, c.timeout_s,
       c.effective_priority,
       (SELECT count(pg_notify('angela_queue_space', q.name))
        FROM angela_queue.queues q
        WHERE q.max_size IS NOT NULL AND q.name IN (SELECT queue FROM claimed)) AS space_notified
FROM claimed c
ORDER BY c.effective_priority DESC, c.id;

-- name: tasks_claim_kind
-- Claim up to %(limit)s low-priority (< 5) tasks of one kind and queue, to
-- fill a batch. Same fence as tasks_claim; walks tasks_batch_fill_idx.
-- Claimed unstarted, with no attempt counted (see tasks_claim).
WITH picked AS MATERIALIZED (
    SELECT t.id
    FROM angela_queue.tasks t
    WHERE t.status = 'queued' AND t.queue = %(queue)s AND t.kind = %(kind)s
      AND t.priority < 5 AND t.run_at <= now()
    ORDER BY t.priority_key DESC, t.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE angela_queue.tasks t
    SET status = 'running', worker_id = %(worker_id)s, started_at = NULL, finished_at = NULL
    FROM picked
    WHERE t.id = picked.id AND t.status = 'queued'
    RETURNING t.id, t.queue, t.kind, t.payload, t.priority, t.boost, t.tier,
              t.attempts, t.max_attempts, t.timeout_s, t.run_at, t.deadline, t.priority_key,
              t.priority + t.boost + t.aging_rate
                  * greatest(extract(epoch FROM now() - greatest(t.run_at, t.created_at))::double precision, 0) / 60.0
                  AS effective_priority
)
SELECT c.id, c.queue, c.kind, c.payload::text AS payload, c.priority, c.boost, c.tier,
       c.attempts, c.max_attempts, c.timeout_s, c.run_at, c.deadline, c.effective_priority,
       (SELECT count(pg_notify('angela_queue_space', q.name))
        FROM angela_queue.queues q
        WHERE q.max_size IS NOT NULL AND q.name IN (SELECT queue FROM claimed)) AS space_notified
FROM claimed c
ORDER BY c.priority_key DESC, c.id;

-- name: tasks_start_many
-- A collected batch is about to run: count the attempt and stamp the start
-- of its tasks, which were claimed unstarted (see tasks_claim). Guarded like
-- every state change: a task reclaimed meanwhile is not returned, and is not
-- run.
UPDATE angela_queue.tasks t
SET attempts = t.attempts + 1, started_at = now()
WHERE t.id = ANY(%(ids)s::bigint[]) AND t.status = 'running' AND t.worker_id = %(worker_id)s
  AND t.started_at IS NULL
RETURNING t.id, t.attempts;

-- name: tasks_complete_many
-- Record the successes of one worker in one statement. %(outcomes)s is one
-- JSON array of {"id", "result", "finished_at" (epoch seconds)}. Guarded: a
-- task that was reclaimed meanwhile (no longer running here) is left alone
-- and simply missing from the returned ids.
UPDATE angela_queue.tasks t
SET status = 'succeeded', finished_at = to_timestamp(d.finished_at), result = d.result, last_error = NULL
FROM jsonb_to_recordset(%(outcomes)s::jsonb) AS d(id bigint, result jsonb, finished_at double precision)
WHERE t.id = d.id AND t.status = 'running' AND t.worker_id = %(worker_id)s
RETURNING t.id;

-- name: tasks_fail_many
-- Record failed attempts of one worker in one statement: each task goes back
-- to 'scheduled' after its backoff while attempts remain, else to 'failed'
-- (final). %(retry_in_s)s holds each task's backoff; NULL forces 'failed'
-- (e.g. an unknown kind). Guarded like tasks_complete_many.
UPDATE angela_queue.tasks t
SET status = CASE WHEN d.retry_in_s IS NOT NULL AND t.attempts < t.max_attempts
                  THEN 'scheduled' ELSE 'failed' END,
    run_at = CASE WHEN d.retry_in_s IS NOT NULL AND t.attempts < t.max_attempts
                  THEN d.failed_at + make_interval(secs => d.retry_in_s) ELSE t.run_at END,
    finished_at = CASE WHEN d.retry_in_s IS NOT NULL AND t.attempts < t.max_attempts
                       THEN NULL ELSE d.failed_at END,
    worker_id = CASE WHEN d.retry_in_s IS NOT NULL AND t.attempts < t.max_attempts
                     THEN NULL ELSE t.worker_id END,
    last_error = d.error
FROM unnest(%(ids)s::bigint[], %(errors)s::text[], %(retry_in_s)s::double precision[],
            %(failed_ats)s::timestamptz[])
     AS d(id, error, retry_in_s, failed_at)
WHERE t.id = d.id AND t.status = 'running' AND t.worker_id = %(worker_id)s
RETURNING t.id, t.status, t.attempts, t.max_attempts, t.run_at;

-- name: tasks_release_many
-- Give tasks back untouched (graceful stop): back to 'queued' with the attempt
-- not counted against them (a task claimed unstarted never counted one).
-- Guarded like tasks_complete_many.
UPDATE angela_queue.tasks t
SET status = 'queued',
    attempts = CASE WHEN t.started_at IS NULL THEN t.attempts ELSE greatest(t.attempts - 1, 0) END,
    worker_id = NULL, started_at = NULL
WHERE t.id = ANY(%(ids)s::bigint[]) AND t.status = 'running' AND t.worker_id = %(worker_id)s
RETURNING t.id;

-- name: tasks_promote_due
-- Move scheduled tasks whose run_at has come to 'queued', and wake workers.
-- SKIP LOCKED so that many workers promoting at once never block each other.
-- %(now)s lets tests move time instead of sleeping; NULL means now().
WITH due AS MATERIALIZED (
    SELECT t.id
    FROM angela_queue.tasks t
    WHERE t.status = 'scheduled' AND t.run_at <= coalesce(%(now)s::timestamptz, now())
    ORDER BY t.run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), promoted AS (
    UPDATE angela_queue.tasks t SET status = 'queued'
    FROM due WHERE t.id = due.id AND t.status = 'scheduled'
    RETURNING t.queue
)
SELECT count(*) AS promoted,
       (SELECT count(pg_notify('angela_queue_insert', q.queue))
        FROM (SELECT DISTINCT queue FROM promoted) q) AS notified
FROM promoted;

-- name: tasks_next_scheduled_at
-- When the next scheduled task in the given queues becomes due (or no row).
SELECT min(t.run_at) AS next_run_at, now() AS db_now
FROM angela_queue.tasks t
WHERE t.status = 'scheduled' AND t.queue = ANY(%(queues)s::text[]);

-- name: tasks_queued_depth
-- Startable tasks in the given queues, counted only up to %(cap)s: the
-- worker needs to know "more than 20", never the exact size of a big backlog.
SELECT count(*) AS depth FROM (
    SELECT 1 FROM angela_queue.tasks t
    WHERE t.status = 'queued' AND t.queue = ANY(%(queues)s::text[])
    LIMIT %(cap)s
) AS waiting;
