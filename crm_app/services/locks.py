"""Cross-process locks: Redis when configured, file locks for the embedded default."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import current_app

if TYPE_CHECKING:
    import redis


class LockTimeout(RuntimeError):
    """The lock was held elsewhere for longer than we were willing to wait."""


def _redis() -> redis.Redis | None:
    import redis

    url = current_app.config.get("REDIS_URL")
    if not url:
        return None
    cache: dict[str, redis.Redis] = current_app.extensions.setdefault("crm_redis", {})
    if url not in cache:
        cache[url] = redis.Redis.from_url(url)
    return cache[url]


# Locks this process could not release because Redis was down: released as soon as it is back,
# instead of blocking their names until the TTL runs out (minutes, for inbound requests).
_leftovers: list[Any] = []
_leftovers_guard = threading.Lock()


def _release(lock: Any) -> None:
    import redis

    token = lock.local.token  # redis-py forgets it before it tries to release
    try:
        lock.release()
    except redis.exceptions.LockError:
        pass  # expired meanwhile: nothing left to release
    except redis.exceptions.RedisError:
        with _leftovers_guard:
            _leftovers.append((lock, token))


def _release_leftovers() -> None:
    import redis

    with _leftovers_guard:
        pending, _leftovers[:] = list(_leftovers), []
    for index, (lock, token) in enumerate(pending):
        try:
            lock.do_release(token)
        except redis.exceptions.LockError:
            continue  # expired, or the token changed: not ours any more
        except redis.exceptions.RedisError:
            with _leftovers_guard:
                _leftovers.extend(pending[index:])
            return


@contextlib.contextmanager
def named_lock(name: str, *, ttl: float = 60.0, wait: float | None = 30.0) -> Iterator[None]:
    """Hold `name` across every process sharing this deployment.

    `wait=None` waits forever, `wait=0` fails at once. With Redis the lock expires after `ttl`
    so a killed holder cannot wedge it; file locks die with their process anyway.
    """
    client = _redis()
    if client is not None:
        _release_leftovers()
        lock = client.lock(
            f"crm:lock:{name}", timeout=ttl, blocking=wait != 0, blocking_timeout=wait
        )
        if not lock.acquire():
            raise LockTimeout(name)
        try:
            yield
        finally:
            _release(lock)
        return
    folder = Path(current_app.instance_path) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{name.replace('/', '_')}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(name) from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
