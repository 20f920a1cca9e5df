-- angela-queue revision 0012, downgrade: back to exactly revision 0011.

DROP TRIGGER tasks_before_insert ON angela_queue.tasks;
CREATE TRIGGER tasks_before_insert
    BEFORE INSERT ON angela_queue.tasks
    FOR EACH ROW EXECUTE FUNCTION angela_queue.tasks_before_insert();

CREATE OR REPLACE FUNCTION angela_queue.priority_key(
    p_priority integer, p_boost integer, p_aging_rate double precision, p_run_at timestamptz
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_priority + p_boost - p_aging_rate * (extract(epoch FROM p_run_at)::double precision / 60.0)
$$;

CREATE OR REPLACE FUNCTION angela_queue.commit_fast(p_queues text[]) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN cardinality(p_queues) > 0 AND NOT EXISTS (
                    SELECT 1 FROM unnest(p_queues) AS u(name)
                    LEFT JOIN angela_queue.queues q ON q.name = u.name
                    WHERE q.durability IS DISTINCT FROM 'fast')
                THEN pg_catalog.set_config('synchronous_commit', 'off', true) = 'off'
                ELSE false END
$$;

DROP FUNCTION angela_queue.enqueue_many(jsonb, jsonb);
DROP FUNCTION angela_queue.reject_task(text, text, text, text);

-- The producer's INSERT on the whole table, as revision 0003 granted it
-- (its column grants go with it), where the role exists.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'angela_queue_producer') THEN
        REVOKE INSERT (queue, kind, payload, priority, boost, boost_rules, status, created_at, run_at, deadline,
                       aging_rate, priority_key, attempts, max_attempts, timeout_s, dedup_key, worker_id,
                       started_at, finished_at, result, last_error, errors, failed_at, cancel_requested_at,
                       trace_context, limited_kind)
            ON angela_queue.tasks FROM angela_queue_producer;
        GRANT INSERT ON angela_queue.tasks TO angela_queue_producer;
    END IF;
END
$$;
