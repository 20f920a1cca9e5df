"""Typed payloads with pydantic (`pip install 'angela-queue[pydantic]'`).

`@task(model=Invoice)` validates every enqueue against the model (a bad
payload raises pydantic's ValidationError before anything is stored), stores
the model's JSON form, and calls the handler with an Invoice instance.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from pydantic import BaseModel, Field

from angela_queue import task


class Invoice(BaseModel):
    customer: str = Field(min_length=1)
    amount: Decimal = Field(gt=0)
    due: dt.date


@task("send_invoice", model=Invoice, priority=6)
def send_invoice(invoice: Invoice) -> dict:
    days = (invoice.due - dt.date(2026, 1, 1)).days
    return {"to": invoice.customer, "amount": str(invoice.amount * 2 / 2), "days": days}


@task("invoice_digest", model=Invoice, batch=True)
def invoice_digest(invoices: list[Invoice]) -> str:
    return f"{len(invoices)} invoice(s), {sum(i.amount for i in invoices)} in all"
