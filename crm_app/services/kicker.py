"""Coalesced task kicks from a daemon thread, so an acknowledgement never waits on the broker.

A web request that stored work only records "key N has new rows" in memory. One thread per
process and purpose sends at most one kick per key every ``interval`` seconds (a burst pays the
broker round trip a few times a second, not once per request; a queued task sees every row
committed before it starts anyway) and retries a failed kick with back-off. The beat's sweeps
pick up anything a crash lost, so a row is only ever delayed, never dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from flask import Flask

logger = logging.getLogger(__name__)

RETRY_MIN, RETRY_MAX = 0.5, 10.0
KICK_INTERVAL = 0.05


class Kicker:
    """A daemon thread draining a set of keys through ``send(key) -> bool`` (False: retry)."""

    def __init__(self, send: Callable[[int], bool], name: str, interval: float = KICK_INTERVAL):
        self.send = send
        self.interval = interval
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.keys: set[int] = set()
        self.waiting: set[int] = set()  # keys kicked too recently, to kick when allowed
        self.last: dict[int, float] = {}
        self.retry: dict[int, tuple[float, float]] = {}  # key -> (due, delay)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def add(self, key: int) -> None:
        with self.lock:
            if key in self.keys or key in self.waiting:
                return  # already due: waking the thread again would only cost the GIL
            self.keys.add(key)
        self.wake.set()

    def _next_timeout(self) -> float | None:
        dues = [due for due, _ in self.retry.values()]
        with self.lock:
            dues += [self.last.get(k, 0.0) + self.interval for k in self.waiting]
        if not dues:
            return None
        return max(0.005, min(dues) - time.monotonic())

    def _due(self) -> set[int]:
        now = time.monotonic()
        with self.lock:
            keys, self.keys = self.keys, set()
            keys |= self.waiting
            keys |= {k for k, (due, _) in self.retry.items() if due <= now}
            ready = {k for k in keys if now - self.last.get(k, -self.interval) >= self.interval}
            self.waiting = keys - ready
        return ready

    def _run(self) -> None:
        while True:
            self.wake.wait(self._next_timeout())
            self.wake.clear()
            for key in self._due():
                self.last[key] = time.monotonic()
                try:
                    ok = self.send(key)
                except Exception:
                    logger.exception("%s failed for %s", self.thread.name, key)
                    ok = False
                if ok:
                    self.retry.pop(key, None)
                else:
                    delay = min(RETRY_MAX, self.retry.get(key, (0.0, RETRY_MIN / 2))[1] * 2)
                    self.retry[key] = (time.monotonic() + delay, delay)


_guard = threading.Lock()


def kicker_for(app: Flask, slot: str, send: Callable[[int], bool]) -> Kicker:
    """The app's kicker in ``app.extensions[slot]``, started on first use in this process."""
    kicker: Kicker | None = app.extensions.get(slot)
    # After a fork (gunicorn workers) the parent's thread does not exist in the child.
    if kicker is None or kicker.pid != os.getpid():
        with _guard:
            kicker = app.extensions.get(slot)
            if kicker is None or kicker.pid != os.getpid():
                kicker = app.extensions[slot] = Kicker(send, name=slot.replace("_", "-"))
    return kicker
