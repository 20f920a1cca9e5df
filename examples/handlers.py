"""Handlers for the quick start: `angela-queue run --app examples.handlers`."""

import asyncio
import time

from angela_queue import task


@task("chat_reply", priority=6)
async def chat_reply(text: str, emotional: bool = False) -> str:
    await asyncio.sleep(0.05)  # e.g. a call to a model
    return f"replied to {text!r}" + (" gently" if emotional else "")


@task("send_email", priority=7, max_attempts=3, timeout=10)
def send_email(to: str, subject: str) -> dict:
    time.sleep(0.02)
    return {"to": to, "subject": subject, "sent": True}


@task("learning_analysis", batch=True)
def learning_analysis(payloads: list[dict]) -> list[int]:
    """Low-priority routine work: arrives in batches of up to 5."""
    return [len(p.get("text", "")) for p in payloads]


@task("flaky", max_attempts=2, backoff_base=0.2)
def flaky(n: int) -> None:
    raise RuntimeError(f"flaky task {n} always fails")
