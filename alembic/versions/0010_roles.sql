-- angela-queue revision 0010: the grants its new objects need (applied when
-- the roles exist; see angela_queue/roles.py).

-- part: grants
-- Durability (revision 0010): a producer's client reads whether its queue is
-- fast (angela_queue.commit_fast), and nothing else of queues.
GRANT SELECT (name, durability) ON angela_queue.queues TO angela_queue_producer;
