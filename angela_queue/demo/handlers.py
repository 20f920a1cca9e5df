"""The demo's handlers: ``angela-queue run --app angela_queue.demo.handlers --queue demo``.

Tiny, realistic times (asyncio.sleep of tens to hundreds of milliseconds),
so the dashboard shows work in progress rather than a blur. Everything is in
the ``demo`` queue, so a demo pointed at a shared database (``--dsn``) is not
served by the workers of other queues, nor serves their tasks.
"""

from __future__ import annotations

import asyncio
import random

from angela_queue import task

from .workload import MEMORY_FAILURE_RATE, QUEUE


@task("chat_reply", queue=QUEUE, max_attempts=3, timeout=10)
async def chat_reply(text: str, emotional: bool = False, question: bool = False, user: int | None = None) -> dict:
    """Answer one message of a conversation (a model call, in real life)."""
    await asyncio.sleep(random.uniform(0.02, 0.15) + (0.05 if emotional else 0.0))
    tone = "gently" if emotional else "briefly"
    return {"user": user, "replied": tone, "answered_question": question, "chars": len(text)}


@task("learning_analysis", queue=QUEUE, priority=2, batch=True, timeout=30)
async def learning_analysis(payloads: list[dict]) -> list[dict]:
    """Routine analysis of past conversations; priority < 5, so up to 5 arrive per call."""
    await asyncio.sleep(sum(random.uniform(0.08, 0.2) for _ in payloads))
    return [{"conversation": p.get("conversation"), "insights": random.randint(0, 3)} for p in payloads]


@task("update_memory", queue=QUEUE, priority=6, max_attempts=1, timeout=10)
async def update_memory(user: int, facts: int = 1) -> dict:
    """Write what was learnt to a memory store that times out now and then: these
    are the demo's failures (one attempt each, so they stay ``failed`` until retried)."""
    await asyncio.sleep(random.uniform(0.01, 0.05))
    if random.random() < MEMORY_FAILURE_RATE:
        raise ConnectionError(f"memory store timed out saving {facts} fact(s) for user {user}")
    return {"user": user, "saved": facts}


@task("daily_report", queue=QUEUE, priority=5, timeout=30)
async def daily_report(user: int) -> dict:
    """A slow one: a summary of the user's day."""
    await asyncio.sleep(random.uniform(0.5, 1.5))
    return {"user": user, "sections": random.randint(2, 6)}
