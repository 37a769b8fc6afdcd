"""Hand stored deliveries to Celery without ever slowing down or failing the acknowledgement.

The web request only records "owner N has new rows" in memory; a daemon thread per process
(`services/kicker.py`) sends at most one `webhooks.process` task per owner at a time. In Redis,
a per-owner flag means "a task is queued and has not started yet": while it is set, another kick
is redundant because that task has not read the inbox yet. The task clears the flag before it
reads. When the broker is down the kick is retried with back-off, and the beat's
`webhooks.drain_inbox` sweeps up anything left, so a delivery is never lost, only delayed.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app

from crm_app.services import queue
from crm_app.services.kicker import kicker_for

logger = logging.getLogger(__name__)

PROCESS_TASK = "webhooks.process"
FLAG_TTL = 10  # a flag whose task was lost expires; a spare task is harmless


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


def kick(owner_id: int, app: Flask | None = None) -> None:
    """Ask for processing of `owner_id`'s inbox soon; returns at once and never raises."""
    try:
        if app is None:
            app = current_app._get_current_object()  # type: ignore[attr-defined]  # the proxy is typed as Flask
        bound = app
        kicker_for(app, "crm_webhook_kicker", lambda owner: kick_now(owner, app=bound)).add(
            owner_id
        )
    except Exception:
        logger.exception("could not schedule webhook processing for owner %s", owner_id)
