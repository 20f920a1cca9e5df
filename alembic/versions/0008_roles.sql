-- angela-queue revision 0008: the grants its new objects need (applied when
-- the roles exist; see angela_queue/roles.py).

-- part: grants
-- Schedule (revision 0008): the leader enqueues periodic tasks and workers
-- record them; the claim counts rate-limited starts and takes each limited
-- kind's room (claim_room, with the worker's own rights).
GRANT SELECT, INSERT, UPDATE, DELETE ON angela_queue.periodic, angela_queue.kind_starts TO angela_queue_worker;
GRANT SELECT ON angela_queue.periodic, angela_queue.periodic_status, angela_queue.kind_starts
    TO angela_queue_worker, angela_queue_reader;
REVOKE EXECUTE ON FUNCTION angela_queue.claim_room(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION angela_queue.claim_room(text, integer) TO angela_queue_worker;
