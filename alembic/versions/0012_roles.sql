-- angela-queue revision 0012: the grants its new objects need (applied when
-- the roles exist; see angela_queue/roles.py).

-- part: grants
-- Bulk enqueue (revision 0012): a producer's INSERT names any column of
-- tasks but enqueued_by, which marks a row enqueue_many built whole (the
-- insert trigger passes over such rows); the trigger sets it for every
-- other row, so nothing a producer may do changed.
REVOKE INSERT ON angela_queue.tasks FROM angela_queue_producer;
GRANT INSERT (queue, kind, payload, priority, boost, boost_rules, status, created_at, run_at, deadline,
              aging_rate, priority_key, attempts, max_attempts, timeout_s, dedup_key, worker_id, started_at,
              finished_at, result, last_error, errors, failed_at, cancel_requested_at, trace_context,
              limited_kind)
    ON angela_queue.tasks TO angela_queue_producer;
GRANT EXECUTE ON FUNCTION angela_queue.enqueue_many(jsonb, jsonb) TO angela_queue_producer, angela_queue_worker;
