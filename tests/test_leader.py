"""The maintenance lease: one holder at a time, renewals, expiry, takeover, resignation.

Time moves through the queries' ``now`` parameter; nothing sleeps.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import psycopg
from psycopg.rows import dict_row

from angela_queue.maintenance import lease as leader

LEASE_S = 15.0


def at(conn, seconds: float) -> dt.datetime:
    return conn.execute("SELECT now() + make_interval(secs => %s) AS t", (seconds,)).fetchone()["t"]


def test_only_one_candidate_holds_the_lease(conn):
    a, b = leader.Lease(uuid.uuid4(), LEASE_S), leader.Lease(uuid.uuid4(), LEASE_S)
    assert a.attempt(conn) is True
    assert b.attempt(conn) is False
    assert a.attempt(conn) is True          # renewal
    lease = leader.current(conn)
    assert lease["holder"] == a.holder and lease["valid"]


def test_renewal_pushes_expiry_forward_and_keeps_elected_at(conn):
    a = leader.Lease(uuid.uuid4(), LEASE_S)
    first = leader.attempt_elect(conn, a.holder, LEASE_S, now=at(conn, 0))
    later = leader.attempt_elect(conn, a.holder, LEASE_S, now=at(conn, 10))
    assert later["elected_at"] == first["elected_at"]
    assert later["expires_at"] > first["expires_at"]


def test_another_candidate_takes_over_once_the_lease_expires(conn):
    a, b = leader.Lease(uuid.uuid4(), LEASE_S), leader.Lease(uuid.uuid4(), LEASE_S)
    assert a.attempt(conn, now=at(conn, 0))
    assert not b.attempt(conn, now=at(conn, LEASE_S - 1))       # still valid
    assert b.attempt(conn, now=at(conn, LEASE_S + 1))           # a stopped renewing: b leads
    assert not a.attempt(conn, now=at(conn, LEASE_S + 2))       # a comes back: it lost the lease
    assert leader.current(conn, now=at(conn, LEASE_S + 2))["holder"] == b.holder
    assert not leader.current(conn, now=at(conn, 3 * LEASE_S))["valid"]


def test_resigning_hands_the_lease_on_at_once(conn):
    a, b = leader.Lease(uuid.uuid4(), LEASE_S), leader.Lease(uuid.uuid4(), LEASE_S)
    assert a.attempt(conn)
    assert not b.resign(conn)               # not b's to give up
    assert leader.current(conn)["holder"] == a.holder
    assert a.resign(conn)
    assert leader.current(conn) is None
    assert b.attempt(conn)


def test_candidates_racing_for_an_expired_lease_elect_exactly_one(dsn, conn):
    old = uuid.uuid4()
    assert leader.attempt_elect(conn, old, LEASE_S, now=at(conn, -100))   # long expired
    candidates = [uuid.uuid4() for _ in range(8)]
    barrier = threading.Barrier(len(candidates))
    won: list[uuid.UUID] = []

    def compete(holder: uuid.UUID) -> None:
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as c:
            barrier.wait()
            if leader.attempt_elect(c, holder, LEASE_S) is not None:
                won.append(holder)

    threads = [threading.Thread(target=compete, args=(h,)) for h in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(won) == 1
    assert leader.current(conn)["holder"] == won[0]
