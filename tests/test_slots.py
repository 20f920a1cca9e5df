"""The worker's claim sizes as a pure function (worker/slots.py): no database."""

from __future__ import annotations

import pytest

from angela_queue.worker.slots import BATCH_BELOW_PRIORITY, CRITICAL_AT, NOTHING, Claim, claim_size


def size(**kw):
    base = {"concurrency": 4, "critical_slots": 1, "running": 0}
    return claim_size(**{**base, **kw})


def test_free_ordinary_slots_claim_anything():
    assert size(running=1) == Claim(3)


def test_a_starting_batch_takes_its_slot():
    assert size(running=1, starting=2) == Claim(1)


def test_each_waiting_batch_reserves_a_slot():
    assert size(running=1, batches=1) == Claim(2)


def test_every_free_slot_reserved_still_takes_one_task_that_outranks_a_batch():
    assert size(running=2, batches=2) == Claim(1, float(BATCH_BELOW_PRIORITY))
    assert size(running=2, batches=5) == Claim(1, float(BATCH_BELOW_PRIORITY))


def test_every_ordinary_slot_busy_claims_nothing_unless_critical_work_may_wait():
    assert size(running=4) is NOTHING
    assert size(running=4, critical_wanted=True) == Claim(1, CRITICAL_AT, critical=True)


def test_the_critical_slots_hold_only_as_many_as_are_free():
    assert size(running=4, critical_slots=3, critical_running=1, critical_wanted=True) == \
        Claim(2, CRITICAL_AT, critical=True)
    assert size(running=4, critical_slots=1, critical_running=1, critical_wanted=True) is NOTHING


def test_a_busy_critical_slot_never_takes_an_ordinary_slot():
    # Ordinary slots are counted apart: a critical job does not shrink them.
    assert size(running=3, critical_running=1) == Claim(1)


def test_no_critical_slots_means_a_critical_task_waits_for_an_ordinary_one():
    assert size(running=4, critical_slots=0, critical_wanted=True) is NOTHING


def test_the_critical_tier_is_nine_and_up():
    from angela_queue.logs import tier_of
    assert tier_of(int(CRITICAL_AT)) == "critical" and tier_of(int(CRITICAL_AT) - 1) != "critical"


@pytest.mark.parametrize("kw", [{"stopping": True}, {"stopping": True, "running": 4, "critical_wanted": True}])
def test_a_stopping_worker_claims_nothing(kw):
    assert size(**kw) is NOTHING

