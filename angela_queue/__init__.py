"""angela-queue: a durable, priority-aware job queue for Python, backed by PostgreSQL.

    from angela_queue import task

    @task("send_email", priority=7)
    def send_email(to: str, subject: str) -> None: ...

    send_email_id = angela_queue.enqueue("send_email", {"to": "a@b.c", "subject": "hi"})
"""

from .client import AsyncClient, Client, cancel, enqueue, enqueue_many
from .config import PROFILES, Settings, load_settings
from .errors import (AngelaQueueError, ConfigError, DatabaseUnavailable, DedupKeyHeld, QueueFull, SchemaMismatch,
                     SchemaMissing, TaskFailed, TaskNotFound)
from .handler import Discard, Retry, Snooze, TaskContext, current_task
from .registry import TaskDefinition, task
from .tasks import CancelResult, EnqueuedTask, RetryResult, TaskRecord, TaskSpec

__version__ = "0.1.0"

__all__ = [
    "AngelaQueueError", "AsyncClient", "CancelResult", "Client", "ConfigError", "DatabaseUnavailable", "DedupKeyHeld",
    "Discard",
    "EnqueuedTask", "PROFILES", "QueueFull", "Retry", "RetryResult", "SchemaMismatch", "SchemaMissing", "Settings",
    "Snooze", "TaskContext", "TaskDefinition", "TaskFailed", "TaskNotFound", "TaskRecord", "TaskSpec",
    "cancel", "current_task", "enqueue", "enqueue_many", "load_settings", "task",
]
