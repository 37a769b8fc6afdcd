"""The client's retry policy: how often and how long to wait after a 429 or a failed call."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """When ``AmoCRMClient`` sends a call again, and after how long.

    Waits double from ``base_delay`` (1.5 s, 3 s, 6 s, ...) plus up to ``jitter`` × the wait, so
    many workers hitting one limit do not come back at the same moment. After a 429 the wait is
    at least the server's ``retry_after``, from the ``retry_after_from``-th 429 in a row on: with
    our own pacing below the limit, a lone 429 is network jitter that bunched two requests, and
    the per-second window clears long before Kommo's usual 300 s. A wait longer than
    ``max_wait`` is never slept on:
    with ``wait_out_long_pauses`` the client waits ``max_wait`` and tries again (a background
    sync can afford that), otherwise it raises ``AmoCRMRateLimited`` at once so an interactive
    caller can answer or reschedule. Never hammering matters: repeated 429s earn a 403 block.

    amoCRM rejects a 429 before doing anything, so every method is resent after one; other
    failures (5xx, timeouts) are retried ``failure_retries`` times for idempotent calls only.
    """

    rate_limit_retries: int = 3
    failure_retries: int = 2
    base_delay: float = 1.5
    max_wait: float = 10.0
    wait_out_long_pauses: bool = False
    retry_after_from: int = 1
    jitter: float = 0.25

    def backoff(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (1, 2, ...), before jitter."""
        return self.base_delay * 2.0 ** (attempt - 1)

    def rate_limit_wait(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before 429 retry ``attempt``, before jitter; None means give up."""
        if attempt > self.rate_limit_retries:
            return None
        delay = self.backoff(attempt)
        if retry_after and attempt >= self.retry_after_from:
            delay = max(delay, retry_after)
        if delay > self.max_wait:
            return self.max_wait if self.wait_out_long_pauses else None
        return delay

    def failure_wait(self, attempt: int) -> float | None:
        """Seconds to wait before retry ``attempt`` of a failed idempotent call; None: give up."""
        if attempt > self.failure_retries:
            return None
        return min(self.backoff(attempt), self.max_wait)

    def with_jitter(self, delay: float, rng: random.Random) -> float:
        return delay + rng.uniform(0, delay * self.jitter)
