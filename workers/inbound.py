"""Celery tasks for inbound (thin: ids in, service call, retries and logging)."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)

# After this many Celery retries the request stays queued and inbound.retry_stale takes over,
# so a long amoCRM outage does not keep a growing pile of countdown messages in the broker.
MAX_CELERY_RETRIES = 8


@shared_task(name="inbound.process", bind=True, max_retries=None)
def process_request(self, request_id: int) -> str:
    """Process one inbound request; transient failures come back with backoff."""
    from crm_app.services.inbound.processor import process

    result = process(int(request_id))
    if result.retry_in is None:
        return result.status
    if self.request.is_eager or self.request.retries >= MAX_CELERY_RETRIES:
        logger.info(
            "inbound request %s left to the beat after %d retries", request_id, self.request.retries
        )
        return result.status
    raise self.retry(countdown=result.retry_in)


@shared_task(name="inbound.retry_stale")
def retry_stale() -> int:
    """Beat: re-enqueue queued requests whose run was lost or whose retries ran out."""
    from crm_app.services.inbound.processor import requeue_stale

    return requeue_stale()
