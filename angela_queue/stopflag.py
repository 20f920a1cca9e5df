"""A stop request a signal handler can make safely.

Hazard: ``threading.Event.set()`` takes the Event's lock. A Python signal
handler runs in the main thread, between two bytecodes of whatever it was
doing; if that was ``Event.wait()`` on the same Event, the thread may hold
that lock at that moment, and the handler then waits for it forever. This
hung the dashboard, now and then, on the SIGTERM that told it to stop.

A StopFlag is a plain attribute, written without a lock; its ``wait`` sleeps
in short steps and looks at the flag between them (``time.sleep`` resumes
after a handler returns, so a step ends at most ``step_s`` after the signal).
"""

from __future__ import annotations

import time

STEP_S = 0.05


class StopFlag:
    def __init__(self, step_s: float = STEP_S):
        self._set = False
        self._step_s = step_s

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Until set, or ``timeout`` seconds (None: no limit); returns whether it is set."""
        end = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while not self._set:
            left = self._step_s if end is None else min(self._step_s, end - time.monotonic())
            if left <= 0:
                break
            time.sleep(left)
        return self._set
