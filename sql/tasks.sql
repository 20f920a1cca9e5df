-- angela-queue: named queries on angela_queue.tasks.
--
-- Every state change is one guarded UPDATE: it names the status (and, for a
-- running task, the worker) it expects, and RETURNING tells the caller whether
-- the row was still theirs. Zero rows means someone else moved the task on.

-- name: tasks_enqueue
-- Insert one task. Returns no row when an unfinished task already holds the
-- same (queue, dedup_key); the caller then looks that one up.
-- %(relax)s: the client owns this statement's transaction, so a task of a
-- 'fast' queue commits without waiting for the disk (SET LOCAL
-- synchronous_commit). The test is inline, not angela_queue.commit_fast: a
-- PL/pgSQL call and its query cost an enqueue 20-50 us; here it is part of
-- this prepared plan. CASE, not OR: its branches run in order, so the
-- setting is only ever changed for a fast queue.
-- %(payload)s is the JSON text the client checked when it validated the
-- task (TaskSpec), sent as is rather than encoded a second time.
WITH ins AS (
INSERT INTO angela_queue.tasks
    (queue, kind, payload, priority, run_at, max_attempts, timeout_s, dedup_key, trace_context)
VALUES (
    %(queue)s, %(kind)s, %(payload)s::jsonb, %(priority)s,
    coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => coalesce(%(delay_s)s::double precision, 0))),
    %(max_attempts)s, %(timeout_s)s, %(dedup_key)s, %(trace_context)s::jsonb)
ON CONFLICT (queue, dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running')
    DO NOTHING
RETURNING id, queue, kind, status, priority, boost, tier, run_at, dedup_key, last_error
)
SELECT i.* FROM ins i
WHERE CASE WHEN NOT %(relax)s::boolean THEN true
           WHEN EXISTS (SELECT 1 FROM angela_queue.queues q WHERE q.name = i.queue AND q.durability = 'fast')
               THEN pg_catalog.set_config('synchronous_commit', 'off', true) IS NOT NULL
           ELSE true END;

