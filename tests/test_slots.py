"""The worker's claim sizes as a pure function (worker/slots.py): no database."""

from __future__ import annotations

import pytest

from angela_queue.worker.slots import BATCH_BELOW_PRIORITY, CRITICAL_AT, NOTHING, Claim, claim_size, critical_goes_first


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



def first(**kw):
    base = {"critical_slots": 3, "critical_running": 3, "critical_wanted": True, "ready": [3.0]}
    return critical_goes_first(**{**base, **kw})


def test_critical_work_goes_before_a_ready_batch_only_when_every_critical_slot_is_busy():
    assert first()
    assert not first(critical_running=2)        # a critical slot is free: it takes it there
    assert not first(critical_wanted=False)     # nothing critical may be waiting
    assert not first(ready=[])                  # no batch to hold back: the claim orders itself
    assert first(critical_slots=0, critical_running=0)


def test_a_ready_task_aged_into_the_critical_tier_is_not_held_back():
    assert not first(ready=[3.0, CRITICAL_AT + 13])
    assert first(ready=[3.0, CRITICAL_AT - 0.5])


def test_critical_first_takes_every_free_ordinary_slot_for_critical_work_only():
    claim = size(running=2, batches=1, critical_first=True, critical_slots=3, critical_running=3)
    assert claim == Claim(2, CRITICAL_AT) and claim.critical_only and not claim.critical
    assert size(running=4, critical_first=True) is NOTHING
    assert size(stopping=True, critical_first=True) is NOTHING


def test_only_a_claim_at_the_critical_line_is_critical_only():
    assert Claim(1, CRITICAL_AT, critical=True).critical_only
    assert not Claim(1, float(BATCH_BELOW_PRIORITY)).critical_only
    assert not Claim(3).critical_only


def test_a_ready_batch_passed_over_long_enough_starts_whatever_waits():
    assert not first(overdue=True)
