-- angela-queue revision 0011, downgrade: back to exactly revision 0010.

CREATE OR REPLACE FUNCTION angela_queue.tasks_after_insert_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    FOR q IN SELECT DISTINCT n.queue FROM new_tasks n WHERE n.status = 'queued' LOOP
        PERFORM pg_notify('angela_queue_insert', q);
    END LOOP;
    RETURN NULL;
END
$$;
