-- angela-queue: named queries on angela_queue.kinds (each registered kind's
-- defaults, which the insert trigger applies to any insert that leaves a
-- column unset).

-- name: kinds_record
-- Record the defaults of the kinds a worker (or `kinds sync`) has handlers
-- for. %(kinds)s is one JSON array of kinds rows, sorted by kind: workers
-- starting together lock the rows in one order, so they cannot deadlock. A
-- row that already says the same is not rewritten (no churn, no new row
-- version per worker start).
INSERT INTO angela_queue.kinds AS k
    (kind, queue, priority, max_attempts, timeout_s, backoff_base_s, backoff_max_s, batch, updated_at, updated_by)
SELECT d.kind, d.queue, d.priority, d.max_attempts, d.timeout_s, d.backoff_base_s, d.backoff_max_s,
       coalesce(d.batch, false), now(), %(updated_by)s
FROM jsonb_to_recordset(%(kinds)s::jsonb) AS d(kind text, queue text, priority integer, max_attempts integer,
                                               timeout_s double precision, backoff_base_s double precision,
                                               backoff_max_s double precision, batch boolean)
ORDER BY d.kind
ON CONFLICT (kind) DO UPDATE
SET queue = excluded.queue, priority = excluded.priority, max_attempts = excluded.max_attempts,
    timeout_s = excluded.timeout_s, backoff_base_s = excluded.backoff_base_s,
    backoff_max_s = excluded.backoff_max_s, batch = excluded.batch,
    updated_at = excluded.updated_at, updated_by = excluded.updated_by
WHERE (k.queue, k.priority, k.max_attempts, k.timeout_s, k.backoff_base_s, k.backoff_max_s, k.batch)
      IS DISTINCT FROM
      (excluded.queue, excluded.priority, excluded.max_attempts, excluded.timeout_s, excluded.backoff_base_s,
       excluded.backoff_max_s, excluded.batch)
RETURNING k.kind;

-- name: kinds_default_queues
-- The recorded queue of each of these kinds (a kind with none: no row, or a
-- NULL queue).
SELECT k.kind, k.queue FROM angela_queue.kinds k WHERE k.kind = ANY(%(kinds)s::text[]);

-- name: kinds_list
-- Every recorded kind and its defaults.
SELECT k.kind, k.queue, k.priority, k.max_attempts, k.timeout_s, k.backoff_base_s, k.backoff_max_s, k.batch,
       k.updated_at, k.updated_by
FROM angela_queue.kinds k
ORDER BY k.kind;
