"""Tasks as seen by producers: the record, the statuses and the enqueue logic.

The enqueue logic is written once, as generators that yield database
operations (``Query``, ``WaitForSpace``) and receive their results. The sync
``Client`` and the ``AsyncClient`` in client.py are thin drivers that run the
same generators, so the two APIs cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from .config import CHANNEL_SPACE, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, ENQUEUE_FULL_WAIT_S
from .errors import DedupKeyHeld, QueueFull, TaskNotFound
# A flow yields Query to run a named query; its driver sends back the rows.
from .queries import Query
from .registry import TaskDefinition, lookup

log = logging.getLogger("angela_queue.client")

# The times the schema accepts for run_at (angela_queue.check_task_time):
# finite, readable by Python, and not so far back that aging means nothing.
EARLIEST_RUN_AT = dt.datetime(1900, 1, 1, tzinfo=dt.timezone.utc)
LATEST_RUN_AT = dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc)
# Retries of a bulk insert that lost a deadlock or serialization race.
BULK_RETRIES = 3
# Rows a purge deletes per transaction.
PURGE_CHUNK = 10_000

# One encoder for every payload: json.dumps with any argument builds a new
# encoder per call, which cost a bulk enqueue more than the encoding.
# allow_nan=False: Python writes NaN/Infinity, which jsonb rejects.
_JSON = json.JSONEncoder(allow_nan=False)


def _json_encoder() -> Callable[[Any], str]:
    """_JSON.encode with less per-call set-up (a bulk enqueue encodes
    thousands of small payloads): the C encoder JSONEncoder.iterencode builds
    for every document, built here directly. Same output, same errors. A
    fresh markers dict each call keeps the circular-reference check: a
    payload that contains itself fails cleanly instead of recursing in C.

    Hazard: without markers the C encoder recurses until RecursionError,
    which Python 3.11 raises only at the recursion limit; with a raised limit
    or a thread's small stack the C stack runs out first and the process
    dies (SIGSEGV, reproduced). One shared markers dict would report false
    circles when two threads encode one object."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator
        return _JSON.encode
    default, escape = _JSON.default, json.encoder.encode_basestring_ascii
    return lambda value: "".join(make({}, default, escape, None, ": ", ", ", False, False, False)(value, 0))


_encode_json = _json_encoder()

STATUSES = ("scheduled", "queued", "running", "succeeded", "failed", "cancelled", "dropped")
WAITING_STATUSES = ("scheduled", "queued")
FINAL_STATUSES = ("succeeded", "failed", "cancelled", "dropped")


@dataclass(frozen=True)
class EnqueuedTask:
    """What an enqueue returns: the row as stored (or the existing duplicate)."""

    id: int
    queue: str
    kind: str
    status: str
    priority: int
    boost: int
    tier: str
    run_at: dt.datetime
    dedup_key: str | None = None
    last_error: str | None = None
    # True when the dedup key matched an unfinished task and nothing new was stored.
    duplicate: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, Any], duplicate: bool = False) -> "EnqueuedTask":
        # Positional: a bulk enqueue builds thousands of these per call.
        return cls(row["id"], row["queue"], row["kind"], row["status"], row["priority"], row["boost"],
                   row["tier"], row["run_at"], row["dedup_key"], row["last_error"], duplicate)

    @classmethod
    def from_rows(cls, rows: list[Mapping[str, Any]]) -> list["EnqueuedTask"]:
        """Many new tasks at once (a bulk enqueue's rows, none a duplicate).

        Built without the dataclass __init__, whose frozen fields cost one
        object.__setattr__ each: most of a bulk enqueue's decoding. Only
        when the rows carry exactly the fields (the enqueue statements'
        RETURNING); anything else goes through from_row.
        """
        if not rows or rows[0].keys() != _ENQUEUED_COLUMNS:
            return [cls.from_row(r) for r in rows]
        new = object.__new__
        out = []
        for row in rows:
            task = new(cls)
            fields = task.__dict__
            fields.update(row)
            fields["duplicate"] = False
            out.append(task)
        return out

    @property
    def dropped(self) -> bool:
        return self.status == "dropped"


