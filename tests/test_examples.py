"""The integration examples in examples/ run, as users would run them: FastAPI
(lifespan AsyncClient, enqueue in the request's transaction), Django (enqueue
with Django's connection in transaction.atomic) and pydantic-typed payloads."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import sys
from decimal import Decimal

import pytest

from angela_queue import SchemaMissing, registry
from angela_queue.testing import drain
from fix_procs import query, scalar

ORDERS_SQL = "CREATE TABLE public.orders (id serial PRIMARY KEY, item text NOT NULL, quantity integer NOT NULL)"


def fresh_import(name: str, monkeypatch, dsn: str | None = None):
    """Import an example anew, with only its own handlers registered."""
    if dsn is not None:
        monkeypatch.setenv("ANGELA_QUEUE_DSN", dsn)
    registry.clear()
    sys.modules.pop(name, None)
    return importlib.import_module(name)


@pytest.fixture(autouse=True)
def forget_handlers():
    yield
    registry.clear()


# --- FastAPI ------------------------------------------------------------------

def test_fastapi_enqueues_in_the_requests_transaction_and_waits_for_results(dsn, monkeypatch):
    from fastapi.testclient import TestClient
    query(dsn, ORDERS_SQL)
    example = fresh_import("examples.fastapi_app", monkeypatch, dsn)
    with TestClient(example.app) as http:
        ok = http.post("/orders", json={"item": "book"})
        assert ok.status_code == 200, ok.text
        refused = http.post("/orders", json={"item": "piano", "quantity": 500})
        assert refused.status_code == 422
        news = http.post("/newsletter", params={"to": "ada@example.com"})
        assert news.status_code == 200 and news.json()["priority"] == 3     # the @task default, applied in SQL
        # The refused request left neither its order nor its task.
        assert [r["item"] for r in query(dsn, "SELECT item FROM public.orders")] == ["book"]
        assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE kind = 'ship_order'") == 1
        ran = drain()
        assert sorted(t.kind for t in ran) == ["send_newsletter", "ship_order"]
        result = http.get(f"/tasks/{ok.json()['task_id']}/result")
        assert result.json() == {"result": {"order_id": ok.json()["order_id"], "shipped": "book"}}
        assert http.get("/tasks/999999/result").status_code == 404


def test_fastapi_startup_fails_fast_on_an_unmigrated_database(empty_dsn, monkeypatch):
    from fastapi.testclient import TestClient
    example = fresh_import("examples.fastapi_app", monkeypatch, empty_dsn)
    with pytest.raises(SchemaMissing, match="angela-queue migrate"):
        with TestClient(example.app):
            pass


# --- Django -------------------------------------------------------------------

@pytest.fixture(scope="module")
def django_example(module_dsn):
    """Django configures once per process: one database for this module's Django tests."""
    query(module_dsn, ORDERS_SQL)
    registry.clear()
    sys.modules.pop("examples.django_app", None)
    example = importlib.import_module("examples.django_app")
    example.configure(module_dsn)
    yield example, module_dsn
    from django.db import connections
    connections.close_all()


def test_django_enqueues_inside_transaction_atomic(django_example):
    from django.test import Client as DjangoClient
    example, dsn = django_example
    http = DjangoClient()
    ok = http.post("/orders", data=json.dumps({"item": "lamp"}), content_type="application/json")
    assert ok.status_code == 200, ok.content
    refused = http.post("/orders", data=json.dumps({"item": "crane", "quantity": 101}),
                        content_type="application/json")
    assert refused.status_code == 422
    assert [r["item"] for r in query(dsn, "SELECT item FROM public.orders")] == ["lamp"]
    tasks = query(dsn, "SELECT id, payload, priority FROM angela_queue.tasks WHERE kind = 'ship_order'")
    assert [(t["id"], t["payload"]["item"], t["priority"]) for t in tasks] == [(ok.json()["task_id"], "lamp", 7)]
    registry.clear()
    registry.task("ship_order", priority=7)(example.ship_order.func)
    [done] = drain(dsn=dsn)
    assert done.result == {"order_id": ok.json()["order_id"], "shipped": "lamp"}


def test_django_outside_atomic_commits_at_once(django_example):
    from django.db import connection
    import angela_queue
    example, dsn = django_example
    queued = angela_queue.enqueue("ship_order", {"order_id": 0, "item": "loose"}, conn=connection)
    # Another session sees it: autocommit.
    assert scalar(dsn, "SELECT status FROM angela_queue.tasks WHERE id = %s", (queued.id,)) == "queued"


# --- pydantic -------------------------------------------------------------------

def test_typed_payloads_are_validated_at_enqueue_and_handlers_get_the_model(dsn, client, monkeypatch):
    from pydantic import ValidationError
    example = fresh_import("examples.typed_payloads", monkeypatch)
    queued = client.enqueue(example.send_invoice, {"customer": "ada", "amount": "12.50", "due": "2026-01-31"})
    stored = scalar(dsn, "SELECT payload FROM angela_queue.tasks WHERE id = %s", (queued.id,))
    assert stored == {"customer": "ada", "amount": "12.50", "due": "2026-01-31"}
    # A model instance is accepted as the payload too.
    as_model = client.enqueue("send_invoice", example.Invoice(customer="bob", amount=Decimal("3"),
                                                               due=dt.date(2026, 1, 2)))
    with pytest.raises(ValidationError):
        client.enqueue("send_invoice", {"customer": "", "amount": -1, "due": "someday"})
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks") == 2
    digests = client.enqueue_many([{"kind": "invoice_digest", "payload": {"customer": c, "amount": 5, "due": "2026-02-01"}}
                                   for c in ("x", "y")])
    ran = {t.id: t for t in drain()}
    assert ran[queued.id].result == {"to": "ada", "amount": "12.50", "days": 30}
    assert ran[as_model.id].result["to"] == "bob"
    assert {ran[d.id].result for d in digests} <= {"2 invoice(s), 10 in all", "1 invoice(s), 5 in all"}


def test_a_stored_payload_that_no_longer_fits_the_model_fails_without_retries(dsn, client, monkeypatch):
    fresh_import("examples.typed_payloads", monkeypatch)
    bad = scalar(dsn, "INSERT INTO angela_queue.tasks (kind, payload) VALUES ('send_invoice', '{\"customer\": 1}') "
                      "RETURNING id")
    [done] = drain()
    assert done.id == bad and done.status == "failed" and done.attempts == 1
    assert "does not match Invoice" in done.last_error


def test_model_must_be_a_pydantic_model():
    with pytest.raises(ValueError, match="pydantic model class"):
        registry.task("x", model=dict)
