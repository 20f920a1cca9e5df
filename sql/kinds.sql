-- angela-queue: named queries on angela_queue.kinds (each registered kind's
-- defaults, which the insert trigger applies to any insert that leaves a
-- column unset).

-- name: kinds_record
-- Record the defaults and limits of the kinds a worker (or `kinds sync`) has
-- handlers for. %(kinds)s is one JSON array of kinds rows, sorted by kind:
-- workers starting together lock the rows in one order, so they cannot
-- deadlock. A row that already says the same is not rewritten (no churn, no
-- new row version per worker start). A limit the code leaves unset keeps
-- what the row has: an operator's throttle set in SQL outlives a deploy.
INSERT INTO angela_queue.kinds AS k
    (kind, queue, priority, max_attempts, timeout_s, backoff_base_s, backoff_max_s, batch,
     concurrency, rate_limit, rate_period_s, updated_at, updated_by)
SELECT d.kind, d.queue, d.priority, d.max_attempts, d.timeout_s, d.backoff_base_s, d.backoff_max_s,
       coalesce(d.batch, false), d.concurrency, d.rate_limit, d.rate_period_s, now(), %(updated_by)s
FROM jsonb_to_recordset(%(kinds)s::jsonb) AS d(kind text, queue text, priority integer, max_attempts integer,
                                               timeout_s double precision, backoff_base_s double precision,
                                               backoff_max_s double precision, batch boolean,
                                               concurrency integer, rate_limit integer, rate_period_s integer)
ORDER BY d.kind
ON CONFLICT (kind) DO UPDATE
SET queue = excluded.queue, priority = excluded.priority, max_attempts = excluded.max_attempts,
    timeout_s = excluded.timeout_s, backoff_base_s = excluded.backoff_base_s,
    backoff_max_s = excluded.backoff_max_s, batch = excluded.batch,
    concurrency = coalesce(excluded.concurrency, k.concurrency),
    rate_limit = coalesce(excluded.rate_limit, k.rate_limit),
    rate_period_s = coalesce(excluded.rate_period_s, k.rate_period_s),
    updated_at = excluded.updated_at, updated_by = excluded.updated_by
WHERE (k.queue, k.priority, k.max_attempts, k.timeout_s, k.backoff_base_s, k.backoff_max_s, k.batch,
       k.concurrency, k.rate_limit, k.rate_period_s)
      IS DISTINCT FROM
      (excluded.queue, excluded.priority, excluded.max_attempts, excluded.timeout_s, excluded.backoff_base_s,
       excluded.backoff_max_s, excluded.batch, coalesce(excluded.concurrency, k.concurrency),
       coalesce(excluded.rate_limit, k.rate_limit), coalesce(excluded.rate_period_s, k.rate_period_s))
RETURNING k.kind;

-- name: kinds_default_queues
-- The recorded queue of each of these kinds (a kind with none: no row, or a
-- NULL queue).
SELECT k.kind, k.queue FROM angela_queue.kinds k WHERE k.kind = ANY(%(kinds)s::text[]);

-- name: kinds_list
-- Every recorded kind and its defaults.
SELECT k.kind, k.queue, k.priority, k.max_attempts, k.timeout_s, k.backoff_base_s, k.backoff_max_s, k.batch,
       k.concurrency, k.rate_limit, k.rate_period_s, k.updated_at, k.updated_by
FROM angela_queue.kinds k
ORDER BY k.kind;

-- name: kinds_set_limits
-- Set or lift a kind's global limits by hand (`kinds limit`), recording the
-- kind if no worker has yet. NULL lifts that limit. Claims enforce a new
-- limit from their next turn; a worker claiming through
-- tasks_claim_unlimited (no limit was in play at its last poll) passes over
-- the kind's tasks until its next poll, which puts it back on tasks_claim.
INSERT INTO angela_queue.kinds AS k (kind, concurrency, rate_limit, rate_period_s, updated_by)
VALUES (%(kind)s, %(concurrency)s, %(rate_limit)s, %(rate_period_s)s, %(updated_by)s)
ON CONFLICT (kind) DO UPDATE
SET concurrency = CASE WHEN %(set_concurrency)s THEN excluded.concurrency ELSE k.concurrency END,
    rate_limit = CASE WHEN %(set_rate)s THEN excluded.rate_limit ELSE k.rate_limit END,
    rate_period_s = CASE WHEN %(set_rate)s THEN excluded.rate_period_s ELSE k.rate_period_s END,
    updated_at = now(), updated_by = excluded.updated_by
RETURNING k.kind, k.concurrency, k.rate_limit, k.rate_period_s;
