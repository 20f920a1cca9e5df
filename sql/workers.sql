-- angela-queue: named queries on angela_queue.workers (heartbeat rows) and
-- on the tasks a worker holds.

-- name: workers_register
-- A worker process announces itself, and the kinds it has handlers for,
-- before it claims anything.
INSERT INTO angela_queue.workers
    (id, supervisor_id, host, pid, queues, concurrency, status, stuck_after_s, dead_after_s, last_active, kinds)
VALUES (%(id)s, %(supervisor_id)s, %(host)s, %(pid)s, %(queues)s, %(concurrency)s, 'idle',
        %(stuck_after_s)s, %(dead_after_s)s, now(), %(kinds)s::text[])
RETURNING id, started_at;

-- name: workers_heartbeat
-- Periodic proof of life with the worker's running statistics. Guarded on a
-- live status: a row the supervisor or leader already marked stuck or dead
-- stays so (RETURNING tells the worker it has been given up on).
UPDATE angela_queue.workers
SET last_heartbeat = now(),
    status = %(status)s,
    current_tasks = %(current_tasks)s,
    tasks_completed = %(tasks_completed)s,
    tasks_failed = %(tasks_failed)s,
    avg_processing_time_ms = %(avg_processing_time_ms)s,
    last_active = coalesce(%(last_active)s, last_active)
WHERE id = %(id)s AND status IN ('active', 'idle', 'stopping')
RETURNING status;

-- name: workers_mark_stopped
-- Final word of a worker that stops on its own.
UPDATE angela_queue.workers
SET status = 'stopped', stopped_at = now(), last_heartbeat = now(), current_tasks = '{}',
    tasks_completed = %(tasks_completed)s, tasks_failed = %(tasks_failed)s,
    avg_processing_time_ms = %(avg_processing_time_ms)s
WHERE id = %(id)s
RETURNING id;

-- name: tasks_running_for_worker
-- The ids of tasks the database says this worker holds. After a lost
-- connection, a claim may have committed without its rows reaching us; the
-- worker compares this list with what it really runs.
SELECT t.id FROM angela_queue.tasks t
WHERE t.status = 'running' AND t.worker_id = %(worker_id)s;

-- name: workers_commit_mode
-- The worker's commit mode, set for its session: synchronous_commit off
-- while every queue it serves is 'fast' (see queues.durability), else the
-- session's own default (reset_val: what the server and the DSN chose).
-- Part of the poll, so a change of a queue's durability applies within a
-- poll interval; a poll that changes nothing sets nothing, and reads
-- pg_settings (every setting, a function scan) only to leave fast mode.
SELECT CASE
           WHEN NOT EXISTS (SELECT 1 FROM unnest(%(queues)s::text[]) AS u(name)
                            LEFT JOIN angela_queue.queues q ON q.name = u.name
                            WHERE q.durability IS DISTINCT FROM 'fast') THEN
               CASE WHEN pg_catalog.current_setting('synchronous_commit') = 'off' THEN 'off'
                    ELSE pg_catalog.set_config('synchronous_commit', 'off', false) END
           WHEN pg_catalog.current_setting('synchronous_commit') = 'off' THEN
               pg_catalog.set_config('synchronous_commit',
                   (SELECT s.reset_val FROM pg_catalog.pg_settings s WHERE s.name = 'synchronous_commit'), false)
           ELSE pg_catalog.current_setting('synchronous_commit')
       END AS synchronous_commit;
