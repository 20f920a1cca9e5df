"""Exceptions users can catch. Each one says what happened and what to do."""

from __future__ import annotations


class AngelaQueueError(Exception):
    """Base class for every error angela-queue raises on purpose."""


class ConfigError(AngelaQueueError):
    """A setting, flag or environment variable has a value we cannot use."""


class QueueFull(AngelaQueueError):
    """A bounded queue stayed full for the whole wait.

    Raised for tasks of priority >= 5; lower priorities are stored as
    ``dropped`` instead. The SQL error behind it has SQLSTATE ``AQ001``.
    """

    SQLSTATE = "AQ001"

    def __init__(self, queue: str, message: str, waited_s: float = 0.0):
        self.queue = queue
        self.waited_s = waited_s
        super().__init__(message if not waited_s else f"{message}; waited {waited_s:.1f}s for space")


class TaskNotFound(AngelaQueueError):
    """No task has that id (it may have been pruned)."""


class DatabaseUnavailable(AngelaQueueError):
    """The database could not be reached."""


class SchemaMismatch(AngelaQueueError):
    """The database's schema revision is not the one this code is written for."""


class SchemaMissing(SchemaMismatch):
    """The database has no angela_queue schema yet: run ``angela-queue migrate``."""


class TaskFailed(AngelaQueueError):
    """``Client.wait``: the task ended without a result (failed, cancelled or
    dropped). ``error`` is its final error text; ``record`` the whole row."""

    def __init__(self, task_id: int, status: str, error: str | None, record: object = None):
        self.task_id = task_id
        self.status = status
        self.error = error
        self.record = record
        first = (error or "").strip().splitlines()[0] if (error or "").strip() else "no error recorded"
        super().__init__(f"task {task_id} {status}: {first}")


class DedupKeyHeld(AngelaQueueError):
    """An unfinished task that another login enqueued holds this dedup key: the
    enqueue stored nothing, and that task is not yours to see. From
    ``enqueue_many``, ``enqueued`` lists what the call did store (None where
    a key was held so)."""

    def __init__(self, queue: str, dedup_keys: list[str], enqueued: list | None = None):
        self.queue = queue
        self.dedup_keys = dedup_keys
        self.enqueued = enqueued
        shown = ", ".join(repr(k) for k in dedup_keys[:5]) + (" ..." if len(dedup_keys) > 5 else "")
        super().__init__(f"dedup key {shown} in queue {queue!r} is held by an unfinished task another login "
                         "enqueued; nothing was stored for it")
