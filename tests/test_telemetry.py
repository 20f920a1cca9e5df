"""OpenTelemetry (the [otel] extra): an enqueue inside a request's span and the
task's execution form one trace, through the trace context stored on the row."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from angela_queue import registry, task  # noqa: E402
from angela_queue.testing import drain  # noqa: E402

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracing():
    # The global provider can be set once per process.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
    else:
        trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(EXPORTER))
    yield


@pytest.fixture
def handlers():
    registry.clear()

    @task("traced")
    def traced(n):
        return n

    @task("traced_fails", max_attempts=1)
    def traced_fails():
        raise ValueError("no luck")

    EXPORTER.clear()
    yield
    registry.clear()


def spans(name: str):
    return [s for s in EXPORTER.get_finished_spans() if s.name == name]


def test_one_trace_runs_from_the_request_to_the_handler(dsn, client, conn, handlers):
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("POST /orders") as request:
        queued = client.enqueue("traced", {"n": 1})
    stored = conn.execute("SELECT trace_context FROM angela_queue.tasks WHERE id = %s", (queued.id,)).fetchone()
    assert stored["trace_context"]["traceparent"].split("-")[1] == format(request.get_span_context().trace_id, "032x")
    [done] = drain(dsn=dsn)
    assert done.status == "succeeded"
    [enqueue] = spans("enqueue traced")
    [process] = spans("process traced")
    assert enqueue.parent.span_id == request.get_span_context().span_id
    assert process.context.trace_id == request.get_span_context().trace_id
    assert process.parent.span_id == enqueue.context.span_id
    assert process.attributes["angela_queue.task.id"] == queued.id
    assert process.attributes["angela_queue.task.outcome"] == "succeeded"


def test_a_failed_attempt_marks_its_span(dsn, client, handlers):
    client.enqueue("traced_fails")
    drain(dsn=dsn)
    [process] = spans("process traced_fails")
    assert process.status.status_code == trace.StatusCode.ERROR
    assert "no luck" in process.status.description
    assert process.attributes["angela_queue.task.outcome"] == "failed"


def test_without_a_current_span_the_task_starts_its_own_trace(dsn, client, conn, handlers):
    queued = client.enqueue_many([{"kind": "traced", "payload": {"n": i}} for i in range(2)])
    # The enqueue span itself is the parent now: one trace for the call's tasks.
    contexts = {r["trace_context"]["traceparent"] for r in conn.execute(
        "SELECT trace_context FROM angela_queue.tasks WHERE id = ANY(%s)", ([t.id for t in queued],))}
    assert len(contexts) == 1
    drain(dsn=dsn)
    assert len(spans("process traced")) == 2


NO_SDK_SCRIPT = """
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from angela_queue import telemetry

assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
with telemetry.enqueue_span("k", None) as carried:
    assert carried is None, carried
parent = SpanContext(trace_id=0x1234, span_id=0x99, is_remote=True, trace_flags=TraceFlags(1))
with trace.use_span(NonRecordingSpan(parent)):
    with telemetry.enqueue_span("k", None) as carried:
        print(carried["traceparent"])
# The worker's side: the producer's context is current while the handler runs.
with telemetry.task_span("k", "q", 1, 1, carried) as span:
    assert span is None
    assert trace.get_current_span().get_span_context().trace_id == 0x1234
assert not trace.get_current_span().get_span_context().is_valid
with telemetry.task_span("k", "q", 1, 1, None) as span:
    assert span is None and not trace.get_current_span().get_span_context().is_valid
# Only the producer's span comes along, on top of the worker's own context:
# not the producer's baggage.
from opentelemetry import baggage, context
from opentelemetry.propagate import inject
with trace.use_span(NonRecordingSpan(parent)):
    token = context.attach(baggage.set_baggage("tenant", "producer"))
    sent = {}
    inject(sent)
    context.detach(token)
assert "baggage" in sent
token = context.attach(baggage.set_baggage("worker", "w1"))
with telemetry.task_span("k", "q", 1, 1, sent):
    assert dict(baggage.get_all()) == {"worker": "w1"}
    assert trace.get_current_span().get_span_context().trace_id == 0x1234
context.detach(token)
# A recording span of the application's own (a provider not set globally)
# is not ours to write the task ids on.
from opentelemetry.sdk.trace import TracerProvider
with TracerProvider().get_tracer("app").start_as_current_span("request") as request:
    with telemetry.enqueue_span("k", None):
        telemetry.record_enqueued([1, 2])
    assert "angela_queue.task.ids" not in (request.attributes or {})
"""


def test_without_an_sdk_the_trace_context_still_travels_to_the_handler():
    # No SDK: no span is made for the enqueue (it would record nothing), but a
    # context propagated into this process (a request's traceparent) is still
    # stored on the task, as the API's non-recording span would have carried
    # it. A fresh process: the global provider is set once per process.
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", NO_SDK_SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"00-{0x1234:032x}-{0x99:016x}-01"
