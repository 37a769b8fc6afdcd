"""Celery tasks for inbound (thin: ids in, service call, logging)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import shared_task
from flask import current_app

logger = logging.getLogger(__name__)

T = TypeVar("T")
# How long one task waits for the database or Redis to come back before handing over.
OUTAGE_WAIT_SECONDS = 120.0


class _GaveUp(Exception):
    """The outage outlasted the wait."""


def _outlast(what: str, work: Callable[[], T]) -> T:
    """Run `work`; a database or Redis outage is waited out here, in seconds, holding the message.

    A countdown retry would wait in this worker's memory and, if the broker connection dropped
    meanwhile, come back only after the visibility timeout. Past the wait `_GaveUp` is raised.
    """
    from crm_app.extensions import db
    from crm_app.services import availability

    deadline = time.monotonic() + float(
        current_app.config.get("INBOUND_OUTAGE_WAIT_SECONDS", OUTAGE_WAIT_SECONDS)
    )
    waited = 0
    while True:
        try:
            return work()
        except Exception as exc:
            if not availability.transient(exc):
                raise
            db.session.rollback()
            pause = min(availability.backoff(waited), 5.0)
            if time.monotonic() + pause > deadline:
                logger.warning("inbound %s: %s, later", what, type(exc).__name__)
                raise _GaveUp(type(exc).__name__) from exc
            if waited == 0:
                logger.warning(
                    "inbound %s: %s, waiting for it to come back", what, type(exc).__name__
                )
            waited += 1
            time.sleep(pause)


@shared_task(name="inbound.batch")
def run_batch(owner_id: int) -> dict[str, Any]:
    """Process an owner's due inbound requests in batches (see services/inbound/runner.py)."""
    from crm_app.services.inbound.intake import kick
    from crm_app.services.inbound.runner import run_owner

    try:
        result = _outlast(f"owner {owner_id}", lambda: run_owner(int(owner_id)))
    except _GaveUp as exc:
        # Kicked again; with the broker down too, the beat's sweep finds the requests due.
        kick(int(owner_id), countdown=5.0, force=True)
        return {"outage": str(exc)}
    logger.info("inbound batches for owner %s: %s", owner_id, result)
    return result


@shared_task(name="inbound.process")
def process_request(request_id: int) -> str:
    """Process one request (with whatever else of its owner is due); kept for queued messages
    sent before batching existed, and for callers that name a request."""
    from crm_app.services.inbound.intake import mark_due
    from crm_app.services.inbound.runner import process

    try:
        return _outlast(f"request {request_id}", lambda: process(int(request_id)).status)
    except _GaveUp:
        mark_due(int(request_id), 5.0)
        return "queued"


@shared_task(name="inbound.retry_stale")
def retry_stale() -> int:
    """Beat: hand queued requests whose run was lost or whose retry is due back to a runner."""
    from crm_app.services.inbound.runner import requeue_stale

    return requeue_stale()


@shared_task(name="inbound.refresh_fields")
def refresh_fields() -> int:
    """Beat: read again the custom-field catalogues older than INBOUND_FIELDS_TTL."""
    from crm_app.services.inbound.fields import refresh_stale

    return refresh_stale()
