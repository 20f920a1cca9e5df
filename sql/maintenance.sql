-- angela-queue: reclaim, mark-lost and prune. The supervisor reclaims the
-- tasks of its own workers (it is their parent: it sees them exit or stall);
-- the maintenance leader reclaims whatever no live process holds any more
-- (a host that died with its supervisor) and prunes old rows.
--
-- Reclaiming counts the attempt: a task is claimed with attempts already
-- incremented, so it goes back to 'queued' while attempts < max_attempts and
-- to 'failed' (final) once they are spent. A task that kills its worker every
-- time therefore stops after max_attempts instead of looping forever.
-- Every reclaim is guarded on status = 'running' AND worker_id = the lost
-- worker: a completion that commits first wins, and the reclaim skips it.
-- %(now)s lets tests move time instead of sleeping; NULL means now().

-- name: workers_reclaim_exited
-- A worker process has exited (its supervisor reaped it): nothing can finish
-- its tasks any more, so reclaim them now and mark the row %(status)s
-- ('stopped' after a clean exit, 'dead' after a crash or kill). A row the
-- worker already marked stopped or dead keeps its status.
-- Hazard: a process killed mid-COMMIT may still have its completion
-- committed by the server; the reclaim then waits on that row's lock,
-- re-checks status = 'running' and skips it.
WITH marked AS (
    UPDATE angela_queue.workers w
    SET status = %(status)s, stopped_at = coalesce(w.stopped_at, now()), current_tasks = '{}'
    WHERE w.id = %(worker_id)s AND w.status NOT IN ('stopped', 'dead')
    RETURNING w.id
), reclaimed AS (
    UPDATE angela_queue.tasks t
    SET status = CASE WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'queued' END,
        worker_id = CASE WHEN t.attempts >= t.max_attempts THEN t.worker_id END,
        started_at = CASE WHEN t.attempts >= t.max_attempts THEN t.started_at END,
        finished_at = CASE WHEN t.attempts >= t.max_attempts THEN now() END,
        last_error = format('%%s (attempt %%s of %%s)', %(reason)s::text, t.attempts, t.max_attempts)
    WHERE t.status = 'running' AND t.worker_id = %(worker_id)s
    RETURNING t.id, t.queue, t.status
), woken AS (
    SELECT pg_notify('angela_queue_insert', q.queue)
    FROM (SELECT DISTINCT queue FROM reclaimed WHERE status = 'queued') q
)
SELECT (SELECT count(*) FROM marked) AS marked,
       coalesce((SELECT array_agg(id ORDER BY id) FROM reclaimed WHERE status = 'queued'), '{}') AS requeued,
       coalesce((SELECT array_agg(id ORDER BY id) FROM reclaimed WHERE status = 'failed'), '{}') AS failed,
       (SELECT count(*) FROM woken) AS notified;

-- name: workers_reclaim_stuck
-- Mark a live worker 'stuck' and reclaim its tasks, but only if it has made
-- no progress since %(progress_at)s, the last progress its supervisor saw
-- (last_active, or the start of its newest task).
-- Hazard: the supervisor judged from a snapshot; the worker may have finished
-- or started a task since. The worker-row guard re-checks on the latest row
-- version (a concurrent heartbeat that advanced last_active makes it miss),
-- and tasks are reclaimed only if that mark succeeded. Once marked, the
-- worker's own heartbeat (guarded on a live status) fails and it stops; its
-- late completions are refused by their guard.
WITH marked AS (
    UPDATE angela_queue.workers w
    SET status = 'stuck', current_tasks = '{}'
    WHERE w.id = %(worker_id)s AND w.status IN ('active', 'idle', 'stopping')
      AND coalesce(w.last_active, w.started_at) <= %(progress_at)s
      AND NOT EXISTS (SELECT 1 FROM angela_queue.tasks n
                      WHERE n.status = 'running' AND n.worker_id = w.id AND n.started_at > %(progress_at)s)
    RETURNING w.id
), reclaimed AS (
    UPDATE angela_queue.tasks t
    SET status = CASE WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'queued' END,
        worker_id = CASE WHEN t.attempts >= t.max_attempts THEN t.worker_id END,
        started_at = CASE WHEN t.attempts >= t.max_attempts THEN t.started_at END,
        finished_at = CASE WHEN t.attempts >= t.max_attempts THEN now() END,
        last_error = format('%%s (attempt %%s of %%s)', %(reason)s::text, t.attempts, t.max_attempts)
    WHERE t.status = 'running' AND t.worker_id = %(worker_id)s
      AND EXISTS (SELECT 1 FROM marked)
    RETURNING t.id, t.queue, t.status
), woken AS (
    SELECT pg_notify('angela_queue_insert', q.queue)
    FROM (SELECT DISTINCT queue FROM reclaimed WHERE status = 'queued') q
)
SELECT (SELECT count(*) FROM marked) AS marked,
       coalesce((SELECT array_agg(id ORDER BY id) FROM reclaimed WHERE status = 'queued'), '{}') AS requeued,
       coalesce((SELECT array_agg(id ORDER BY id) FROM reclaimed WHERE status = 'failed'), '{}') AS failed,
       (SELECT count(*) FROM woken) AS notified;

