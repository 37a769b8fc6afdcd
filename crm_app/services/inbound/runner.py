"""Who processes what, when: one batch runner per owner, gathering a short window of requests.

Intake stores a request and kicks its owner (``intake.kick``: at most one queued
``inbound.batch`` task per owner while Redis is there). The task takes the owner's lock, then
repeatedly claims the due requests — waiting until the oldest is ``INBOUND_BATCH_WINDOW_MS`` old
or 50 are there, so a lone message is never held longer than the window — and hands them to
``processor.process_batch``. It stops when nothing is due, and schedules itself for the earliest
retry. Claimed requests are marked in flight (``next_attempt_at`` pushed past the lock's TTL), so
a runner killed mid-batch leaves them to the next one, which recovers any deal already made.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.models import InboundRequest, InboundStatus
from crm_app.services.inbound.intake import (
    STALE_AFTER_SECONDS,
    enqueue,
    get_or_create_person,
    is_eager,
    kick,
)
from crm_app.services.inbound.processor import Result, process_batch, setting
from crm_app.services.locks import LockTimeout, named_lock

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.02
# A batch gathers until 50 requests are due (one full leads/complex), but takes whatever is
# already waiting, up to this many: copies and repeat messages collapse into fewer deals, and
# the creates and notes still go out in calls of at most 50.
CLAIM_LIMIT = 200


def _now() -> datetime:
    return datetime.now(UTC)


def _due(owner_id: int, now: datetime) -> Any:
    return sa.and_(
        InboundRequest.owner_id == owner_id,
        InboundRequest.status == InboundStatus.QUEUED,
        sa.or_(
            InboundRequest.attempts == 0,
            InboundRequest.next_attempt_at.is_(None),
            InboundRequest.next_attempt_at <= now,
        ),
    )


def _gather(owner_id: int, size: int, window: float) -> None:
    """Wait until `size` requests are due or the oldest due one is `window` seconds old."""
    while True:
        db.session.rollback()  # a fresh snapshot each look
        now = _now()
        count, oldest = db.session.execute(
            select(func.count(), func.min(InboundRequest.created_at)).where(_due(owner_id, now))
        ).one()
        if not count or count >= size or oldest is None:
            return
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        left = (oldest - now).total_seconds() + window
        if left <= 0:
            return
        time.sleep(min(POLL_SECONDS, left))


def claim(
    owner_id: int, size: int, *, window: float = 0.0, limit: int | None = None
) -> list[InboundRequest]:
    """The owner's next due requests, oldest first, marked in flight (caller holds the lock):
    gathered until `size` are due or the window passed, then up to `limit` taken."""
    if window > 0:
        _gather(owner_id, size, window)
    now = _now()
    rows = list(
        db.session.scalars(
            select(InboundRequest)
            .where(_due(owner_id, now))
            .order_by(InboundRequest.id)
            .limit(limit or size)
        )
    )
    in_flight = now + timedelta(seconds=setting("INBOUND_LOCK_TTL_SECONDS") + 5)
    for req in rows:
        if req.person_id is None:
            req.person_id = get_or_create_person(req.owner_id, req.channel, req.external_id).id
        req.attempts = (req.attempts or 0) + 1
        # While this attempt runs, neither the beat nor another runner takes it.
        req.next_attempt_at = in_flight
    # The rows go straight to the batch: no reason to reload each of them after this commit.
    session = db.session()
    expire, session.expire_on_commit = session.expire_on_commit, False
    try:
        db.session.commit()
    finally:
        session.expire_on_commit = expire
    return rows


def run_owner(owner_id: int, *, max_seconds: float = 50.0) -> dict[str, Any]:
    """Process the owner's due requests batch by batch; returns counts and what is left."""
    from crm_app.services.inbound.intake import clear_kick

    ttl = float(setting("INBOUND_LOCK_TTL_SECONDS"))
    wait = float(setting("INBOUND_LOCK_WAIT_SECONDS"))
    size = max(1, min(50, setting("INBOUND_BATCH_SIZE")))
    # No waiting for company when tasks run inline (eager mode): the caller is a web request.
    window = 0.0 if is_eager() else setting("INBOUND_BATCH_WINDOW_MS") / 1000.0
    started = time.monotonic()
    batches = processed = 0
    more = False
    try:
        with named_lock(f"inbound-batch-{owner_id}", ttl=ttl, wait=wait):
            # Cleared once we hold the lock: from here on a new request must queue a new task.
            clear_kick(owner_id)
            while True:
                rows = claim(owner_id, size, window=window, limit=CLAIM_LIMIT)
                if not rows:
                    break
                batches += 1
                processed += len(rows)
                process_batch(owner_id, rows)
                if time.monotonic() - started > max_seconds:
                    more = True
                    break
    except LockTimeout:
        # Another runner holds the owner for longer than we waited; look again shortly.
        kick(owner_id, countdown=1.0, force=True)
        return {"batches": 0, "requests": 0, "busy": True}
    if more:
        kick(owner_id, force=True)
    else:
        _schedule_retry(owner_id)
    return {"batches": batches, "requests": processed, "more": more}


def _schedule_retry(owner_id: int) -> None:
    """Kick the owner again when its earliest waiting retry falls due."""
    db.session.rollback()
    earliest = db.session.scalar(
        select(func.min(InboundRequest.next_attempt_at)).where(
            InboundRequest.owner_id == owner_id,
            InboundRequest.status == InboundStatus.QUEUED,
            InboundRequest.attempts > 0,
        )
    )
    if earliest is None or is_eager():
        return  # nothing waiting (or inline: the beat sends retries)
    if earliest.tzinfo is None:
        earliest = earliest.replace(tzinfo=UTC)
    kick(owner_id, countdown=max(0.5, (earliest - _now()).total_seconds()), force=True)


def process(request_id: int) -> Result:
    """Process the owner's due requests, this one included; safe to call any number of times."""
    req = db.session.get(InboundRequest, request_id)
    if req is None:
        return Result("missing")
    if req.status != InboundStatus.QUEUED:
        return Result(req.status)
    run_owner(req.owner_id)
    db.session.rollback()
    db.session.expire_all()
    req = db.session.get(InboundRequest, request_id)
    if req is None:
        return Result("missing")
    if req.status != InboundStatus.QUEUED:
        return Result(req.status)
    due = req.next_attempt_at
    if due is not None and due.tzinfo is None:
        due = due.replace(tzinfo=UTC)
    wait = max(0.0, (due - _now()).total_seconds()) if due is not None else 0.0
    return Result(InboundStatus.QUEUED, retry_in=wait)


def requeue_stale(limit: int = 500, send: Any = enqueue) -> int:
    """Beat: hand requests whose run was lost, or whose retry is due, back to their owner's
    runner (a kick per request; the kick flag makes repeats free)."""
    now = _now()
    fresh = now - timedelta(seconds=STALE_AFTER_SECONDS)
    rows = list(
        db.session.scalars(
            select(InboundRequest)
            .where(
                InboundRequest.status == InboundStatus.QUEUED,
                sa.or_(
                    InboundRequest.next_attempt_at <= now,
                    sa.and_(
                        InboundRequest.next_attempt_at.is_(None),
                        InboundRequest.created_at <= fresh,
                    ),
                ),
            )
            .order_by(InboundRequest.id)
            .limit(limit)
        )
    )
    sent = sum(1 for req in rows if send(req.id))
    if rows:
        logger.info("re-enqueued %d of %d stale inbound requests", sent, len(rows))
    return sent
