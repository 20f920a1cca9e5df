-- angela-queue: reclaim, mark-lost and prune. The supervisor reclaims the
-- tasks of its own workers (it is their parent: it sees them exit or stall);
-- the maintenance leader reclaims whatever no live process holds any more
-- (a host that died with its supervisor) and prunes old rows.
--
-- Every reclaim goes through angela_queue.reclaim_tasks (schema.sql): the
-- attempt stays counted (a task that kills its worker every time stops after
-- max_attempts), a task asked to stop is cancelled, and each task is guarded
-- on status = 'running' AND worker_id = the worker it was found with: a
-- completion that commits first wins, and the reclaim skips it.
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
), held AS MATERIALIZED (
    SELECT t.id FROM angela_queue.tasks t WHERE t.status = 'running' AND t.worker_id = %(worker_id)s
), reclaimed AS MATERIALIZED (
    SELECT r.* FROM angela_queue.reclaim_tasks(
        ARRAY(SELECT id FROM held), array_fill(%(worker_id)s::uuid, ARRAY[(SELECT count(*) FROM held)::int]),
        array_fill(%(reason)s::text, ARRAY[(SELECT count(*) FROM held)::int])) r
)
SELECT (SELECT count(*) FROM marked) AS marked,
       coalesce((SELECT array_agg(id ORDER BY id) FROM reclaimed WHERE status = 'queued'), '{}') AS requeued,
       coalesce((SELECT array_agg(id ORDER BY id) FROM reclaimed WHERE status <> 'queued'), '{}') AS failed;

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
), held AS MATERIALIZED (
    SELECT t.id FROM angela_queue.tasks t
    WHERE t.status = 'running' AND t.worker_id = %(worker_id)s AND EXISTS (SELECT 1 FROM marked)
), reclaimed AS MATERIALIZED (
    SELECT r.* FROM angela_queue.reclaim_tasks(
        ARRAY(SELECT id FROM held), array_fill(%(worker_id)s::uuid, ARRAY[(SELECT count(*) FROM held)::int]),
        array_fill(%(reason)s::text, ARRAY[(SELECT count(*) FROM held)::int])) r
)
SELECT (SELECT count(*) FROM marked) AS marked,
       coalesce((SELECT array_agg(id ORDER BY id) FROM reclaimed WHERE status = 'queued'), '{}') AS requeued,
       coalesce((SELECT array_agg(id ORDER BY id) FROM reclaimed WHERE status <> 'queued'), '{}') AS failed;

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
    SELECT t.id, t.worker_id
    FROM angela_queue.tasks t
    WHERE t.status = 'running'
      AND (t.worker_id IS NULL
           OR t.worker_id IN (SELECT id FROM lost)
           OR NOT EXISTS (SELECT 1 FROM angela_queue.workers w
                          WHERE w.id = t.worker_id AND w.status IN ('active', 'idle', 'stopping', 'stuck')))
    ORDER BY t.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), reclaimed AS MATERIALIZED (
    SELECT r.* FROM angela_queue.reclaim_tasks(
        ARRAY(SELECT o.id FROM orphaned o ORDER BY o.id),
        ARRAY(SELECT o.worker_id FROM orphaned o ORDER BY o.id),
        ARRAY(SELECT format('its worker %%s was lost (no heartbeat, or it exited holding the task)',
                            coalesce(o.worker_id::text, '(none)')) FROM orphaned o ORDER BY o.id),
        %(now)s::timestamptz) r
)
SELECT coalesce((SELECT array_agg(id) FROM lost), '{}') AS dead_workers,
       coalesce((SELECT array_agg(id ORDER BY id) FROM reclaimed WHERE status = 'queued'), '{}') AS requeued,
       coalesce((SELECT array_agg(id ORDER BY id) FROM reclaimed WHERE status <> 'queued'), '{}') AS failed;

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

-- name: maintenance_prune_finished
-- Leader only. Delete up to %(limit)s tasks in the final status %(status)s
-- that finished before the retention cutoff, oldest first, walking
-- tasks_finished_idx; returns how many. Each final status has its own
-- retention (failed rows, the dead letters, are kept longer), so the caller
-- runs this once per status.
-- Why finished_at and this index: a task is prunable by when it finished,
-- whatever its id or created_at say (one row created "in the future" by hand
-- once pinned an id-order walk forever). Only final rows are in the index, so
-- enqueues and claims never pay for it.
-- Hazard (prepared statements): the explicit IN list is what lets the
-- planner prove the partial index's predicate for a generic plan; with only
-- `status = $1` it could not, and would scan the table.
-- SKIP LOCKED: a row someone is changing right now waits for the next run.
WITH doomed AS MATERIALIZED (
    SELECT t.id
    FROM angela_queue.tasks t
    WHERE t.status IN ('succeeded', 'failed', 'cancelled', 'dropped')
      AND t.status = %(status)s
      AND t.finished_at < coalesce(%(now)s::timestamptz, now())
                          - make_interval(secs => %(retention_s)s::double precision)
    ORDER BY t.finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    -- = ANY(ARRAY(...)): the deletion probes the primary key per row; a join
    -- with the CTE may be planned as a hash join over a scan of the table.
    DELETE FROM angela_queue.tasks t
    WHERE t.id = ANY (ARRAY(SELECT id FROM doomed)) AND t.status = %(status)s
    RETURNING t.id
)
SELECT count(*) AS pruned FROM deleted;

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

-- name: maintenance_prune_kind_starts
-- Rate-limited starts older than the longest window (an hour). claim_room
-- drops a kind's own as it claims; these belong to kinds no claim has looked
-- at since (their limit lifted, or nothing left to run).
WITH gone AS (
    DELETE FROM angela_queue.kind_starts s
    WHERE s.started_at < coalesce(%(now)s::timestamptz, now()) - interval '1 hour'
    RETURNING 1
)
SELECT count(*) AS pruned FROM gone;