-- name: maintenance_reclaim_lost_workers
-- Leader only. Mark 'dead' every live worker row that has been silent for
-- longer than its own dead_after_s (its host or its whole process tree died),
-- and reclaim up to %(limit)s running tasks that no live worker holds: those
-- of the workers just marked, of rows already stopped or dead (a worker whose
-- last flush failed), or of no row at all.
-- Hazard (outages): a worker cannot heartbeat while the database is away, so
-- right after an outage longer than dead_after_s every healthy worker looks
-- dead, and marking it would requeue tasks it is still running: duplicate
-- runs. Silence is therefore counted only from the later of the last
-- heartbeat and the moment the caller (the leader) last saw the database
-- come back, %(healthy_for_s)s seconds before %(now)s: a worker is judged only
-- after it has had a full dead_after_s of reachable database to beat in.
-- NULL means the caller vouches for the whole window (tests, one-off tools).
-- Tasks of rows already stopped or dead, or of no row, are not judged by a
-- heartbeat and are reclaimed regardless.
-- Hazard: the NOT EXISTS reads the statement's snapshot, in which the rows
-- marked by `lost` still look live; hence the explicit IN (lost). A claim is
-- only ever made after its worker's row is committed, so a task in the
-- snapshot always finds its worker's row there too. SKIP LOCKED: a task being
-- completed right now is left for the next run rather than waited on.
WITH lost AS (
    UPDATE angela_queue.workers w
    SET status = 'dead', stopped_at = coalesce(w.stopped_at, coalesce(%(now)s::timestamptz, now())),
        current_tasks = '{}'
    WHERE w.status IN ('active', 'idle', 'stopping', 'stuck')
      AND greatest(w.last_heartbeat,
                   coalesce(%(now)s::timestamptz, now())
                   - make_interval(secs => %(healthy_for_s)s::double precision))
          < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => w.dead_after_s)
    RETURNING w.id
), orphaned AS MATERIALIZED (
    SELECT t.id
    FROM angela_queue.tasks t
    WHERE t.status = 'running'
      AND (t.worker_id IS NULL
           OR t.worker_id IN (SELECT id FROM lost)
           OR NOT EXISTS (SELECT 1 FROM angela_queue.workers w
                          WHERE w.id = t.worker_id AND w.status IN ('active', 'idle', 'stopping', 'stuck')))
    ORDER BY t.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), reclaimed AS (
    UPDATE angela_queue.tasks t
    SET status = CASE WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'queued' END,
        worker_id = CASE WHEN t.attempts >= t.max_attempts THEN t.worker_id END,
        started_at = CASE WHEN t.attempts >= t.max_attempts THEN t.started_at END,
        finished_at = CASE WHEN t.attempts >= t.max_attempts THEN coalesce(%(now)s::timestamptz, now()) END,
        last_error = format('its worker %%s was lost (no heartbeat, or it exited holding the task) '
                            '(attempt %%s of %%s)', coalesce(t.worker_id::text, '(none)'),
                            t.attempts, t.max_attempts)
    FROM orphaned
    WHERE t.id = orphaned.id AND t.status = 'running'
    RETURNING t.id, t.queue, t.status
), woken AS (
    SELECT pg_notify('angela_queue_insert', q.queue)
    FROM (SELECT DISTINCT queue FROM reclaimed WHERE status = 'queued') q
)
SELECT coalesce((SELECT array_agg(id) FROM lost), '{}') AS dead_workers,
       coalesce((SELECT array_agg(id ORDER BY id) FROM reclaimed WHERE status = 'queued'), '{}') AS requeued,
       coalesce((SELECT array_agg(id ORDER BY id) FROM reclaimed WHERE status = 'failed'), '{}') AS failed,
       (SELECT count(*) FROM woken) AS notified;

-- name: maintenance_mark_lost_supervisors
-- Leader only. A supervisor silent for longer than %(dead_after_s)s is marked
-- 'dead', so it no longer counts as a peer sharing the queue depth (after an
-- outage, every survivor would otherwise take the whole depth as its own and
-- scale up). Silence is counted as for workers (above): not across the
-- caller's own outage, %(healthy_for_s)s. Its workers are judged by their own
-- heartbeats. A supervisor that was only paused sets itself 'running' again
-- at its next heartbeat.
UPDATE angela_queue.supervisors s
SET status = 'dead', stopped_at = coalesce(%(now)s::timestamptz, now())
WHERE s.status = 'running'
  AND greatest(s.last_heartbeat,
               coalesce(%(now)s::timestamptz, now())
               - make_interval(secs => %(healthy_for_s)s::double precision))
      < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(dead_after_s)s::double precision)
