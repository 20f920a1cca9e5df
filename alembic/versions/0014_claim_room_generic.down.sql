-- angela-queue revision 0014, downgrade: back to exactly revision 0013.

CREATE OR REPLACE FUNCTION angela_queue.claim_room(p_kind text, p_wanted integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    k        record;
    v_room   integer := p_wanted;
    v_count  integer;
BEGIN
    SELECT l.concurrency, l.rate_limit, l.rate_period_s INTO k
    FROM angela_queue.kinds l
    WHERE l.kind = p_kind
    FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    IF k.concurrency IS NOT NULL THEN
        SELECT count(*) INTO v_count FROM angela_queue.tasks t
        WHERE t.status = 'running' AND t.limited_kind = p_kind;
        v_room := least(v_room, k.concurrency - v_count);
    END IF;
    IF k.rate_limit IS NOT NULL AND v_room > 0 THEN
        -- The clock now, after the lock, not the transaction's start: a claim
        -- whose transaction began a while ago must not date the window back
        -- (the claim stamps its starts with clock_timestamp() too).
        DELETE FROM angela_queue.kind_starts s
        WHERE s.kind = p_kind AND s.started_at <= clock_timestamp() - make_interval(secs => k.rate_period_s);
        SELECT count(*) INTO v_count FROM angela_queue.kind_starts s WHERE s.kind = p_kind;
        v_room := least(v_room, k.rate_limit - v_count);
    END IF;
    RETURN greatest(v_room, 0);
END
$$;
