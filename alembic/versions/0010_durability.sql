-- angela-queue revision 0010 (Durability): queues.durability, 'durable' or
-- 'fast', and angela_queue.commit_fast, which the client's own enqueues into
-- a fast queue call to commit without waiting for the disk. Workers serving
-- only fast queues set their session's synchronous_commit off (sql/workers.sql).
--
-- Frozen once shipped. New grants are applied after this file by the
-- revision's Python (0010_roles.sql).

ALTER TABLE angela_queue.queues
    ADD COLUMN durability text NOT NULL DEFAULT 'durable'
        CONSTRAINT queue_durability_known CHECK (durability IN ('durable', 'fast'));

-- Commit the caller's current transaction with synchronous_commit = off
-- (SET LOCAL: this transaction only) when every queue named is 'fast';
-- returns whether it did. Called by the client for the enqueues whose
-- transaction it owns, never inside an application's transaction.
CREATE FUNCTION angela_queue.commit_fast(p_queues text[]) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN cardinality(p_queues) > 0 AND NOT EXISTS (
                    SELECT 1 FROM unnest(p_queues) AS u(name)
                    LEFT JOIN angela_queue.queues q ON q.name = u.name
                    WHERE q.durability IS DISTINCT FROM 'fast')
                THEN pg_catalog.set_config('synchronous_commit', 'off', true) = 'off'
                ELSE false END
$$;