-- name: tasks_enqueue_many
-- Insert many tasks in one statement (one round trip), through
-- angela_queue.enqueue_many: the insert trigger's work done set-based for
-- the whole list (revision 0012). %(tasks)s is one JSON array of {"kind",
-- "payload", and any of "queue", "priority", "run_at", "delay_s",
-- "max_attempts", "timeout_s", "dedup_key"}; a key left out is unset. Rows
-- whose dedup_key is already held by an unfinished task are skipped, as in
-- tasks_enqueue. Returned in the order given. %(relax)s: as in
-- tasks_enqueue, when all the rows' queues are fast (the test runs once: it
-- does not depend on the row).
WITH ins AS (
SELECT e.id, e.queue, e.kind, e.status, e.priority, e.boost, e.tier, e.run_at, e.dedup_key, e.last_error
FROM angela_queue.enqueue_many(%(tasks)s::jsonb, %(trace_context)s::jsonb) AS e
)
SELECT i.* FROM ins i
WHERE CASE WHEN NOT %(relax)s::boolean THEN true
           WHEN NOT EXISTS (SELECT 1 FROM ins f LEFT JOIN angela_queue.queues q ON q.name = f.queue
                            WHERE q.durability IS DISTINCT FROM 'fast')
               THEN pg_catalog.set_config('synchronous_commit', 'off', true) IS NOT NULL
           ELSE true END;

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
-- %(relax)s (the worker's --claim-commit fast, off by default): nothing but
-- claims shares this transaction (no outcome, start or release rides with
-- it), so it commits without waiting for the WAL flush: an idle worker's
-- claim is then one round trip with no disk in it (a flush costs 0.3-0.7 ms
-- on the machines measured). A server crash in the next few hundred milliseconds
-- may lose the claim, never the task: it is queued again and runs again,
-- with the attempt not counted, even where the worker that ran it survived
-- to record its outcome. Any later durable commit on the server (this
-- task's outcome, the next enqueue) flushes the WAL up to its own record,
-- the claim included, so a recorded outcome always has its claim. Set only
-- per transaction, and only by a claim that claimed rows.
WITH RECURSIVE limited AS (
    -- The limited kinds with queued tasks in these queues, read from the
    -- tasks themselves: a skip scan of tasks_claim_idx, one probe per queue
    -- and limited kind (one per queue while there is none). From the tasks,
    -- not from kinds, so a flag that outlived its kind's limit is still found.
    SELECT q.name AS queue,
           (SELECT min(t.limited_kind) FROM angela_queue.tasks t
            WHERE t.status = 'queued' AND t.queue = q.name AND t.limited_kind > '') AS kind
    FROM unnest(%(queues)s::text[]) AS q(name)
    -- A paused queue is skipped (one primary-key probe per queue served).
    WHERE NOT EXISTS (SELECT 1 FROM angela_queue.queues p WHERE p.name = q.name AND p.paused_at IS NOT NULL)
    UNION ALL
    SELECT l.queue,
           (SELECT min(t.limited_kind) FROM angela_queue.tasks t
            WHERE t.status = 'queued' AND t.queue = l.queue AND t.limited_kind > l.kind)
    FROM limited l
    WHERE l.kind IS NOT NULL
), room AS MATERIALIZED (
    -- How many of each this claim may start: angela_queue.claim_room for a
    -- kind with a limit (exact across hosts); the whole claim for one whose
    -- limit was lifted while its tasks still carried the flag ("lifted").
    SELECT d.kind,
           CASE WHEN k.kind IS NULL THEN %(limit)s
                -- Already at its cap as this statement sees it: skip the lock
                -- (a write) for this turn. Only ever skips: a slot freed since
                -- is taken by the next claim; claim_room alone grants room.
                WHEN k.concurrency IS NOT NULL
                     AND (SELECT count(*) FROM angela_queue.tasks t
                          WHERE t.status = 'running' AND t.limited_kind <> '' AND t.limited_kind = d.kind)
                         >= k.concurrency THEN 0
                ELSE angela_queue.claim_room(d.kind, %(limit)s) END AS room,
           k.kind IS NULL AS lifted,
           coalesce(k.rate_limit IS NOT NULL, false) AS rated
    FROM (SELECT DISTINCT l.kind FROM limited l WHERE l.kind IS NOT NULL) AS d
    LEFT JOIN angela_queue.kinds k ON k.kind = d.kind AND (k.concurrency IS NOT NULL OR k.rate_limit IS NOT NULL)
), candidates AS (
    SELECT c.id, c.kind, c.effective_priority, NULL::text AS limited_kind, NULL::integer AS room,
           false AS lifted, false AS rated
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (SELECT 1 WHERE NOT EXISTS (
        SELECT 1 FROM angela_queue.queues p WHERE p.name = q.name AND p.paused_at IS NOT NULL)) AS running
    CROSS JOIN LATERAL (
        SELECT t.id, t.kind,
               t.priority + t.boost + t.aging_rate
                   * greatest(extract(epoch FROM now() - greatest(t.run_at, t.created_at))::double precision, 0) / 60.0
                   AS effective_priority
        FROM angela_queue.tasks t
        -- limited_kind = '': the walk never reads a limited kind's backlog.
        WHERE t.status = 'queued' AND t.queue = q.name AND t.limited_kind = '' AND t.run_at <= now()
          -- A row whose attempts are spent (set by hand) is passed over, not
          -- claimed past its max_attempts.
          AND t.attempts < t.max_attempts
        ORDER BY t.priority_key DESC, t.id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    UNION ALL
    -- Each limited kind with room: its best tasks in each queue where it has
    -- some (the merge below keeps at most its room across them). LIMIT is the
    -- claim's, which the planner can estimate, not the room.
    SELECT c.id, r.kind, c.effective_priority, r.kind, r.room, r.lifted, r.rated
    FROM room r
    JOIN limited l ON l.kind = r.kind
    CROSS JOIN LATERAL (
        SELECT t.id,
               t.priority + t.boost + t.aging_rate
                   * greatest(extract(epoch FROM now() - greatest(t.run_at, t.created_at))::double precision, 0) / 60.0
                   AS effective_priority
        FROM angela_queue.tasks t
        WHERE t.status = 'queued' AND t.queue = l.queue AND t.limited_kind = r.kind AND t.run_at <= now()
          AND t.attempts < t.max_attempts
        ORDER BY t.priority_key DESC, t.id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    WHERE r.room > 0
), checked AS (
    -- A task of a kind that has a limit but carries no flag (inserted by a
    -- transaction open while its kind got the limit) is not claimed here: it
    -- is relabelled, and waits its turn under the limit.
    SELECT c.*, (c.limited_kind IS NULL AND k.kind IS NOT NULL) AS mislabelled
    FROM candidates c
    LEFT JOIN angela_queue.kinds k ON k.kind = c.kind AND (k.concurrency IS NOT NULL OR k.rate_limit IS NOT NULL)
), relabelled AS (
    UPDATE angela_queue.tasks t SET limited_kind = t.kind
    FROM checked c
    WHERE c.mislabelled AND t.id = c.id AND t.status = 'queued'
), picked AS MATERIALIZED (
    SELECT x.id, x.effective_priority, x.lifted, x.rated
    FROM (SELECT c.*, row_number() OVER (PARTITION BY c.limited_kind
                                         ORDER BY c.effective_priority DESC, c.id) AS nth
          FROM checked c
          -- NULL takes any task; 5 takes only work that outranks a
          -- low-priority batch, 9 only critical work for a critical slot
          -- (worker/slots.py). A row passed over
          -- here was locked only until this statement's transaction ends.
          WHERE NOT c.mislabelled
            AND (%(min_effective)s::double precision IS NULL
                 OR c.effective_priority >= %(min_effective)s::double precision)) AS x
    -- A limited kind takes at most its room across all the queues.
    WHERE x.limited_kind IS NULL OR x.nth <= x.room
    ORDER BY x.effective_priority DESC, x.id
    LIMIT %(limit)s
), claimed AS (
    UPDATE angela_queue.tasks t
    SET status = 'running',
        -- A rate-limited kind's task starts at its claim, never in a batch
        -- collected over several claims: its start is what the window counts.
        attempts = t.attempts + CASE WHEN t.priority < %(batch_below)s AND NOT picked.rated THEN 0 ELSE 1 END,
        worker_id = %(worker_id)s,
        started_at = CASE WHEN t.priority < %(batch_below)s AND NOT picked.rated THEN NULL ELSE now() END,
        finished_at = NULL,
        -- A flag that outlived its kind's limit is dropped as it is claimed.
        limited_kind = CASE WHEN picked.lifted THEN '' ELSE t.limited_kind END
    FROM picked
    WHERE t.id = picked.id AND t.status = 'queued'
    RETURNING t.id, t.queue, t.kind, t.payload, t.priority, t.attempts, t.max_attempts, t.timeout_s,
              t.deadline, t.created_at, t.run_at, t.started_at, t.trace_context, picked.rated,
              picked.effective_priority
), rate_counted AS (
    -- Each start of a rate-limited kind joins its window, while claim_room's
    -- lock on the kind is still held, at the clock's time (see claim_room).
    INSERT INTO angela_queue.kind_starts (kind, started_at)
    SELECT c.kind, clock_timestamp()
    FROM claimed c
    WHERE c.rated
)
SELECT c.id, c.queue, c.kind, c.payload::text AS payload, c.priority, c.attempts, c.max_attempts, c.timeout_s,
       c.deadline, c.created_at, c.run_at, c.started_at, c.trace_context, c.effective_priority,
       (SELECT count(pg_notify('angela_queue_space', q.name))
        FROM angela_queue.queues q
        WHERE q.max_size IS NOT NULL AND q.name IN (SELECT queue FROM claimed)) AS space_notified
FROM claimed c
WHERE CASE WHEN NOT %(relax)s::boolean THEN true
           ELSE pg_catalog.set_config('synchronous_commit', 'off', true) IS NOT NULL END
ORDER BY c.effective_priority DESC, c.id;

-- name: tasks_claim_unlimited
-- tasks_claim for a worker that sees no limit in play: no kind has a
-- concurrency or rate limit, and no queued task in its queues carries a
-- limit's flag (tasks_limits_in_play, asked at every poll). Everything else
-- is the same: the per-queue walk of tasks_claim_idx, the merge by live
-- effective priority, paused queues, min_effective, batch_below, the space
-- NOTIFY and %(relax)s. Without the limited kinds' skip scan, room and
-- relabelling an idle worker's claim costs about 0.3 ms less (measured
-- after 20 ms idle, as a woken worker sends it).
-- A limit set since the last poll is never overrun: a task whose kind has
-- one now is passed over here (and locked only until this statement's
-- transaction ends), and a flagged task is never walked; both wait for the
-- full claim, which the worker goes back to at its next poll. Until then an
-- unflagged task passed over still fills a place in its queue's LIMIT (it
-- is not relabelled here): a queue whose head holds %(limit)s of them
-- yields nothing for that poll interval.
WITH candidates AS (
    SELECT c.id, c.effective_priority
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (SELECT 1 WHERE NOT EXISTS (
        SELECT 1 FROM angela_queue.queues p WHERE p.name = q.name AND p.paused_at IS NOT NULL)) AS running
    CROSS JOIN LATERAL (
        SELECT t.id, t.kind,
               t.priority + t.boost + t.aging_rate
                   * greatest(extract(epoch FROM now() - greatest(t.run_at, t.created_at))::double precision, 0) / 60.0
                   AS effective_priority
        FROM angela_queue.tasks t
        WHERE t.status = 'queued' AND t.queue = q.name AND t.limited_kind = '' AND t.run_at <= now()
          AND t.attempts < t.max_attempts
        ORDER BY t.priority_key DESC, t.id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    WHERE NOT EXISTS (SELECT 1 FROM angela_queue.kinds k
                      WHERE k.kind = c.kind AND (k.concurrency IS NOT NULL OR k.rate_limit IS NOT NULL))
      AND (%(min_effective)s::double precision IS NULL
           OR c.effective_priority >= %(min_effective)s::double precision)
), picked AS MATERIALIZED (
    SELECT c.id, c.effective_priority
    FROM candidates c
    ORDER BY c.effective_priority DESC, c.id
    LIMIT %(limit)s
), claimed AS (
    UPDATE angela_queue.tasks t
    SET status = 'running',
        attempts = t.attempts + CASE WHEN t.priority < %(batch_below)s THEN 0 ELSE 1 END,
        worker_id = %(worker_id)s,
        started_at = CASE WHEN t.priority < %(batch_below)s THEN NULL ELSE now() END,
        finished_at = NULL
    FROM picked
    WHERE t.id = picked.id AND t.status = 'queued'
    RETURNING t.id, t.queue, t.kind, t.payload, t.priority, t.attempts, t.max_attempts, t.timeout_s,
              t.deadline, t.created_at, t.run_at, t.started_at, t.trace_context, picked.effective_priority
)
SELECT c.id, c.queue, c.kind, c.payload::text AS payload, c.priority, c.attempts, c.max_attempts, c.timeout_s,
       c.deadline, c.created_at, c.run_at, c.started_at, c.trace_context, c.effective_priority,
       (SELECT count(pg_notify('angela_queue_space', q.name))
        FROM angela_queue.queues q
        WHERE q.max_size IS NOT NULL AND q.name IN (SELECT queue FROM claimed)) AS space_notified
FROM claimed c
WHERE CASE WHEN NOT %(relax)s::boolean THEN true
           ELSE pg_catalog.set_config('synchronous_commit', 'off', true) IS NOT NULL END
ORDER BY c.effective_priority DESC, c.id;

-- name: tasks_limits_in_play
-- Whether a worker serving these queues needs tasks_claim (true) or may use
-- tasks_claim_unlimited (false): some kind has a concurrency or rate limit,
-- or a queued task in these queues carries a limit's flag (a flag that
-- outlived its kind's limit is cleared only by tasks_claim). Asked at every
-- poll. The kinds are a handful of rows; the flags, one probe of
-- tasks_claim_idx per queue.
SELECT EXISTS (SELECT 1 FROM angela_queue.kinds k WHERE k.concurrency IS NOT NULL OR k.rate_limit IS NOT NULL)
       OR EXISTS (SELECT 1 FROM unnest(%(queues)s::text[]) AS q(name)
                  WHERE EXISTS (SELECT 1 FROM angela_queue.tasks t
                                WHERE t.status = 'queued' AND t.queue = q.name AND t.limited_kind > ''))
       AS limits_in_play;

-- name: tasks_claim_kind
-- Claim up to %(limit)s low-priority (< 5) tasks of one kind and queue, to
-- fill a batch. Same fence as tasks_claim; walks tasks_batch_fill_idx.
-- Claimed unstarted, with no attempt counted (see tasks_claim).
-- A limited kind's batch is not filled here: its tasks start only through
-- tasks_claim, which counts them against the limit (checked once, before
-- the walk, so a capped kind's backlog is never read).
WITH picked AS MATERIALIZED (
    SELECT t.id
    FROM angela_queue.tasks t
    WHERE t.status = 'queued' AND t.queue = %(queue)s AND t.kind = %(kind)s
      AND t.priority < 5 AND t.run_at <= now() AND t.attempts < t.max_attempts AND t.limited_kind = ''
      AND NOT EXISTS (SELECT 1 FROM angela_queue.queues p WHERE p.name = %(queue)s AND p.paused_at IS NOT NULL)
      AND NOT EXISTS (SELECT 1 FROM angela_queue.kinds k
                      WHERE k.kind = %(kind)s AND (k.concurrency IS NOT NULL OR k.rate_limit IS NOT NULL))
    ORDER BY t.priority_key DESC, t.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE angela_queue.tasks t
    SET status = 'running', worker_id = %(worker_id)s, started_at = NULL, finished_at = NULL
    FROM picked
    WHERE t.id = picked.id AND t.status = 'queued'
    RETURNING t.id, t.queue, t.kind, t.payload, t.priority, t.boost, t.tier,
              t.attempts, t.max_attempts, t.timeout_s, t.run_at, t.deadline, t.created_at, t.trace_context,
              t.priority_key,
              t.priority + t.boost + t.aging_rate
                  * greatest(extract(epoch FROM now() - greatest(t.run_at, t.created_at))::double precision, 0) / 60.0
                  AS effective_priority
)
SELECT c.id, c.queue, c.kind, c.payload::text AS payload, c.priority, c.boost, c.tier,
       c.attempts, c.max_attempts, c.timeout_s, c.run_at, c.deadline, c.created_at, c.trace_context,
       c.effective_priority,
       (SELECT count(pg_notify('angela_queue_space', q.name))
        FROM angela_queue.queues q
        WHERE q.max_size IS NOT NULL AND q.name IN (SELECT queue FROM claimed)) AS space_notified
FROM claimed c
ORDER BY c.priority_key DESC, c.id;

-- name: tasks_start_many
-- A collected batch is about to run: count the attempt and stamp the start
-- of its tasks, which were claimed unstarted (see tasks_claim). Guarded like
-- every state change: a task reclaimed meanwhile is not returned, and is not
-- run; nor is one whose queue was paused while it waited (the worker gives
-- it back).
UPDATE angela_queue.tasks t
SET attempts = t.attempts + 1, started_at = now()
WHERE t.id = ANY(%(ids)s::bigint[]) AND t.status = 'running' AND t.worker_id = %(worker_id)s
  AND t.started_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM angela_queue.queues p WHERE p.name = t.queue AND p.paused_at IS NOT NULL)
RETURNING t.id, t.attempts, t.started_at;

-- name: tasks_complete_many
-- Record the successes of one worker in one statement. %(outcomes)s is one
-- JSON array of {"id", "result", "finished_at" (epoch seconds)}. Guarded: a
-- task that was reclaimed meanwhile (no longer running here) is left alone
-- and simply missing from the returned ids. A task asked to stop while it
-- ran is recorded as cancelled, its result kept. One NOTIFY on
-- angela_queue_done names them all (angela_queue.notify_done: Client.wait).
WITH done AS (
UPDATE angela_queue.tasks t
SET status = CASE WHEN t.cancel_requested_at IS NULL THEN 'succeeded' ELSE 'cancelled' END,
    -- The worker's clock says when the handler ended; clamped to the
    -- database's [started_at, now()], so a skewed host cannot date a
    -- result into the future or before its start (retention reads it).
    finished_at = least(greatest(to_timestamp(d.finished_at), t.started_at), now()), result = d.result,
    last_error = CASE WHEN t.cancel_requested_at IS NULL THEN NULL ELSE 'cancelled while running' END
FROM jsonb_to_recordset(%(outcomes)s::jsonb) AS d(id bigint, result jsonb, finished_at double precision)
WHERE t.id = d.id AND t.status = 'running' AND t.worker_id = %(worker_id)s
RETURNING t.id
)
SELECT d.id FROM done d WHERE (SELECT angela_queue.notify_done(array_agg(f.id)) FROM done f) >= 0;

-- name: tasks_fail_many
-- Record failed attempts of one worker in one statement: each task goes back
-- to 'scheduled' after its backoff while attempts remain, else to 'failed'
-- (final). %(retry_in_s)s holds each task's backoff; NULL forces 'failed'
-- (a payload that cannot be decoded, a result that cannot be stored). A task
-- asked to stop is 'cancelled' instead, never retried. Each failure is
-- added to the task's attempt history. Guarded like tasks_complete_many;
-- the ones that finished (failed or cancelled) are announced likewise.
WITH done AS (
UPDATE angela_queue.tasks t
SET status = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled'
                  WHEN d.retry_in_s IS NOT NULL AND t.attempts < t.max_attempts THEN 'scheduled'
                  ELSE 'failed' END,
    run_at = CASE WHEN t.cancel_requested_at IS NULL AND d.retry_in_s IS NOT NULL AND t.attempts < t.max_attempts
                  THEN d.failed_at + make_interval(secs => d.retry_in_s) ELSE t.run_at END,
    finished_at = CASE WHEN t.cancel_requested_at IS NULL AND d.retry_in_s IS NOT NULL
                            AND t.attempts < t.max_attempts
                       THEN NULL ELSE d.failed_at END,
    worker_id = CASE WHEN t.cancel_requested_at IS NULL AND d.retry_in_s IS NOT NULL
                          AND t.attempts < t.max_attempts
                     THEN NULL ELSE t.worker_id END,
    last_error = d.error,
    errors = angela_queue.error_history(t.errors, t.attempts, d.failed_at, %(worker_id)s, d.error),
    failed_at = d.failed_at
FROM (SELECT u.id, u.error, u.retry_in_s,
             -- the worker's clock, never later than the database's
             least(u.failed_at, now()) AS failed_at
      FROM unnest(%(ids)s::bigint[], %(errors)s::text[], %(retry_in_s)s::double precision[],
                  %(failed_ats)s::timestamptz[]) AS u(id, error, retry_in_s, failed_at)) AS d
WHERE t.id = d.id AND t.status = 'running' AND t.worker_id = %(worker_id)s
RETURNING t.id, t.status, t.attempts, t.max_attempts, t.run_at
)
SELECT d.id, d.status, d.attempts, d.max_attempts, d.run_at FROM done d
WHERE (SELECT angela_queue.notify_done(array_agg(f.id) FILTER (WHERE f.status IN ('failed', 'cancelled')))
       FROM done f) >= 0;

-- name: tasks_cancelled_many
-- Record tasks of one worker that stopped on request (cancel_task) before
-- their handler ended: cancelled, never retried. Guarded like
-- tasks_complete_many, and announced likewise.
WITH done AS (
UPDATE angela_queue.tasks t
SET status = 'cancelled', finished_at = least(greatest(d.finished_at, t.started_at), now()), last_error = d.error
FROM unnest(%(ids)s::bigint[], %(errors)s::text[], %(finished_ats)s::timestamptz[]) AS d(id, error, finished_at)
WHERE t.id = d.id AND t.status = 'running' AND t.worker_id = %(worker_id)s
RETURNING t.id
)
SELECT d.id FROM done d WHERE (SELECT angela_queue.notify_done(array_agg(f.id)) FROM done f) >= 0;

-- name: tasks_snooze_many
-- Handlers that raised Snooze(seconds): each task goes back to wait for its
-- delay (queued at once for 0), with the attempt not counted and nothing
-- added to its error history; its deadline counts again from the new run_at
-- (tasks_before_update_order). A task asked to stop is cancelled instead.
-- Guarded like tasks_complete_many.
WITH done AS (
UPDATE angela_queue.tasks t
SET status = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled'
                  WHEN d.delay_s > 0 THEN 'scheduled' ELSE 'queued' END,
    run_at = CASE WHEN t.cancel_requested_at IS NOT NULL THEN t.run_at
                  ELSE now() + make_interval(secs => d.delay_s) END,
    attempts = CASE WHEN t.cancel_requested_at IS NOT NULL OR t.started_at IS NULL THEN t.attempts
                    ELSE greatest(t.attempts - 1, 0) END,
    worker_id = CASE WHEN t.cancel_requested_at IS NOT NULL THEN t.worker_id END,
    started_at = CASE WHEN t.cancel_requested_at IS NOT NULL THEN t.started_at END,
    finished_at = CASE WHEN t.cancel_requested_at IS NOT NULL THEN now() END,
    last_error = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled while running' ELSE t.last_error END
FROM unnest(%(ids)s::bigint[], %(delays_s)s::double precision[]) AS d(id, delay_s)
WHERE t.id = d.id AND t.status = 'running' AND t.worker_id = %(worker_id)s
RETURNING t.id, t.status, t.queue
), woken AS (
    SELECT pg_notify('angela_queue_insert', w.queue) FROM (SELECT DISTINCT queue FROM done WHERE status = 'queued') w
)
SELECT d.id, d.status FROM done d
WHERE (SELECT count(*) FROM woken) >= 0
  AND (SELECT angela_queue.notify_done(array_agg(f.id) FILTER (WHERE f.status = 'cancelled')) FROM done f) >= 0;

-- name: tasks_release_many
-- Give tasks back untouched (graceful stop): back to 'queued' with the attempt
-- not counted against them (a task claimed unstarted never counted one). A
-- task someone asked to stop is not given back to run again: it is
-- cancelled, and announced. Guarded like tasks_complete_many.
WITH done AS (
UPDATE angela_queue.tasks t
SET status = CASE WHEN t.cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END,
    attempts = CASE WHEN t.cancel_requested_at IS NOT NULL OR t.started_at IS NULL THEN t.attempts
                    ELSE greatest(t.attempts - 1, 0) END,
    finished_at = CASE WHEN t.cancel_requested_at IS NULL THEN NULL ELSE now() END,
    last_error = CASE WHEN t.cancel_requested_at IS NULL THEN t.last_error
                      ELSE 'cancelled: asked to stop, and its worker stopped before it finished' END,
    worker_id = CASE WHEN t.cancel_requested_at IS NULL THEN NULL ELSE t.worker_id END,
    started_at = CASE WHEN t.cancel_requested_at IS NULL THEN NULL ELSE t.started_at END
WHERE t.id = ANY(%(ids)s::bigint[]) AND t.status = 'running' AND t.worker_id = %(worker_id)s
RETURNING t.id, t.status
)
SELECT d.id, d.status FROM done d
WHERE (SELECT angela_queue.notify_done(array_agg(f.id) FILTER (WHERE f.status = 'cancelled')) FROM done f) >= 0;

-- name: tasks_promote_due
-- Move scheduled tasks whose run_at has come to 'queued', and wake workers.
-- SKIP LOCKED so that many workers promoting at once never block each other.
-- %(now)s lets tests move time instead of sleeping; NULL means now().
-- %(queues)s: only these queues (a worker promotes what it serves); NULL: all
-- (the leader).
WITH due AS MATERIALIZED (
    SELECT t.id
    FROM angela_queue.tasks t
    WHERE t.status = 'scheduled' AND t.run_at <= coalesce(%(now)s::timestamptz, now())
      AND (%(queues)s::text[] IS NULL OR t.queue = ANY(%(queues)s::text[]))
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
      AND t.queue NOT IN (SELECT p.name FROM angela_queue.queues p WHERE p.paused_at IS NOT NULL)
    LIMIT %(cap)s
) AS waiting;

-- name: tasks_due_count
-- Whether anything in these queues is startable now or due (an in-process
-- drain stops when nothing is): queued, or scheduled with its run_at come,
-- in a queue that is not paused. 1 or 0.
-- Hazard: written as one scan with `status = 'queued' OR (status =
-- 'scheduled' AND ...)` and LIMIT 1, the planner may read the whole table in
-- order until it meets a waiting row: past every finished one. Two probes,
-- each through its own partial index in its order (so no plan reads the
-- heap in table order), stop at the first row.
SELECT (EXISTS (SELECT 1 FROM unnest(%(queues)s::text[]) AS q(name)
                CROSS JOIN LATERAL (
                    SELECT 1 FROM angela_queue.tasks t
                    WHERE t.status = 'queued' AND t.queue = q.name AND t.attempts < t.max_attempts
                    ORDER BY t.limited_kind, t.priority_key DESC, t.id
                    LIMIT 1) AS waiting
                WHERE q.name NOT IN (SELECT p.name FROM angela_queue.queues p WHERE p.paused_at IS NOT NULL))
        OR EXISTS (SELECT 1 FROM angela_queue.tasks t
                   WHERE t.status = 'scheduled' AND t.run_at <= now() AND t.queue = ANY(%(queues)s::text[])
                     AND t.attempts < t.max_attempts
                     AND t.queue NOT IN (SELECT p.name FROM angela_queue.queues p WHERE p.paused_at IS NOT NULL)
                   ORDER BY t.run_at
                   LIMIT 1)
       )::integer AS due;

-- name: tasks_cancel_requested_for_worker
-- The tasks running on this worker that someone asked to stop (the NOTIFY
-- on angela_queue_cancel wakes the worker; this is the poll's backstop).
SELECT t.id FROM angela_queue.tasks t
WHERE t.status = 'running' AND t.worker_id = %(worker_id)s AND t.cancel_requested_at IS NOT NULL;

-- name: tasks_retry
-- Retry one failed, cancelled or dropped task (angela_queue.retry_task).
SELECT id, status, outcome FROM angela_queue.retry_task(%(id)s);

-- name: tasks_retry_many
-- Retry every task of a status, optionally of one kind and queue (angela_queue.retry_tasks).
SELECT angela_queue.retry_tasks(%(status)s, %(kind)s, %(queue)s) AS retried;

-- name: tasks_purge
-- Delete up to %(limit)s finished tasks of one status older than an interval
-- (angela_queue.purge_tasks); the client calls it until fewer come back, one
-- short transaction per call.
SELECT angela_queue.purge_tasks(%(status)s, make_interval(secs => %(older_than_s)s::double precision),
                                %(limit)s) AS purged;

-- name: tasks_list
-- Tasks, newest first, filtered by status, kind, queue and enqueue time
-- (each filter NULL: any). Row-level security applies: a producer lists its
-- own tasks. Walks the primary key backwards; a rare filter on a huge table
-- reads further, so `since` bounds the walk to the tasks enqueued since then.
SELECT t.id, t.queue, t.kind, t.status, t.priority, t.tier, t.attempts, t.max_attempts, t.created_at,
       t.run_at, t.started_at, t.finished_at,
       split_part(t.last_error, E'\n', 1) AS last_error   -- its first line: a list, not the traceback
FROM angela_queue.tasks t
WHERE (%(status)s::text IS NULL OR t.status = %(status)s::text)
  AND (%(kind)s::text IS NULL OR t.kind = %(kind)s::text)
  AND (%(queue)s::text IS NULL OR t.queue = %(queue)s::text)
  AND (%(since)s::timestamptz IS NULL OR t.created_at >= %(since)s::timestamptz)
ORDER BY t.id DESC
LIMIT %(limit)s;

-- name: queues_pause
-- Pause a queue (angela_queue.pause_queue): true if it was running.
SELECT angela_queue.pause_queue(%(name)s) AS changed;

-- name: queues_resume
-- Resume a queue (angela_queue.resume_queue): true if it was paused.
SELECT angela_queue.resume_queue(%(name)s) AS changed;

-- name: tasks_get_many
-- Several task rows, whole (row-level security applies).
SELECT * FROM angela_queue.tasks WHERE id = ANY(%(ids)s::bigint[]);

-- name: tasks_matching
-- Tasks of a kind (NULL: any) whose payload contains the given JSON object
-- (jsonb @>), oldest first: angela_queue.testing's enqueued(). For tests:
-- it reads every task of the kind.
SELECT * FROM angela_queue.tasks t
WHERE (%(kind)s::text IS NULL OR t.kind = %(kind)s::text) AND t.payload @> %(payload)s::jsonb
ORDER BY t.id
LIMIT 10000;

-- name: queues_names
-- Every queue's name.
SELECT q.name FROM angela_queue.queues q ORDER BY q.name;
