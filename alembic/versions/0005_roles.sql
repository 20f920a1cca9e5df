-- angela-queue revision 0005: the grants its new objects need (applied when
-- the roles exist; see angela_queue/roles.py).

-- part: grants
-- Kinds' defaults (revision 0005): workers record them; a producer reads
-- them to find the queue of a deduplicated task it enqueues without naming
-- one; readers see them.
GRANT SELECT ON angela_queue.kinds TO angela_queue_producer, angela_queue_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON angela_queue.kinds TO angela_queue_worker;
