"""Waiting for a task's outcome: ``Client.wait`` and ``AsyncClient.wait``.

Every statement that finishes tasks sends one NOTIFY on angela_queue_done
naming them (angela_queue.notify_done). A client keeps one listening
connection of its own, opened at its first wait, and wakes the waiters of
the ids each notification names ("*": all of them). A waiter registers
before it reads the task's status, so an outcome between the read and the
wait is not missed; a re-read every BACKSTOP_S covers the listener being
away (it reconnects, and wakes everyone when it does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from . import db
from .config import CHANNEL_DONE
from .errors import TaskFailed
from .tasks import FINAL_STATUSES, TaskRecord

log = logging.getLogger("angela_queue.client")

# The longest a waiter goes without re-reading its task (the backstop for a
# notification lost while the listener reconnected).
BACKSTOP_S = 5.0
# How long a first wait lets the listener connect before relying on the backstop.
LISTEN_START_S = 5.0


def check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds, 0 or more, or None to wait forever (got {timeout!r})")
    return float(timeout)


def outcome(record: TaskRecord) -> Any:
    """The result of a task that succeeded; TaskFailed for any other final status."""
    if record.status == "succeeded":
        return record.result
    raise TaskFailed(record.id, record.status, record.last_error, record)


def is_final(record: TaskRecord) -> bool:
    return record.status in FINAL_STATUSES


def not_done(task_id: int, record: TaskRecord, timeout: float | None) -> TimeoutError:
    return TimeoutError(f"task {task_id} is still {record.status} after {timeout:g}s")


def _ids(payload: str) -> list[int] | None:
    """The ids a notification names; None: all ('*', or a payload we cannot read)."""
    if payload == "*":
        return None
    try:
        return [int(part) for part in payload.split(",")]
    except ValueError:
        return None


def _set_all(waiters: dict[int, set[Any]], ids: list[int] | None) -> None:
    """Set the events of the waiters on these ids (None: every waiter)."""
    groups = list(waiters.values()) if ids is None else [waiters[i] for i in ids if i in waiters]
    for events in groups:
        for event in events:
            event.set()


class DoneListener:
    """One listening connection per Client, on a daemon thread."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._lock = threading.Lock()
        self._waiters: dict[int, set[threading.Event]] = {}
        self._listening = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._closed.clear()
                self._thread = threading.Thread(target=self._run, name="angela-queue-wait", daemon=True)
                self._thread.start()
        self._listening.wait(LISTEN_START_S)

    def close(self) -> None:
        self._closed.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._thread = None

    @contextlib.contextmanager
    def watching(self, task_id: int) -> Iterator[threading.Event]:
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                events = self._waiters.get(task_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._waiters[task_id]

    def _wake(self, ids: list[int] | None) -> None:
        with self._lock:
            _set_all(self._waiters, ids)

    def _run(self) -> None:
        delay = 0.2
        while not self._closed.is_set():
            try:
                with db.connect(self.dsn, application_name="angela-queue-wait") as conn:
                    db.listen(conn, CHANNEL_DONE)
                    self._listening.set()
                    self._wake(None)        # anything that finished while we were not listening
                    delay = 0.2
                    while not self._closed.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._wake(_ids(note.payload))
            except Exception as exc:  # noqa: BLE001 - keep listening; waiters fall back to the backstop
                self._listening.clear()
                if self._closed.is_set():
                    return
                log.debug("wait listener: %s; reconnecting in %.1fs", db.first_line(exc), delay)
                self._closed.wait(delay)
                delay = min(delay * 2, 5.0)


class AsyncDoneListener:
    """The asyncio counterpart: one listening connection per AsyncClient, in a task."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._listening: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if self._listening is None:
            self._listening = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="angela-queue-wait")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._listening.wait(), LISTEN_START_S)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def watching(self, task_id: int) -> AsyncIterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiters.get(task_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[task_id]

    def _wake(self, ids: list[int] | None) -> None:
        _set_all(self._waiters, ids)

    async def _run(self) -> None:
        assert self._listening is not None
        delay = 0.2
        while True:
            try:
                conn = await db.aconnect(self.dsn, application_name="angela-queue-wait")
                async with conn:
                    await db.alisten(conn, CHANNEL_DONE)
                    self._listening.set()
                    self._wake(None)
                    delay = 0.2
                    async for note in conn.notifies():
                        self._wake(_ids(note.payload))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - as in DoneListener
                self._listening.clear()
                log.debug("wait listener: %s; reconnecting in %.1fs", db.first_line(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def next_look_in(deadline: float | None) -> float:
    """Seconds to wait before reading the task again: the backstop, or less
    if the deadline comes first (0 or less: it has passed)."""
    return BACKSTOP_S if deadline is None else min(BACKSTOP_S, deadline - time.monotonic())

