-- angela-queue: the maintenance lease, kept in angela_queue.leader.
--
-- One row per lease name. The holder renews it (every supervisor heartbeat)
-- by pushing expires_at forward; anyone may take it once expires_at has
-- passed. Times are the database's clock, never a host's: hosts whose clocks
-- disagree still agree on who leads. %(now)s lets tests move time instead of
-- sleeping; NULL means now().

-- name: leader_attempt_elect
-- Take the lease if it is free or expired, or renew it if we hold it.
-- Returns the lease row when we hold it afterwards, no row otherwise.
-- Hazard: two candidates racing for an expired lease. INSERT ... ON CONFLICT
-- DO UPDATE locks the row; the loser waits, then re-checks the WHERE against
-- the winner's fresh row (holder differs, not expired) and updates nothing.
INSERT INTO angela_queue.leader AS l (name, holder, elected_at, expires_at)
VALUES (%(name)s, %(holder)s, coalesce(%(now)s::timestamptz, now()),
        coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_s)s::double precision))
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder,
    elected_at = CASE WHEN l.holder = EXCLUDED.holder THEN l.elected_at ELSE EXCLUDED.elected_at END,
    expires_at = EXCLUDED.expires_at
WHERE l.holder = EXCLUDED.holder OR l.expires_at <= EXCLUDED.elected_at
RETURNING l.name, l.holder, l.elected_at, l.expires_at;

-- name: leader_resign
-- Give the lease up (clean shutdown) so another candidate takes over at its
-- next attempt instead of waiting for the lease to expire. Guarded on the
-- holder: a lease someone else took meanwhile is left alone.
DELETE FROM angela_queue.leader
WHERE name = %(name)s AND holder = %(holder)s
RETURNING name, holder;

-- name: leader_get
-- The lease as it stands, and whether it is still valid at %(now)s.
SELECT l.name, l.holder, l.elected_at, l.expires_at,
       l.expires_at > coalesce(%(now)s::timestamptz, now()) AS valid
FROM angela_queue.leader l
WHERE l.name = %(name)s;
