"""The worker's asyncio task factory (worker/loop.py): what it wraps, it cleans up."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from angela_queue.worker.loop import _contain_base_exceptions


def test_a_worker_task_cancelled_before_it_starts_leaves_no_coroutine_unawaited():
    """The worker's task factory wraps each coroutine; one cancelled before its
    first step must not leave the wrapped one to warn 'never awaited'."""
    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(_contain_base_exceptions)
        task = asyncio.ensure_future(asyncio.Event().wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert [w for w in caught if "never awaited" in str(w.message)] == []
