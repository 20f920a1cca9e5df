-- angela-queue revision 0011 (Critical wake-up): the insert trigger also
-- notifies 'angela_queue_critical' (payload: the queue name) for the queues
-- a statement gave a queued task of priority >= 9 (the critical tier). A
-- worker with every ordinary slot busy listens for it to fill its critical
-- slot (worker/slots.py); 'angela_queue_insert' is sent as before.
--
-- Frozen once shipped.

CREATE OR REPLACE FUNCTION angela_queue.tasks_after_insert_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q text;
    critical boolean;
BEGIN
    FOR q, critical IN
        SELECT n.queue, bool_or(n.priority >= 9) FROM new_tasks n WHERE n.status = 'queued' GROUP BY n.queue
    LOOP
        PERFORM pg_notify('angela_queue_insert', q);
        IF critical THEN
            PERFORM pg_notify('angela_queue_critical', q);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
