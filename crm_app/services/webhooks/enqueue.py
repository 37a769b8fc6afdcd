"""Hand stored deliveries to Celery without ever slowing down or failing the acknowledgement.

The web request only records "owner N has new rows" in memory; a daemon thread per process
sends at most one `webhooks.process` task per owner at a time. In Redis, a per-owner flag means
"a task is queued and has not started yet": while it is set, another kick is redundant because
that task has not read the inbox yet. The task clears the flag before it reads. When the broker
is down the kick is retried with back-off, and the beat's `webhooks.drain_inbox` sweeps up
anything left, so a delivery is never lost, only delayed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from flask import Flask, current_app

from crm_app.services import queue

logger = logging.getLogger(__name__)

PROCESS_TASK = "webhooks.process"
FLAG_TTL = 10  # a flag whose task was lost expires; a spare task is harmless
RETRY_MIN, RETRY_MAX = 0.5, 10.0
KICK_INTERVAL = 0.05


def _flag_key(owner_id: int) -> str:
    return f"crm:webhooks:queued:{owner_id}"


def _redis(app: Flask) -> Any | None:
    url = app.config.get("REDIS_URL")
    if not url:
        return None
    cache = app.extensions.setdefault("crm_webhook_redis", {})
    if url not in cache:
        import redis

        # Short timeouts: a hung broker must not stall the kicker thread for long.
        cache[url] = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    return cache[url]


def clear_flag(owner_id: int) -> None:
    """Called by the task before it reads the inbox (see the module docstring)."""
    client = _redis(current_app._get_current_object())  # type: ignore[attr-defined]  # proxy typed as Flask
    if client is None:
        return
    try:
        client.delete(_flag_key(owner_id))
    except Exception as exc:
        logger.warning("could not clear the webhook queue flag: %s", type(exc).__name__)


def kick_now(owner_id: int, countdown: float | None = None, app: Flask | None = None) -> bool:
    """Queue processing for one owner unless a task is already waiting; False on failure."""
    if app is None:
        app = current_app._get_current_object()  # type: ignore[attr-defined]  # proxy typed as Flask
    client = None if app.config.get("CELERY_EAGER") else _redis(app)
    try:
        if client is not None and not client.set(_flag_key(owner_id), "1", nx=True, ex=FLAG_TTL):
            return True  # a queued task will see the new rows
        with app.app_context():
            queue.enqueue(PROCESS_TASK, owner_id, countdown=countdown)
        return True
    except Exception as exc:
        logger.warning(
            "could not queue webhook processing for owner %s (%s); will retry",
            owner_id,
            type(exc).__name__,
        )
        if client is not None:
            try:
                client.delete(_flag_key(owner_id))
            except Exception:
                logger.debug("flag cleanup failed too", exc_info=True)
        return False


class Kicker:
    """One per process and app: a daemon thread draining a set of owner ids.

    At most one kick per owner every KICK_INTERVAL seconds: under a burst the Redis round trip
    is paid a few times a second, not once per delivery, and a queued task sees every row
    committed before it starts anyway.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.owners: set[int] = set()
        self.waiting: set[int] = set()  # owners kicked too recently, to kick when allowed
        self.last: dict[int, float] = {}
        self.retry: dict[int, tuple[float, float]] = {}  # owner -> (due, delay)
        self.thread = threading.Thread(target=self._run, name="webhook-kicker", daemon=True)
        self.thread.start()

    def add(self, owner_id: int) -> None:
        with self.lock:
            if owner_id in self.owners or owner_id in self.waiting:
                return  # already due: waking the thread again would only cost the GIL
            self.owners.add(owner_id)
        self.wake.set()

    def _next_timeout(self) -> float | None:
        dues = [due for due, _ in self.retry.values()]
        with self.lock:
            dues += [self.last.get(o, 0.0) + KICK_INTERVAL for o in self.waiting]
        if not dues:
            return None
        return max(0.005, min(dues) - time.monotonic())

    def _due(self) -> set[int]:
        now = time.monotonic()
        with self.lock:
            owners, self.owners = self.owners, set()
            owners |= self.waiting
            owners |= {o for o, (due, _) in self.retry.items() if due <= now}
            ready = {o for o in owners if now - self.last.get(o, -KICK_INTERVAL) >= KICK_INTERVAL}
            self.waiting = owners - ready
        return ready

    def _run(self) -> None:
        while True:
            self.wake.wait(self._next_timeout())
            self.wake.clear()
            for owner_id in self._due():
                self.last[owner_id] = time.monotonic()
                try:
                    ok = kick_now(owner_id, app=self.app)
                except Exception:
                    logger.exception("webhook kicker failed for owner %s", owner_id)
                    ok = False
                if ok:
                    self.retry.pop(owner_id, None)
                else:
                    delay = min(RETRY_MAX, self.retry.get(owner_id, (0.0, RETRY_MIN / 2))[1] * 2)
                    self.retry[owner_id] = (time.monotonic() + delay, delay)


_guard = threading.Lock()


def kick(owner_id: int, app: Flask | None = None) -> None:
    """Ask for processing of `owner_id`'s inbox soon; returns at once and never raises."""
    try:
        if app is None:
            app = current_app._get_current_object()  # type: ignore[attr-defined]  # the proxy is typed as Flask
        kicker: Kicker | None = app.extensions.get("crm_webhook_kicker")
        # After a fork (gunicorn workers) the parent's thread does not exist in the child.
        if kicker is None or kicker.pid != os.getpid():
            with _guard:
                kicker = app.extensions.get("crm_webhook_kicker")
                if kicker is None or kicker.pid != os.getpid():
                    kicker = Kicker(app)
                    app.extensions["crm_webhook_kicker"] = kicker
        kicker.add(owner_id)
    except Exception:
        logger.exception("could not schedule webhook processing for owner %s", owner_id)
