-- angela-queue revision 0004: the grants its new objects need (applied when
-- the roles exist; see angela_queue/roles.py).

-- part: grants
-- The operator's views (revision 0004). Retrying, pausing, resuming and
-- purging run with the caller's rights: the worker role's UPDATE and DELETE
-- on tasks and queues allow them; the reader's SELECT does not.
GRANT SELECT ON angela_queue.tier_sla, angela_queue.throughput, angela_queue.recent_failures,
    angela_queue.kind_stats TO angela_queue_worker, angela_queue_reader;