_ENQUEUED_COLUMNS = frozenset(f.name for f in dataclasses.fields(EnqueuedTask)) - {"duplicate"}


@dataclass(frozen=True)
class TaskSpec:
    """One task to enqueue, validated before it reaches the database."""

    kind: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    # None: unset, and the database fills it (the kind's default from
    # angela_queue.kinds, then the queue's, then the global one).
    priority: int | None = None
    queue: str | None = None
    run_at: dt.datetime | None = None
    delay_s: float | None = None
    max_attempts: int | None = None
    timeout_s: float | None = None
    dedup_key: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind.strip():
            raise ValueError(f"a task needs a kind: a non-empty string (got {self.kind!r})")
        _check_text("kind", self.kind, 255)
        if type(self.payload) is not dict and not isinstance(self.payload, Mapping):   # dict: the ABC check skipped
            raise ValueError(f"payload must be a JSON object (a dict), got {type(self.payload).__name__}")
        try:
            text = _encode_json(self.payload)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"payload is not JSON-serialisable: {exc}") from None
        if "\\u0000" in text:
            raise ValueError("payload must not contain a NUL character (\\u0000): Postgres jsonb cannot store it")
        # Kept: the enqueue statements send it as is, not encoded twice.
        object.__setattr__(self, "_payload_json", text)
        # Most tasks set no option: their checks are skipped in one test (a
        # bulk enqueue validates thousands of specs per call).
        if (self.priority is not None or self.queue is not None or self.run_at is not None
                or self.delay_s is not None or self.max_attempts is not None or self.timeout_s is not None
                or self.dedup_key is not None):
            self._check_options()

    def _check_options(self) -> None:
        _check_text("queue", self.queue, 255)
        _check_text("dedup_key", self.dedup_key, 2000)
        if self.priority is not None and (isinstance(self.priority, bool) or not isinstance(self.priority, int)
                                          or not 1 <= self.priority <= 10):
            raise ValueError(f"priority must be an integer between 1 and 10 (got {self.priority!r})")
        if self.queue is not None:
            if not isinstance(self.queue, str) or not self.queue.strip():
                raise ValueError(f"queue must be a non-empty string (got {self.queue!r})")
            # The insert trigger trims the queue name; trim here too, or the dedup
            # look-ups (by this spec's queue) never find the row stored under the
            # trimmed name and the enqueue fails with "could not settle dedup key".
            object.__setattr__(self, "queue", self.queue.strip())
        if self.max_attempts is not None and (
                isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int)
                or not 1 <= self.max_attempts <= 1_000_000):
            raise ValueError(f"max_attempts must be an integer between 1 and 1000000 (got {self.max_attempts!r})")
        for name, value in (("timeout", self.timeout_s), ("delay", self.delay_s)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not _finite(value)):
                raise ValueError(f"{name} must be a finite number of seconds (got {value!r})")
        # One type per column: a bulk insert sends each as one typed array
        # (psycopg cannot dump [0.2, 5]: a list mixing float and int).
        for name in ("timeout_s", "delay_s"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout must be positive seconds (got {self.timeout_s})")
        if self.run_at is not None and self.delay_s is not None:
            raise ValueError("give run_at or delay, not both")
        if self.run_at is not None and not isinstance(self.run_at, dt.datetime):
            raise ValueError(f"run_at must be a datetime (got {type(self.run_at).__name__})")
        if self.run_at is not None and self.run_at.tzinfo is None:
            raise ValueError("run_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
        if self.delay_s is not None and self.delay_s < 0:
            raise ValueError(f"delay must not be negative (got {self.delay_s})")
        if self.dedup_key is not None and (not isinstance(self.dedup_key, str) or not self.dedup_key):
            raise ValueError(f"dedup_key must be a non-empty string (got {self.dedup_key!r})")
        if self.run_at is not None and not EARLIEST_RUN_AT <= self.run_at < LATEST_RUN_AT:
            raise ValueError(f"run_at must be between 1900-01-01 and 9999-01-01 (got {self.run_at.isoformat()})")
        if self.delay_s is not None:
            latest_delay_s = (LATEST_RUN_AT - dt.datetime.now(dt.timezone.utc)).total_seconds() - 86400
            if self.delay_s > latest_delay_s:
                raise ValueError(f"delay of {self.delay_s:g}s would start the task after 9999-01-01; "
                                 f"the longest delay is about {latest_delay_s:.3g}s")

    @classmethod
    def build(cls, kind: str | TaskDefinition, payload: Mapping[str, Any] | None = None, *,
              priority: int | None = None, queue: str | None = None, run_at: dt.datetime | None = None,
              delay: float | dt.timedelta | None = None, max_attempts: int | None = None,
              timeout: float | None = None, dedup_key: str | None = None) -> "TaskSpec":
        """A spec whose unset options come from the handler registered in this
        process, if any; what stays unset the database fills (the kind's
        recorded defaults, then the queue's, then the global ones)."""
        definition = kind if isinstance(kind, TaskDefinition) else lookup(kind)
        kind_name = definition.kind if definition is not None else kind
        if isinstance(delay, dt.timedelta):
            delay = delay.total_seconds()
        if payload is None:
            payload = {}
        if definition is not None:
            if definition.model is not None:
                from .models import payload_for_storage
                payload = payload_for_storage(definition.model, payload)
            # Unset options take the handler's.
            if priority is None:
                priority = definition.priority
            if queue is None:
                queue = definition.queue
            if max_attempts is None:
                max_attempts = definition.max_attempts
            if timeout is None:
                timeout = definition.timeout
        return cls._made(kind_name, payload, priority, queue, run_at, delay, max_attempts, timeout, dedup_key)

    @classmethod
    def _made(cls, kind: str, payload: Mapping[str, Any], priority: int | None, queue: str | None,
              run_at: dt.datetime | None, delay_s: float | None, max_attempts: int | None,
              timeout_s: float | None, dedup_key: str | None) -> "TaskSpec":
        """The same spec as ``cls(...)``, checked the same way, without the
        frozen dataclass's __init__, which sets each of the nine fields through
        object.__setattr__ (about 0.3 of a spec's 2.5 us, 5,000 times a bulk)."""
        spec = object.__new__(cls)
        spec.__dict__.update(kind=kind, payload=payload, priority=priority, queue=queue, run_at=run_at,
                             delay_s=delay_s, max_attempts=max_attempts, timeout_s=timeout_s, dedup_key=dedup_key)
        spec.__post_init__()
        return spec

    def params(self, trace_context: Mapping[str, str] | None = None) -> dict[str, Any]:
        return {"queue": self.queue, "kind": self.kind, "payload": self._payload_json,
                "priority": self.priority, "run_at": self.run_at, "delay_s": self.delay_s,
                "max_attempts": self.max_attempts, "timeout_s": self.timeout_s, "dedup_key": self.dedup_key,
                "trace_context": Jsonb(dict(trace_context)) if trace_context else None, "relax": False}


def many_params(specs: list[TaskSpec], trace_context: Mapping[str, str] | None = None) -> dict[str, Any]:
    """tasks_enqueue_many's parameters: the whole list as one JSON document (one
    statement), each payload the text already checked at validation; one trace
    context for them all (the one enqueue call).

    One document rather than a typed array per column: dumping nine arrays
    cost more than the insert trigger's work per row, and most of them are
    all NULL (keys left out here are NULL in jsonb_to_recordset).
    """
    parts = []
    kinds: dict[str, str] = {}   # each kind encoded once
    for s in specs:
        kind = kinds.get(s.kind)
        if kind is None:
            kind = kinds[s.kind] = _encode_json(s.kind)
        options = (("queue", s.queue), ("priority", s.priority),
                   ("run_at", None if s.run_at is None else s.run_at.isoformat()), ("delay_s", s.delay_s),
                   ("max_attempts", s.max_attempts), ("timeout_s", s.timeout_s), ("dedup_key", s.dedup_key))
        set_ = "".join(f',"{key}":{_encode_json(value)}' for key, value in options if value is not None)
        parts.append(f'{{"kind":{kind},"payload":{s._payload_json}{set_}}}')
    return {"trace_context": Jsonb(dict(trace_context)) if trace_context else None,
            "tasks": "[" + ",".join(parts) + "]", "relax": False}


def _check_text(name: str, value: Any, limit: int) -> None:
    """A text field Postgres can store: no NUL, at most ``limit`` bytes (a
    non-str is left to the field's own check)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{name} must not contain a NUL character (Postgres text cannot hold one)")
        # Bytes, not characters: one character takes up to four. Only a
        # string that could be too long is encoded.
        if len(value) * 4 > limit and len(value.encode("utf-8", "surrogatepass")) > limit:
            raise ValueError(f"{name} must be at most {limit} bytes")


def _finite(value: int | float) -> bool:
    """A number that is finite as a float (an int too big for one is not)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


# --- Operations the flows yield to their driver --------------------------------

@dataclass(frozen=True)
class WaitForSpace:
    """Block up to timeout_s for a NOTIFY that space freed in a queue.

    The driver must already LISTEN (``listen=True`` on the first wait) before
    the flow retries, so a notification between a failed insert and the wait
    cannot be missed. The driver sends back nothing.
    """

    queue: str
    timeout_s: float


@dataclass(frozen=True)
class Listen:
    channel: str
    on: bool = True


Flow = Generator[Query | WaitForSpace | Listen, Any, Any]
Operation = Query | WaitForSpace | Listen


def run_flow(flow: Flow, perform: Callable[[Operation], Any]) -> Any:
    """Run a flow to completion: perform each operation it yields and send the
    result back in. An exception from the database is thrown into the flow,
    so that its own handlers (QueueFull -> wait) see it."""
    send: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.throw(error) if error is not None else flow.send(send)
        except StopIteration as done:
            return done.value
        send, error = None, None
        try:
            send = perform(op)
        except Exception as exc:  # handed to the flow, which decides
            error = exc


async def arun_flow(flow: Flow, perform: Callable[[Operation], Awaitable[Any]]) -> Any:
    """run_flow, with operations awaited."""
    send: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.throw(error) if error is not None else flow.send(send)
        except StopIteration as done:
            return done.value
        send, error = None, None
        try:
            send = await perform(op)
        except Exception as exc:
            error = exc


def _with_overflow_wait(attempt: Generator, queue_of: str | None, wait_s: float) -> Flow:
    """Run ``attempt`` (a flow that inserts); on QueueFull, wait for space and retry.

    The plan: a priority >= 5 task waits up to ``wait_s`` for space, then
    fails with QueueFull. Lower priorities never get here (the SQL stores them
    as 'dropped'). The wait is woken by the claim's NOTIFY, with a short
    re-check as backstop in case a notification is lost.
    """
    give_up_at = time.monotonic() + wait_s
    listening = False
    try:
        while True:
            try:
                return (yield from attempt())
            except QueueFull as full:
                remaining = give_up_at - time.monotonic()
                if remaining <= 0:
                    raise QueueFull(full.queue or queue_of or "", str(full), waited_s=wait_s) from None
                if not listening:
                    # LISTEN before the retry: space freed from now on wakes us.
                    yield Listen(CHANNEL_SPACE)
                    listening = True
                    continue
                yield WaitForSpace(full.queue or queue_of or "", min(remaining, 0.25))
    finally:
        if listening:
            yield Listen(CHANNEL_SPACE, on=False)


def _with_dedup_queues(specs: list[TaskSpec]) -> Flow:
    """Specs whose dedup key needs a queue to be looked up by, given one.

    A deduplicated task enqueued without a queue goes to its kind's recorded
    queue (or 'default'); the look-ups of the task holding its key must use
    that same queue, so it is read first: one query, and only for such specs.
    """
    unsettled = sorted({s.kind for s in specs if s.dedup_key is not None and s.queue is None})
    if not unsettled:
        return specs
    rows = yield Query("kinds_default_queues", {"kinds": unsettled})
    queue_of = {r["kind"]: r["queue"] for r in rows if r["queue"] is not None}
    return [dataclasses.replace(s, queue=queue_of.get(s.kind, DEFAULT_QUEUE))
            if s.dedup_key is not None and s.queue is None else s for s in specs]


def enqueue_flow(spec: TaskSpec, wait_s: float = ENQUEUE_FULL_WAIT_S,
                 trace_context: Mapping[str, str] | None = None) -> Flow:
    [spec] = yield from _with_dedup_queues([spec])

    def attempt() -> Flow:
        if spec.dedup_key is not None:
            rows = yield Query("tasks_find_unfinished_by_dedup_key",
                               {"queue": spec.queue, "dedup_key": spec.dedup_key})
            if rows:
                return _holder(spec, rows[0])
        for _ in range(5):
            rows = yield Query("tasks_enqueue", spec.params(trace_context))
            if rows:
                return EnqueuedTask.from_row(rows[0])
            # Conflict on the dedup key: return the holder. It may finish
            # between the insert and this read; then insert again.
            rows = yield Query("tasks_find_unfinished_by_dedup_key",
                               {"queue": spec.queue, "dedup_key": spec.dedup_key})
            if rows:
                return _holder(spec, rows[0])
        raise RuntimeError(f"could not settle dedup key {spec.dedup_key!r}: its task kept changing")

    task = yield from _with_overflow_wait(attempt, spec.queue, wait_s)
    _warn_dropped([task])
    return task


def _holder(spec: TaskSpec, row: Mapping[str, Any]) -> EnqueuedTask:
    """The task holding a spec's dedup key; DedupKeyHeld if it is another login's."""
    if row["id"] is None:
        raise DedupKeyHeld(spec.queue or DEFAULT_QUEUE, [spec.dedup_key or ""])
    return EnqueuedTask.from_row(row, duplicate=True)


def canonical_order(specs: list[TaskSpec]) -> list[int]:
    """The order a bulk insert takes its rows in: keyed rows by (queue, dedup_key).

    Hazard: two bulk inserts whose dedup keys overlap each wait on the
    other's uncommitted row in the unique index; inserted in different orders
    they deadlock. Every insert taking keys in one global order cannot.
    """
    if all(s.dedup_key is None for s in specs):
        # No keys, no unique-index waits to order: the order given.
        return list(range(len(specs)))
    return sorted(range(len(specs)), key=lambda i: (specs[i].dedup_key is None, specs[i].queue or "",
                                                    specs[i].dedup_key or "", i))


def enqueue_many_flow(specs: Iterable[TaskSpec], wait_s: float = ENQUEUE_FULL_WAIT_S,
                      trace_context: Mapping[str, str] | None = None) -> Flow:
    """Insert all specs in one statement. All or nothing: if one task meets a
    full queue with priority >= 5, the statement fails, waits and retries whole.
    Results come back in input order."""
    specs = list(specs)
    if not specs:
        return []
    specs = yield from _with_dedup_queues(specs)
    order = canonical_order(specs)
    ordered = [specs[i] for i in order]

    def attempt() -> Flow:
        for tries in range(BULK_RETRIES + 1):
            try:
                rows = yield Query("tasks_enqueue_many", many_params(ordered, trace_context))
                break
            except Exception as exc:  # noqa: BLE001 - only the retryable races are retried
                if getattr(exc, "sqlstate", None) not in ("40P01", "40001") or tries == BULK_RETRIES:
                    raise
                log.info("bulk enqueue lost a %s; retrying (%d of %d)",
                         "deadlock" if exc.sqlstate == "40P01" else "serialization race", tries + 1, BULK_RETRIES)
        matched = yield from _match_bulk_rows(ordered, rows)
        out: list = [None] * len(specs)
        for position, task in zip(order, matched, strict=True):
            out[position] = task
        held = [specs[i] for i, task in enumerate(out) if task is None]
        if held:
            _warn_dropped([t for t in out if t is not None])
            raise DedupKeyHeld(held[0].queue or DEFAULT_QUEUE, [s.dedup_key or "" for s in held], enqueued=out)
        return out

    queue_of = specs[0].queue
    result = yield from _with_overflow_wait(attempt, queue_of, wait_s)
    _warn_dropped(result)
    return result


def _warn_dropped(tasks: list[EnqueuedTask]) -> None:
    """A dropped task is kept as a row, and said aloud here: never silently lost."""
    dropped = [t for t in tasks if t.dropped and not t.duplicate]
    if dropped:
        log.warning("%d of %d task(s) dropped (ids %s): %s", len(dropped), len(tasks),
                    ", ".join(str(t.id) for t in dropped[:10]) + (" ..." if len(dropped) > 10 else ""),
                    dropped[0].last_error)


def _match_bulk_rows(specs: list[TaskSpec], rows: list[Mapping[str, Any]]) -> Flow:
    """Map RETURNING rows back to the inputs, in input order.

    Postgres inserts in the ORDER BY of the source and RETURNING follows the
    insert order, so keyless rows pair up positionally; rows skipped on a
    dedup conflict are looked up by their key.
    """
    if len(rows) == len(specs) and all(s.dedup_key is None for s in specs):
        return EnqueuedTask.from_rows(rows)   # no keys: one row each, in order
    inserted = {(r["queue"], r["dedup_key"]): r for r in rows if r["dedup_key"] is not None}
    keyless = iter([r for r in rows if r["dedup_key"] is None])
    taken: set[tuple[str, str]] = set()
    out: list[EnqueuedTask] = []
    for spec in specs:
        if spec.dedup_key is None:
            out.append(EnqueuedTask.from_row(next(keyless)))
            continue
        key = (spec.queue, spec.dedup_key)
        row = inserted.get(key)
        if row is not None:
            # The first spec with a key owns the new row; repeats are duplicates of it.
            out.append(EnqueuedTask.from_row(row, duplicate=key in taken))
            taken.add(key)
            continue
        found = yield Query("tasks_find_unfinished_by_dedup_key", {"queue": spec.queue, "dedup_key": spec.dedup_key})
        if not found:
            raise RuntimeError(f"dedup key {spec.dedup_key!r} conflicted but its task finished meanwhile; retry")
        # None: held by another login's task (see enqueue_many_flow).
        out.append(None if found[0]["id"] is None else EnqueuedTask.from_row(found[0], duplicate=True))
    return out


@dataclass(frozen=True)
class CancelResult:
    """What a cancel did. ``cancelled``: the task is cancelled now. ``requested``:
    it was running, and was asked to stop (its outcome will be recorded as
    cancelled). Neither: it had already finished."""

    id: int
    cancelled: bool
    status: str
    requested: bool = False


@dataclass(frozen=True)
class RetryResult:
    """What a retry did: ``retried`` (back in its queue), else why not: its
    status does not allow it, or its dedup key is held by a newer task."""

    id: int
    retried: bool
    status: str
    outcome: str


@dataclass(frozen=True)
class TaskRecord:
    """One task as stored: every column, plus how long it waited and ran."""

    id: int
    queue: str
    kind: str
    status: str
    priority: int
    tier: str
    payload: dict[str, Any] = field(default_factory=dict)
    boost: int = 0
    boost_rules: list[str] = field(default_factory=list)
    created_at: dt.datetime | None = None
    run_at: dt.datetime | None = None
    deadline: dt.datetime | None = None
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout_s: float | None = None
    dedup_key: str | None = None
    worker_id: Any = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    result: Any = None
    last_error: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    failed_at: dt.datetime | None = None
    cancel_requested_at: dt.datetime | None = None
    enqueued_by: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "TaskRecord":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in row.items() if k in names})

    def __getitem__(self, name: str) -> Any:
        """``record["status"]``: the columns by name, as a row would give them."""
        if name not in self.__dataclass_fields__:
            raise KeyError(name)
        return getattr(self, name)

    @property
    def waited_s(self) -> float | None:
        """From ready (greatest(run_at, created_at)) to the start of the latest attempt."""
        if self.started_at is None or self.run_at is None or self.created_at is None:
            return None
        return (self.started_at - max(self.run_at, self.created_at)).total_seconds()

    @property
    def ran_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


