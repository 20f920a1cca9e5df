-- angela-queue revision 0010, downgrade: back to exactly revision 0009.

DROP FUNCTION angela_queue.commit_fast(text[]);
ALTER TABLE angela_queue.queues DROP COLUMN durability;
