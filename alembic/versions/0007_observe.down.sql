-- angela-queue revision 0007, downgrade: back to exactly revision 0006.

DROP TABLE angela_queue.stats_progress;
DROP TABLE angela_queue.depth_minute;
DROP TABLE angela_queue.stats_minute;
DROP AGGREGATE angela_queue.stats_buckets(double precision);
DROP FUNCTION angela_queue.stats_bucket_step(bigint[], double precision);
DROP FUNCTION angela_queue.stats_bucket_bounds_ms();
DROP INDEX angela_queue.tasks_created_brin;
ALTER TABLE angela_queue.tasks DROP COLUMN trace_context;