def check_task_id(task_id: object) -> int:
    """A task id as the API takes it: a positive integer (bool and '12' are not)."""
    if isinstance(task_id, bool) or not isinstance(task_id, int) or not 1 <= task_id < 2 ** 63:
        raise ValueError(f"a task id must be a positive integer (got {task_id!r})")
    return task_id


def cancel_flow(task_id: int) -> Flow:
    check_task_id(task_id)
    rows = yield Query("tasks_cancel", {"id": task_id})
    if not rows:
        raise TaskNotFound(f"no task with id {task_id}")
    row = rows[0]
    # Cancelling a cancelled task is a no-op that reports success (idempotent).
    return CancelResult(id=row["id"], cancelled=row["status"] == "cancelled", status=row["status"],
                        requested=row["outcome"] == "cancel_requested")


def retry_flow(task_id: int) -> Flow:
    check_task_id(task_id)
    rows = yield Query("tasks_retry", {"id": task_id})
    if not rows:
        raise TaskNotFound(f"no task with id {task_id}")
    row = rows[0]
    return RetryResult(id=row["id"], retried=row["outcome"] == "retried", status=row["status"],
                       outcome=row["outcome"])


RETRYABLE_STATUSES = ("failed", "cancelled", "dropped")


def retry_many_flow(status: str = "failed", kind: str | None = None, queue: str | None = None) -> Flow:
    if status not in RETRYABLE_STATUSES:
        raise ValueError(f"only {', '.join(RETRYABLE_STATUSES)} tasks can be retried (got {status!r})")
    rows = yield Query("tasks_retry_many", {"status": status, "kind": kind, "queue": queue})
    return rows[0]["retried"]


