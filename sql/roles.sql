-- angela-queue: the three group roles and what each may do. Part of the
-- canonical schema (applied after views.sql).
--
-- Roles are cluster-wide; grants are per database. `angela-queue migrate`
-- creates the roles when its login may (CREATEROLE), and grants to them when
-- they exist; `angela-queue roles --sql` prints this file for a DBA to run
-- where it may not (a managed Postgres): the first part as a role with
-- CREATEROLE, the second as the schema's owner. Logins get a role with
--     CREATE ROLE billing_web LOGIN PASSWORD '...' IN ROLE angela_queue_producer;
--
-- * angela_queue_producer: enqueue (a plain INSERT into tasks, or the
--   Python client and CLI), read and cancel its own tasks. Row-level
--   security (tasks_visible) hides every task another login enqueued; it
--   cannot UPDATE or DELETE tasks, nor touch queues or boost rules. The
--   insert trigger and the dedup lookup run as the owner (SECURITY DEFINER).
-- * angela_queue_worker: everything a worker and a supervisor do: claim,
--   complete, heartbeats, leader maintenance, pruning, queue bounds. No DDL.
-- * angela_queue_reader: read everything (the views, `status`, the
--   dashboard); change nothing.

-- part: create_roles
CREATE ROLE angela_queue_producer NOLOGIN;
CREATE ROLE angela_queue_worker NOLOGIN;
CREATE ROLE angela_queue_reader NOLOGIN;

-- part: grants
GRANT USAGE ON SCHEMA angela_queue TO angela_queue_producer, angela_queue_worker, angela_queue_reader;
-- The schema-revision check every process makes at start.
GRANT SELECT ON angela_queue.alembic_version TO angela_queue_producer, angela_queue_worker, angela_queue_reader;

GRANT SELECT ON angela_queue.tasks TO angela_queue_producer;
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
REVOKE EXECUTE ON FUNCTION angela_queue.find_unfinished_task(text, text), angela_queue.cancel_task(bigint)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION angela_queue.find_unfinished_task(text, text), angela_queue.cancel_task(bigint)
    TO angela_queue_producer, angela_queue_worker;

GRANT SELECT, INSERT, UPDATE, DELETE ON angela_queue.tasks, angela_queue.workers, angela_queue.supervisors,
    angela_queue.leader TO angela_queue_worker;
GRANT SELECT, INSERT, UPDATE ON angela_queue.queues TO angela_queue_worker;
GRANT SELECT ON angela_queue.boost_rules, angela_queue.queued_tasks, angela_queue.queue_depth,
    angela_queue.worker_health, angela_queue.sla_attainment TO angela_queue_worker;

GRANT SELECT ON angela_queue.tasks, angela_queue.queues, angela_queue.boost_rules, angela_queue.workers,
    angela_queue.supervisors, angela_queue.leader, angela_queue.queued_tasks, angela_queue.queue_depth,
    angela_queue.worker_health, angela_queue.sla_attainment TO angela_queue_reader;

-- The operator's views (revision 0004). Retrying, pausing, resuming and
-- purging run with the caller's rights: the worker role's UPDATE and DELETE
-- on tasks and queues allow them; the reader's SELECT does not.
GRANT SELECT ON angela_queue.tier_sla, angela_queue.throughput, angela_queue.recent_failures,
    angela_queue.kind_stats TO angela_queue_worker, angela_queue_reader;

-- Kinds' defaults (revision 0005): workers record them; a producer reads
-- them to find the queue of a deduplicated task it enqueues without naming
-- one; readers see them.
GRANT SELECT ON angela_queue.kinds TO angela_queue_producer, angela_queue_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON angela_queue.kinds TO angela_queue_worker;

-- History (revision 0007): the leader writes it; readers chart it.
GRANT SELECT, INSERT, UPDATE, DELETE ON angela_queue.stats_minute, angela_queue.depth_minute,
    angela_queue.stats_progress TO angela_queue_worker;
GRANT SELECT ON angela_queue.stats_minute, angela_queue.depth_minute, angela_queue.stats_progress
    TO angela_queue_reader;

-- Schedule (revision 0008): the leader enqueues periodic tasks and workers
-- record them; the claim counts rate-limited starts and takes each limited
-- kind's room (claim_room, with the worker's own rights).
GRANT SELECT, INSERT, UPDATE, DELETE ON angela_queue.periodic, angela_queue.kind_starts TO angela_queue_worker;
GRANT SELECT ON angela_queue.periodic, angela_queue.periodic_status, angela_queue.kind_starts
    TO angela_queue_worker, angela_queue_reader;
REVOKE EXECUTE ON FUNCTION angela_queue.claim_room(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION angela_queue.claim_room(text, integer) TO angela_queue_worker;

-- Durability (revision 0010): a producer's client reads whether its queue is
-- fast (tasks_enqueue tests it inline), and nothing else of queues.
GRANT SELECT (name, durability) ON angela_queue.queues TO angela_queue_producer;