RETURNING s.id, s.host, s.pid;

-- name: maintenance_prune_tasks
-- Leader only. One step of the pruner's walk along the primary key: look at
-- the next %(limit)s tasks after id %(after_id)s, in id order, and delete
-- those that are final and finished longer ago than the retention. Returns
-- how many it deleted, how many it walked, the last id walked, and the
-- frontier, if it reached one; maintenance.py decides where to resume.
-- Hazard: "finished before the cutoff" has no index to use, deliberately:
-- one on finished_at would cost every completion an extra index write on the
-- hot path, for a job that runs once a minute. Searched for directly, it is
-- a scan of the whole table on every run, even when nothing is due; on tens
-- of millions of rows that stalls the supervisor's loop past its lease. The
-- walk reads tasks_pkey instead: ids grow with time, so the oldest rows come
-- first, and each step reads at most %(limit)s index entries and rows,
-- whatever the table size.
-- * Rows it may not delete yet (unfinished, e.g. scheduled far ahead, or
--   finished too recently) are stepped over, not stopped at, so they cannot
--   pin the pruner; the next pass over the table comes back to them.
-- * It stops at the frontier, the first row created after the cutoff: every
--   later id was created later still (give or take inserts racing for ids),
--   so finished later still, and cannot be due. A row inserted out of order
--   is only pruned late, never early.
-- Deletion re-checks status and age on the locked row: a final task is
-- never deleted before its retention has passed, an unfinished one never.
-- SKIP LOCKED: a row someone is changing right now waits for the next pass.
WITH cutoff AS (
    SELECT coalesce(%(now)s::timestamptz, now())
           - make_interval(secs => %(retention_s)s::double precision) AS at
), walked AS MATERIALIZED (
    SELECT t.id, t.created_at
    FROM angela_queue.tasks t
    WHERE t.id > %(after_id)s
    ORDER BY t.id
    LIMIT %(limit)s
), step AS (
    SELECT count(*) AS walked, max(w.id) AS last_id,
           min(w.id) FILTER (WHERE w.created_at >= (SELECT at FROM cutoff)) AS frontier_id
    FROM walked w
), doomed AS MATERIALIZED (
    SELECT t.id
    FROM angela_queue.tasks t
    WHERE t.id > %(after_id)s
      AND t.id < (SELECT coalesce(frontier_id, last_id + 1) FROM step)
      AND t.status IN ('succeeded', 'failed', 'cancelled', 'dropped')
      AND coalesce(t.finished_at, t.created_at) < (SELECT at FROM cutoff)
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM angela_queue.tasks t
    USING doomed
    WHERE t.id = doomed.id
      AND t.status IN ('succeeded', 'failed', 'cancelled', 'dropped')
      AND coalesce(t.finished_at, t.created_at) < (SELECT at FROM cutoff)
    RETURNING t.id
)
SELECT (SELECT count(*) FROM deleted) AS pruned, s.walked, s.last_id, s.frontier_id
FROM step s;

-- name: maintenance_prune_workers
-- Leader only. Delete up to %(limit)s worker rows that stopped or died
-- longer ago than the retention. A plain scan: one row per worker process
-- ever started within the retention, thousands rather than millions.
WITH doomed AS MATERIALIZED (
    SELECT w.id
    FROM angela_queue.workers w
    WHERE w.status IN ('stopped', 'dead')
      AND coalesce(w.stopped_at, w.last_heartbeat)
          < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(retention_s)s::double precision)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM angela_queue.workers w USING doomed
    WHERE w.id = doomed.id AND w.status IN ('stopped', 'dead')
    RETURNING w.id
)
SELECT count(*) AS pruned FROM deleted;

-- name: maintenance_prune_supervisors
-- Leader only. Delete up to %(limit)s supervisor rows that stopped or died
-- longer ago than the retention.
WITH doomed AS MATERIALIZED (
    SELECT s.id
    FROM angela_queue.supervisors s
    WHERE s.status IN ('stopped', 'dead')
      AND coalesce(s.stopped_at, s.last_heartbeat)
          < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(retention_s)s::double precision)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM angela_queue.supervisors s USING doomed
    WHERE s.id = doomed.id AND s.status IN ('stopped', 'dead')
    RETURNING s.id
)
SELECT count(*) AS pruned FROM deleted;