def _queue_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise ValueError(f"a queue name must be a non-empty string (got {name!r})")
    return name.strip()


def pause_flow(queue: str) -> Flow:
    rows = yield Query("queues_pause", {"name": _queue_name(queue)})
    return rows[0]["changed"]


def resume_flow(queue: str) -> Flow:
    rows = yield Query("queues_resume", {"name": _queue_name(queue)})
    return rows[0]["changed"]


def purge_flow(status: str, older_than: float | dt.timedelta) -> Flow:
    if status not in FINAL_STATUSES:
        raise ValueError(f"only finished tasks can be purged: status must be one of {', '.join(FINAL_STATUSES)} "
                         f"(got {status!r})")
    seconds = older_than.total_seconds() if isinstance(older_than, dt.timedelta) else older_than
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < 1e11:
        raise ValueError(f"older_than must be a duration of 0 or more (got {older_than!r})")
    total = 0
    while True:
        # Each call its own transaction (an autocommit connection): a purge
        # of millions never holds its deletes, or the vacuum, back.
        rows = yield Query("tasks_purge", {"status": status, "older_than_s": float(seconds),
                                           "limit": PURGE_CHUNK})
        total += rows[0]["purged"]
        if rows[0]["purged"] < PURGE_CHUNK:
            return total


def list_flow(*, status: str | None = None, kind: str | None = None, queue: str | None = None,
              since: dt.datetime | None = None, limit: int = 50) -> Flow:
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100_000:
        raise ValueError(f"limit must be between 1 and 100,000 (got {limit!r})")
    if since is not None and (not isinstance(since, dt.datetime) or since.tzinfo is None):
        raise ValueError("since must be a timezone-aware datetime")
    rows = yield Query("tasks_list", {"status": status, "kind": kind, "queue": queue, "since": since,
                                      "limit": limit})
    return [TaskRecord.from_row(r) for r in rows]


def get_flow(task_id: int) -> Flow:
    check_task_id(task_id)
    rows = yield Query("tasks_get", {"id": task_id})
    if not rows:
        raise TaskNotFound(f"no task with id {task_id}")
    return TaskRecord.from_row(rows[0])
