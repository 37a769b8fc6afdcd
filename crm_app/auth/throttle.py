"""Sign-in throttling: growing delays per (username, address), shared by /login and /auth/token.

A failed password counts against the pair (name, client address), so guessing from one address
never locks the right password out from another. A few failures are free; after that each one
makes the pair wait longer (30 s, 1 min, 2 min, … up to 15 min by default). Independently, one
address that fails very often (password spraying over many names) waits the same way.

Counters live where every web process sees them: Redis when REDIS_URL is set, otherwise the
database (the embedded default: SQLite shared by `make run`'s gunicorn workers). If Redis does
not answer, the database takes over for that call; a sign-in never fails because of Redis.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from flask import current_app
from sqlalchemy import case, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crm_app.extensions import db
from crm_app.models import LoginFailure

logger = logging.getLogger(__name__)

# Wall-clock seconds (shared by every process); tests move it forward instead of sleeping.
clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class Policy:
    free: int  # failures allowed before the first delay
    delay: float  # the first delay, doubled by every further failure
    max_delay: float
    forget_after: float  # a key with no failure for this long starts from zero


class Store(Protocol):
    def blocked_until(self, key: str) -> float: ...

    def record_failure(self, key: str, policy: Policy, now: float) -> float: ...

    def clear(self, key: str) -> None: ...


def _delay(failures: int, policy: Policy) -> float:
    if failures < policy.free:
        return 0.0
    return float(min(policy.max_delay, policy.delay * 2 ** min(failures - policy.free, 30)))


class SqlStore:
    """Counters in the `login_failures` table, written in their own short transactions."""

    def blocked_until(self, key: str) -> float:
        with db.engine.connect() as conn:
            value = conn.scalar(select(LoginFailure.blocked_until).where(LoginFailure.key == key))
        return float(value or 0.0)

    def record_failure(self, key: str, policy: Policy, now: float) -> float:
        table = LoginFailure.__table__
        fresh = table.c.last_failure < now - policy.forget_after
        with db.engine.begin() as conn:
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            conn.execute(
                insert(table)
                .values(key=key, failures=0, last_failure=now, blocked_until=0.0)
                .on_conflict_do_nothing(index_elements=["key"])
            )
            # One UPDATE counts atomically however many web processes fail at once.
            failures = conn.scalar(
                update(table)
                .where(table.c.key == key)
                .values(failures=case((fresh, 1), else_=table.c.failures + 1), last_failure=now)
                .returning(table.c.failures)
            )
            until = now + _delay(int(failures or 1), policy)
            conn.execute(update(table).where(table.c.key == key).values(blocked_until=until))
        return until

    def clear(self, key: str) -> None:
        with db.engine.begin() as conn:
            conn.execute(LoginFailure.__table__.delete().where(LoginFailure.key == key))


class RedisStore:
    """Counters in Redis hashes that expire on their own."""

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

    @staticmethod
    def _name(key: str) -> str:
        return f"crm:login-failures:{key}"

    def blocked_until(self, key: str) -> float:
        value = self._redis.hget(self._name(key), "until")
        return float(value or 0.0)

    def record_failure(self, key: str, policy: Policy, now: float) -> float:
        name = self._name(key)
        failures = int(self._redis.hincrby(name, "n", 1))
        until = now + _delay(failures, policy)
        pipe = self._redis.pipeline()
        pipe.hset(name, "until", until)
        pipe.expire(name, int(policy.forget_after + policy.max_delay))
        pipe.execute()
        return until

    def clear(self, key: str) -> None:
        self._redis.delete(self._name(key))


class FallbackStore:
    """Redis first; the database for any call Redis does not answer."""

    def __init__(self, primary: Store, fallback: Store) -> None:
        self.primary, self.fallback = primary, fallback

    def _both(self, method: str, *args: object) -> float:
        import redis

        try:
            primary = float(getattr(self.primary, method)(*args) or 0.0)
        except (redis.RedisError, OSError) as exc:
            logger.warning("login throttle: Redis unavailable (%s), using the database", exc)
            return float(getattr(self.fallback, method)(*args) or 0.0)
        return primary

    def blocked_until(self, key: str) -> float:
        # A delay recorded in the database while Redis was down still holds after it returns.
        return max(self._both("blocked_until", key), self.fallback.blocked_until(key))

    def record_failure(self, key: str, policy: Policy, now: float) -> float:
        return self._both("record_failure", key, policy, now)

    def clear(self, key: str) -> None:
        self._both("clear", key)
        self.fallback.clear(key)


def _store() -> Store:
    url = str(current_app.config.get("REDIS_URL") or "")
    cache = current_app.extensions.setdefault("crm_login_throttle", {})
    if url not in cache:
        cache[url] = FallbackStore(RedisStore(url), SqlStore()) if url else SqlStore()
    store: Store = cache[url]
    return store


def _policies() -> tuple[Policy, Policy]:
    cfg = current_app.config
    delay, max_delay = float(cfg["LOGIN_DELAY_SECONDS"]), float(cfg["LOGIN_MAX_DELAY_SECONDS"])
    forget = float(cfg["LOGIN_FORGET_SECONDS"])
    pair = Policy(int(cfg["LOGIN_FREE_FAILURES"]), delay, max_delay, forget)
    address = Policy(int(cfg["LOGIN_ADDRESS_FREE_FAILURES"]), delay, max_delay, forget)
    return pair, address


def _keys(username: str, address: str) -> tuple[str, str]:
    name = username.strip().lower()[:80].encode("utf-8", "replace")
    addr = (address or "-").encode("utf-8", "replace")
    pair = hashlib.sha256(b"pair\0" + name + b"\0" + addr).hexdigest()
    return pair, hashlib.sha256(b"addr\0" + addr).hexdigest()


def retry_after(username: str, address: str) -> int:
    """Seconds this (username, address) must wait before its next sign-in attempt; 0 if none."""
    now = clock()
    store = _store()
    until = max(store.blocked_until(key) for key in _keys(username, address))
    return max(0, int(until - now + 0.999))


def record_failure(username: str, address: str) -> int:
    """Count a wrong password; returns the seconds the pair must now wait (0 while free)."""
    now = clock()
    store = _store()
    pair_policy, address_policy = _policies()
    pair_key, address_key = _keys(username, address)
    until = max(
        store.record_failure(pair_key, pair_policy, now),
        store.record_failure(address_key, address_policy, now),
    )
    return max(0, int(until - now + 0.999))


def record_success(username: str, address: str) -> None:
    """The right password: the pair starts from zero (the address's count stays)."""
    _store().clear(_keys(username, address)[0])
