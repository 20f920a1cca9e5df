"""Backing off from a database that refuses us, without flooding the log.

A read-only database after a failover, a revoked privilege or a poison row
refuses every attempt the same way. Retrying at once costs a core and
thousands of log lines a second; this waits 0.1 s, doubling to 10 s with
jitter (so a fleet of workers does not retry in lock step), and resets on
the first success. The log gets the first refusal, a summary at most every
``summary_every_s`` while it lasts (or at once when the error changes), and
one line when it works again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 10.0
SUMMARY_EVERY_S = 30.0


class Backoff:
    def __init__(self, what: str, logger: logging.Logger, *, first_s: float = FIRST_DELAY_S,
                 max_s: float = MAX_DELAY_S, summary_every_s: float = SUMMARY_EVERY_S,
                 level: int = logging.ERROR, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None):
        self.what = what
        self.log = logger
        self.first_s = first_s
        self.max_s = max_s
        self.summary_every_s = summary_every_s
        self.level = level
        self.clock = clock
        self.rng = rng or random.Random()
        self.failures = 0          # in a row, since the last success
        self.since: float | None = None
        self._last_error: str | None = None
        self._unlogged = 0
        self._logged_at = 0.0

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def delay_for(self, failures: int) -> float:
        """The wait after the ``failures``-th refusal in a row: exponential, capped, jittered (50-100%)."""
        # The exponent is capped: 2**1024 does not fit a float, and the delay
        # stopped growing at max_s long before.
        raw = min(self.max_s, self.first_s * 2.0 ** min(max(0, failures - 1), 60))
        return raw * (0.5 + 0.5 * self.rng.random())

    def failed(self, error: str) -> float:
        """Count one refusal; log as the module says; return how long to wait before the next try."""
        now = self.clock()
        self.failures += 1
        delay = self.delay_for(self.failures)
        if self.failures == 1:
            self.since = now
            self._log(now, f"{self.what} was refused: {error}; retrying with backoff (up to {self.max_s:g}s)")
        elif error != self._last_error or now - self._logged_at >= self.summary_every_s:
            self._unlogged += 1
            self._log(now, f"{self.what} still refused ({self._unlogged} more time(s) in "
                           f"{now - self._logged_at:.0f}s, {self.failures} in a row): {error}; next try in "
                           f"{delay:.1f}s")
        else:
            self._unlogged += 1
        self._last_error = error
        return delay

    def succeeded(self) -> None:
        """The next try worked: say so once, and start over from the first delay."""
        if self.failures:
            self.log.warning("%s works again after %d refusal(s) over %.1fs", self.what, self.failures,
                             self.clock() - (self.since or self.clock()))
        self.failures = 0
        self.since = None
        self._last_error = None
        self._unlogged = 0

    def _log(self, now: float, message: str) -> None:
        self.log.log(self.level, "%s", message)
        self._logged_at = now
        self._unlogged = 0
