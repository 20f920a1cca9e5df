-- angela-queue revision 0007: the grants its new objects need (applied when
-- the roles exist; see angela_queue/roles.py).

-- part: grants
-- History (revision 0007): the leader writes it; readers chart it.
GRANT SELECT, INSERT, UPDATE, DELETE ON angela_queue.stats_minute, angela_queue.depth_minute,
    angela_queue.stats_progress TO angela_queue_worker;
GRANT SELECT ON angela_queue.stats_minute, angela_queue.depth_minute, angela_queue.stats_progress
    TO angela_queue_reader;
