"""OpenTelemetry (the ``angela-queue[otel]`` extra): a span for each enqueue
and for each task's execution, one trace from the producer's request to
the handler.

The producer's span context travels on the task row (tasks.trace_context,
W3C traceparent/tracestate, injected by the configured propagator); the
worker extracts it and starts the task's span as its child. Without
opentelemetry installed every function here is a no-op, and with the API but
no SDK configured, spans are non-recording and nothing is stored.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the extra is not installed
    trace = None  # type: ignore[assignment]

TRACER_NAME = "angela_queue"


@functools.cache
def _tracer() -> Any:
    # One tracer for the process: get_tracer builds a new one per call, a
    # cost on every enqueue. Safe before an SDK is configured too: a tracer
    # from the API's proxy provider delegates to the real one once it is set.
    from . import __version__
    return trace.get_tracer(TRACER_NAME, __version__)


def _no_sdk() -> bool:
    """No tracer provider set (the API's proxy) or the no-op one: spans are
    non-recording. Asked on each call: an SDK may be configured at any time."""
    return isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


@contextlib.contextmanager
def enqueue_span(kind: str, queue: str | None, count: int = 1) -> Iterator[dict[str, str] | None]:
    """Around one enqueue call: yields the trace context to store on its task(s),
    or None (no opentelemetry, or no span to continue)."""
    if trace is None:
        yield None
        return
    if _no_sdk():
        # The API's spans would record nothing and carry the current span's
        # context (NoOpTracer): inject that context directly, without the
        # span's cost (a fifth of an enqueue's client CPU).
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier or None
        return
    with _tracer().start_as_current_span(f"enqueue {kind}", kind=SpanKind.PRODUCER, attributes={
            "messaging.system": "angela_queue", "messaging.operation": "publish",
            "messaging.destination.name": queue or "", "angela_queue.task.kind": kind,
            "messaging.batch.message_count": count}) as span:
        carrier = {}
        propagate.inject(carrier)
        try:
            yield carrier or None
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            raise


def record_enqueued(task_ids: list[int]) -> None:
    """Name the stored task(s) on the current enqueue span."""
    if trace is None or _no_sdk():
        # No span of ours is current then (enqueue_span made none): the
        # current span is the caller's, not ours to write on.
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("angela_queue.task.ids", task_ids[:100])


@contextlib.contextmanager
def task_span(kind: str, queue: str, task_id: int, attempt: int,
              trace_context: Mapping[str, Any] | None) -> Iterator[Any]:
    """Around one task's handler call, as a child of its producer's span (a
    new trace if it has none). Yields the span (None without opentelemetry)."""
    if trace is None:
        yield None
        return
    if _no_sdk():
        # The span would record nothing (NoOpTracer): only its context
        # matters, the producer's, current while the handler runs so that
        # what the handler sends on carries it. Without one, nothing to do.
        # (A no-op span cost about a tenth of a task's worker CPU.)
        if not trace_context:
            yield None
            return
        # Only the producer's span, on top of the worker's own context (what
        # the no-op span did): not the producer's baggage, which extract
        # also brings.
        parent = trace.get_current_span(propagate.extract(dict(trace_context)))
        token = otel_context.attach(trace.set_span_in_context(parent))
        try:
            yield None
        finally:
            otel_context.detach(token)
        return
    parent = propagate.extract(dict(trace_context)) if trace_context else None
    with _tracer().start_as_current_span(f"process {kind}", context=parent, kind=SpanKind.CONSUMER,
                                         record_exception=False, set_status_on_exception=False,
                                         attributes={
                                             "messaging.system": "angela_queue", "messaging.operation": "process",
                                             "messaging.destination.name": queue, "angela_queue.task.kind": kind,
                                             "angela_queue.task.id": task_id,
                                             "angela_queue.task.attempt": attempt}) as span:
        yield span


def end_task_span(span: Any, ok: bool, error: str | None, outcome: str) -> None:
    """Record how the attempt ended on its span."""
    if span is None or not span.is_recording():
        return
    span.set_attribute("angela_queue.task.outcome", outcome)
    if not ok and outcome not in ("snoozed", "cancelled"):
        span.set_status(Status(StatusCode.ERROR, (error or "").splitlines()[0][:200] if error else outcome))
