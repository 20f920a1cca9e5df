"""angela-queue in a FastAPI app.

- One AsyncClient for the app's lifetime (FastAPI's lifespan): opened at
  startup, so a bad DSN or an unmigrated database stops the app at once.
- POST /orders enqueues inside the request's database transaction (a
  SQLAlchemy AsyncSession): the order row and its "ship_order" task commit
  together, or neither does (a failed request leaves no task behind).
- POST /newsletter enqueues on its own, and GET /tasks/{id}/result waits
  for a task's outcome.

Run it (needs `pip install fastapi uvicorn`):

    ANGELA_QUEUE_DSN=postgresql://... uvicorn examples.fastapi_app:app
    angela-queue run --app examples.fastapi_app   # the workers, in another shell
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from angela_queue import AsyncClient, TaskFailed, TaskNotFound, task


@task("ship_order", priority=7, max_attempts=5)
def ship_order(order_id: int, item: str) -> dict:
    return {"order_id": order_id, "shipped": item}


@task("send_newsletter", priority=3)
def send_newsletter(to: str) -> str:
    return f"newsletter sent to {to}"


def sqlalchemy_url(dsn: str) -> str:
    """postgresql+psycopg://... for SQLAlchemy, from a DSN in either form."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    password = f":{info['password']}" if info.get("password") else ""
    return (f"postgresql+psycopg://{info.get('user', '')}{password}@{info.get('host', 'localhost')}:"
            f"{info.get('port', 5432)}/{info.get('dbname', '')}")


DSN = os.environ.get("ANGELA_QUEUE_DSN") or os.environ.get("DATABASE_URL") or ""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_async_engine(sqlalchemy_url(DSN))
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with AsyncClient(DSN) as queue:            # fails fast on a bad DSN or schema
        app.state.queue = queue
        yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


async def session() -> AsyncIterator[AsyncSession]:
    async with app.state.sessions() as s:
        yield s


class Order(BaseModel):
    item: str
    quantity: int = 1


@app.post("/orders")
async def create_order(order: Order, db: AsyncSession = Depends(session)) -> dict:
    async with db.begin():                            # the request's transaction
        order_id = (await db.execute(text("INSERT INTO orders (item, quantity) VALUES (:item, :quantity) "
                                          "RETURNING id"), order.model_dump())).scalar_one()
        if order.quantity > 100:
            # Raising rolls back the order *and* its task: nothing ships.
            raise HTTPException(422, "we do not ship more than 100 at once")
        queued = await app.state.queue.enqueue("ship_order", {"order_id": order_id, "item": order.item}, conn=db)
    return {"order_id": order_id, "task_id": queued.id}


@app.post("/newsletter")
async def newsletter(to: str) -> dict:
    queued = await app.state.queue.enqueue("send_newsletter", {"to": to})
    return {"task_id": queued.id, "priority": queued.priority}


@app.get("/tasks/{task_id}/result")
async def result(task_id: int, timeout: float = 10.0) -> dict:
    try:
        return {"result": await app.state.queue.wait(task_id, timeout=timeout)}
    except TaskFailed as failed:
        raise HTTPException(409, f"task {task_id} {failed.status}: {failed.error}") from None
    except TaskNotFound:
        raise HTTPException(404, f"no task {task_id}") from None
    except TimeoutError:
        raise HTTPException(504, f"task {task_id} is not finished yet") from None
