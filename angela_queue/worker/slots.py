"""How much a worker claims at a turn: a pure function of its slots.

A worker runs at most ``concurrency`` tasks in its ordinary slots, plus
``critical_slots`` more that only critical work may take (effective
priority >= 9, the critical tier). Without them a critical task that
arrives while every slot is busy waits for one to free: with 20 ms jobs and
four slots that is most of its wait. With them it starts at once, and
ordinary work loses nothing: it never runs in a critical slot, and the
ordinary slots stay ``concurrency``. A critical task claimed while an
ordinary slot is free takes that slot (it is what the worker runs next).

Hazard: probing for critical work at every turn would cost a claim per
insert under load. The critical slots are filled only when there may be
something for them: a NOTIFY on 'angela_queue_critical' (sent by the insert
trigger, revision 0011) or the poll, the backstop for delayed and retried
critical tasks that become due without an insert.

The worker's loop (loop.py) calls :func:`claim_size`; the tests call it
directly, like ``supervisor/scaling.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Below this base priority, tasks are claimed and run in batches (the plan).
BATCH_BELOW_PRIORITY = 5
# The critical tier (logs.tier_of): what a critical slot may take.
CRITICAL_AT = 9.0


@dataclass(frozen=True)
class Claim:
    """One claim statement's size: up to ``limit`` tasks of effective priority
    at least ``min_effective`` (None: any). ``critical``: for the critical
    slots, so each task starts at its claim and runs alone, never collected
    into a batch."""

    limit: int
    min_effective: float | None = None
    critical: bool = False

    @property
    def critical_only(self) -> bool:
        """Takes nothing but critical work: into the critical slots, or into
        ordinary ones ahead of ready batches (:func:`critical_goes_first`)."""
        return self.min_effective is not None and self.min_effective >= CRITICAL_AT


NOTHING = Claim(0)


def critical_goes_first(*, critical_slots: int, critical_running: int, critical_wanted: bool,
                        ready: list[float], overdue: bool = False) -> bool:
    """Whether this turn's free ordinary slots go to critical work before the
    ready low-priority batches start in them.

    A ready batch starts in the next free slot; with every critical slot busy
    (a critical job is 20 ms, and they come in bursts) a critical task that
    may be waiting (``critical_wanted``) would then wait a whole job more for
    the slot after. So the turn claims critical work first, and the batches
    start at the next turn, one round trip later (the plan: batching never
    delays a higher-priority task). ``ready``: the effective priority of each
    startable ready batch's next task; one that aged into the critical tier
    goes first itself. Nothing ready: the turn's own claim takes the best
    work first anyway. ``overdue``: a ready batch was passed over long
    enough (its held tasks do not age): it starts now, critical work or not.
    With no critical slots (0), every critical task needs an ordinary slot,
    so this holds all the more.
    """
    return (critical_wanted and not overdue and critical_running >= critical_slots and bool(ready)
            and max(ready) < CRITICAL_AT)


def claim_size(*, concurrency: int, critical_slots: int, running: int, critical_running: int = 0,
               starting: int = 0, batches: int = 0, critical_wanted: bool = False,
               critical_first: bool = False, stopping: bool = False) -> Claim:
    """What to claim now.

    ``running``: jobs in ordinary slots; ``critical_running``: in critical
    ones; ``starting``: ready batches this turn starts, an ordinary slot
    each; ``batches``: low-priority batches collecting or waiting for a slot.
    Each of those reserves the slot it will run in, so a worker never holds
    more than it can run: without this, low-priority tasks of many kinds
    would each start a batch that takes no slot, and one worker would hoard
    the whole low backlog. When every free slot is reserved, the worker still
    takes one task of effective priority >= 5, so collection never delays
    work that outranks it.

    Every ordinary slot busy: the free critical slots, if critical work may
    be waiting (``critical_wanted``). ``critical_first`` (see
    :func:`critical_goes_first`): the free ordinary slots, for critical work only.
    """
    if stopping:
        return NOTHING
    free = concurrency - running - starting
    if critical_first and free > 0:
        return Claim(free, CRITICAL_AT)
    if free > batches:
        return Claim(free - batches)
    if free > 0:
        return Claim(1, float(BATCH_BELOW_PRIORITY))
    headroom = critical_slots - critical_running
    if headroom > 0 and critical_wanted:
        return Claim(headroom, CRITICAL_AT, critical=True)
    return NOTHING
