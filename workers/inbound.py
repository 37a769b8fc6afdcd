"""Celery tasks for inbound (thin: ids in, service call, retries and logging)."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task
from celery.exceptions import Reject, Retry
from flask import current_app

logger = logging.getLogger(__name__)

# After this many Celery retries the request stays queued and inbound.retry_stale takes over,
# so a long amoCRM outage does not keep a growing pile of countdown messages in the broker.
MAX_CELERY_RETRIES = 8
# How long one task waits for the database or Redis to come back before handing over to a retry.
OUTAGE_WAIT_SECONDS = 120.0


@shared_task(name="inbound.process", bind=True, max_retries=None)
def process_request(self, request_id: int) -> str:
    """Process one inbound request; transient failures come back with backoff."""
    from crm_app.extensions import db
    from crm_app.services import availability
    from crm_app.services.inbound.processor import process

    # Database or Redis down: wait it out here, in seconds, holding the message. A retry sent
    # with a countdown would wait in this worker's memory, and if the broker connection dropped
    # meanwhile it could only come back after the visibility timeout (hours).
    deadline = time.monotonic() + float(
        current_app.config.get("INBOUND_OUTAGE_WAIT_SECONDS", OUTAGE_WAIT_SECONDS)
    )
    waited = 0
    while True:
        try:
            result = process(int(request_id))
            break
        except Exception as exc:
            if not availability.transient(exc) or self.request.is_eager:
                raise
            db.session.rollback()
            pause = min(availability.backoff(waited), 5.0)
            if time.monotonic() + pause > deadline:
                logger.warning(
                    "inbound request %s: %s, retry later", request_id, type(exc).__name__
                )
                return _retry(self, int(request_id), pause, "queued")
            if waited == 0:
                logger.warning(
                    "inbound request %s: %s, waiting for it to come back",
                    request_id,
                    type(exc).__name__,
                )
            waited += 1
            time.sleep(pause)
    if result.retry_in is None:
        return result.status
    if self.request.is_eager or self.request.retries >= MAX_CELERY_RETRIES:
        logger.info(
            "inbound request %s left to the beat after %d retries", request_id, self.request.retries
        )
        return result.status
    return _retry(self, int(request_id), result.retry_in, result.status)


def _retry(task: Any, request_id: int, countdown: float, status: str) -> str:
    """Send the retry; if the broker is down too, the beat's sweep sends it when it is due."""
    from crm_app.services import availability
    from crm_app.services.inbound.intake import mark_due

    try:
        raise task.retry(countdown=countdown)
    except Retry:
        raise
    except Exception as exc:
        # Celery wraps a failed retry publish in Reject(requeue=False): the message is dropped.
        cause = getattr(exc, "reason", None) if isinstance(exc, Reject) else exc
        if not isinstance(cause, BaseException) or not availability.broker_unavailable(cause):
            raise
        mark_due(request_id, countdown)
        return status


@shared_task(name="inbound.retry_stale")
def retry_stale() -> int:
    """Beat: re-enqueue queued requests whose run was lost or whose retries ran out."""
    from crm_app.services.inbound.processor import requeue_stale

    return requeue_stale()
