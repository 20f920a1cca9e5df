"""Which ready low-priority batches start at a turn (Worker._take_ready and
_start_batches), as pure bookkeeping: a Worker that never connects."""

from __future__ import annotations

import time

import pytest

from angela_queue import task
from angela_queue.config import load_settings
from angela_queue.worker.execution import ClaimedTask
from angela_queue.worker.loop import Batch, Worker


def held(task_id: int, effective: float = 2.0) -> ClaimedTask:
    return ClaimedTask(task_id, "default", "plain_kind", "{}", 2, 0, 5, None, effective_priority=effective)


@pytest.fixture
def worker():
    settings = load_settings({"dsn": "postgresql://nobody@127.0.0.1:1/none", "concurrency": 2}, environ={})
    w = Worker(settings, in_process=True)
    return w


def ready(w: Worker, *batches: list[ClaimedTask]) -> list[Batch]:
    made = [Batch("default", "plain_kind", list(tasks), ready_at=time.monotonic()) for tasks in batches]
    w.ready.extend(made)
    return made


def test_a_plain_kinds_batch_gives_one_task_per_turn_and_reserves_no_slot_while_it_runs(worker):
    [batch] = ready(worker, [held(1), held(2), held(3)])
    taken = worker._take_ready()
    assert [(origin is batch, [t.id for t in part.tasks]) for origin, part in taken] == [(True, [1])]
    assert batch.part_running and [t.id for t in batch.tasks] == [2, 3]
    # While its task runs it reserves nothing more, and gives nothing more.
    assert worker._reserved_by_batches() == 0 and worker._take_ready() == []


def test_the_best_next_task_starts_first_whatever_became_ready_first(worker):
    low, aged = ready(worker, [held(1, 2.0), held(2, 2.0)], [held(3, 9.5), held(4, 2.0)])
    worker.settings = load_settings({"dsn": "postgresql://x@h:1/d", "concurrency": 1}, environ={})
    [(origin, part)] = worker._take_ready()
    assert origin is aged and [t.id for t in part.tasks] == [3]


def test_a_failed_trip_gives_every_part_back_in_place(worker):
    first, second = ready(worker, [held(1), held(2)], [held(3)])
    taken = worker._take_ready()
    assert [t.id for _, part in taken for t in part.tasks] == [1, 3]
    worker._give_back_ready(taken)
    assert [[t.id for t in b.tasks] for b in worker.ready] == [[1, 2], [3]]
    assert not first.part_running and list(worker.ready) == [first, second]


def test_a_part_that_did_not_start_sends_its_whole_batch_back(worker):
    [batch] = ready(worker, [held(1), held(2), held(3)])
    for task in batch.tasks:
        worker.held[task.id] = task
    taken = worker._take_ready()
    worker._start_batches(taken, started_rows=[])     # its queue was paused: start_many started nothing
    assert sorted(worker.to_release) == [1, 2, 3]
    assert list(worker.ready) == [] and worker.held == {} and not batch.part_running


def test_a_batch_handlers_batch_starts_whole_and_leaves_ready_once_started(worker, clean_registry):
    @task("whole_kind", batch=True)
    def whole(payloads):
        return None
    batch = Batch("default", "whole_kind", [held(1), held(2)], ready_at=time.monotonic())
    worker.ready.append(batch)
    [(origin, part)] = worker._take_ready()
    assert part is origin is batch and batch in worker.ready     # in flight: still in its place
    worker._start_batches([], started_rows=[])                   # (nothing taken: nothing changes)
    assert batch in worker.ready
