"""A small per-process cache of lookups that only remembers hits, for a few seconds.

The fast paths (account webhooks, amojo's channel hooks) look up who a token or scope belongs to
on every delivery; during a burst that is the same row thousands of times. Only hits are kept,
so a new owner or channel works at once; a rotated secret or a disconnect is seen at most the
TTL later. Bounded in size.
"""

from __future__ import annotations

import time
from typing import Any, Generic, TypeVar

from flask import Flask

V = TypeVar("V")


class TTLCache(Generic[V]):
    """key → value for `ttl` seconds; cleared when more than `size` keys are live."""

    def __init__(self, ttl: float, size: int = 1024) -> None:
        self.ttl = ttl
        self.size = size
        self.items: dict[str, tuple[float, V]] = {}

    def get(self, key: str) -> V | None:
        hit = self.items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: str, value: V) -> None:
        if self.ttl <= 0:
            return
        if len(self.items) >= self.size:
            self.items.clear()  # rare: more live keys than slots; start over
        self.items[key] = (time.monotonic() + self.ttl, value)


def cache_for(app: Flask, slot: str) -> TTLCache[Any]:
    """The app's cache in ``app.extensions[slot]``, TTL from WEBHOOK_TOKEN_CACHE_SECONDS (0: off)."""
    ttl = float(app.config.get("WEBHOOK_TOKEN_CACHE_SECONDS", 5))
    cache: TTLCache[Any] | None = app.extensions.get(slot)
    if cache is None or cache.ttl != ttl:
        cache = app.extensions[slot] = TTLCache(ttl)
    return cache
