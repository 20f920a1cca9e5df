-- angela-queue: named queries on angela_queue.periodic (tasks the
-- maintenance leader enqueues on a schedule).

-- name: periodic_record
-- Record the schedules a worker (or `kinds sync`) declares with
-- @task(cron=/every=). %(rows)s is one JSON array, sorted by name. A row
-- declared by hand (declared_in = 'sql') is left alone; a paused one stays
-- paused. A changed schedule starts again at its next slot (last_slot
-- cleared: the new schedule's past slots are not run) and clears the
-- leader's error. Unchanged rows are not rewritten.
INSERT INTO angela_queue.periodic AS p (name, kind, cron, every_s, timezone, declared_in)
SELECT d.name, d.kind, d.cron, d.every_s, d.timezone, 'code'
FROM jsonb_to_recordset(%(rows)s::jsonb) AS d(name text, kind text, cron text, every_s double precision,
                                              timezone text)
ORDER BY d.name
ON CONFLICT (name) DO UPDATE
SET kind = excluded.kind, cron = excluded.cron, every_s = excluded.every_s, timezone = excluded.timezone,
    last_slot = NULL, next_slot = NULL, error = NULL, updated_at = now()
WHERE p.declared_in = 'code'
  AND (p.kind, p.cron, p.every_s, p.timezone) IS DISTINCT FROM
      (excluded.kind, excluded.cron, excluded.every_s, excluded.timezone)
RETURNING p.name;

-- name: periodic_forget
-- The schedules the code no longer declares: a row written by a worker
-- (declared_in = 'code') for one of %(kinds)s, the kinds this app has
-- handlers for, whose name it no longer declares (%(names)s) is deleted,
-- so a schedule removed from the code stops. Rows declared by hand stay.
DELETE FROM angela_queue.periodic p
WHERE p.declared_in = 'code' AND p.kind = ANY(%(kinds)s::text[]) AND NOT (p.name = ANY(%(names)s::text[]))
RETURNING p.name;

-- name: periodic_remove
-- Delete one periodic task (`periodic remove`). No row: no such periodic
-- task. A code-declared one comes back when a worker whose code still
-- declares it starts.
DELETE FROM angela_queue.periodic p WHERE p.name = %(name)s RETURNING p.name, p.declared_in;

-- name: periodic_schedules
-- Every periodic row the leader looks at in a round (paused ones too: their
-- next slot is still shown).
SELECT p.name, p.kind, p.cron, p.every_s, p.timezone, p.paused_at, p.last_slot, p.next_slot, p.error
FROM angela_queue.periodic p
ORDER BY p.name;

-- name: periodic_fire
-- Enqueue one slot of one periodic task, once: the row is locked and the
-- slot taken only if it is later than the last one, in the same statement
-- that moves last_slot on, so two leaders (a lease handed over, a restart)
-- can never enqueue a slot twice. The dedup key names the slot too; a task
-- still holding it means the slot is already there (no second row).
WITH due AS MATERIALIZED (
    SELECT p.name, p.kind, p.payload, p.queue, p.priority
    FROM angela_queue.periodic p
    WHERE p.name = %(name)s AND p.paused_at IS NULL AND (p.last_slot IS NULL OR p.last_slot < %(slot)s)
    FOR UPDATE
), enqueued AS (
    INSERT INTO angela_queue.tasks (kind, payload, queue, priority, dedup_key)
    SELECT d.kind, d.payload, d.queue, d.priority, %(dedup_key)s FROM due d
    ON CONFLICT (queue, dedup_key) WHERE dedup_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running')
    DO NOTHING
    RETURNING id, status, last_error
)
UPDATE angela_queue.periodic p
SET last_slot = %(slot)s, last_task_id = coalesce((SELECT e.id FROM enqueued e), p.last_task_id),
    next_slot = %(next_slot)s, error = NULL
FROM due d
WHERE p.name = d.name
RETURNING p.name, (SELECT e.id FROM enqueued e) AS task_id, (SELECT e.status FROM enqueued e) AS task_status,
          (SELECT e.last_error FROM enqueued e) AS task_error;

-- name: periodic_arm
-- A schedule seen for the first time starts at its next slot: the latest
-- slot already past is marked as done without enqueueing it.
UPDATE angela_queue.periodic p
SET last_slot = %(slot)s, next_slot = %(next_slot)s, error = NULL
WHERE p.name = %(name)s AND p.last_slot IS NULL
RETURNING p.name;

-- name: periodic_set_next
-- The next slot due, for status and the dashboard (a paused row's too).
UPDATE angela_queue.periodic p
SET next_slot = %(next_slot)s, error = NULL
WHERE p.name = %(name)s AND (p.next_slot IS DISTINCT FROM %(next_slot)s OR p.error IS NOT NULL);

-- name: periodic_set_error
-- Why the leader cannot schedule a row (its expression or time zone), shown
-- by status; written once, not every round.
UPDATE angela_queue.periodic p
SET error = %(error)s, next_slot = NULL
WHERE p.name = %(name)s AND p.error IS DISTINCT FROM %(error)s;

-- name: periodic_status
-- Every periodic task, its schedule, last and next run (status, the CLI).
SELECT s.name, s.kind, s.schedule, s.timezone, s.paused, s.declared_in, s.last_slot, s.last_task_id,
       s.last_status, s.next_slot, s.error
FROM angela_queue.periodic_status s
ORDER BY s.name;

-- name: periodic_pause
-- Pause one periodic task (no slot is enqueued while paused; on resume, the
-- latest slot missed meanwhile is). No row: no such periodic task.
UPDATE angela_queue.periodic p SET paused_at = coalesce(p.paused_at, now())
WHERE p.name = %(name)s
RETURNING p.name, p.paused_at;

-- name: periodic_resume
-- Resume one periodic task. No row: no such periodic task.
UPDATE angela_queue.periodic p SET paused_at = NULL
WHERE p.name = %(name)s
RETURNING p.name;

-- name: periodic_clock
-- The database's clock: every leader computes slots from the same one,
-- whatever its host's clock says.
SELECT clock_timestamp() AS now;
