"""Celery tasks for inbound (thin: ids in, service call, logging)."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="inbound.batch")
def run_batch(owner_id: int) -> dict[str, Any]:
    """Process an owner's due inbound requests in batches (see services/inbound/runner.py)."""
    from crm_app.services.inbound.runner import run_owner

    result = run_owner(int(owner_id))
    logger.info("inbound batches for owner %s: %s", owner_id, result)
    return result


@shared_task(name="inbound.process")
def process_request(request_id: int) -> str:
    """Process one request (with whatever else of its owner is due); kept for queued messages
    sent before batching existed, and for callers that name a request."""
    from crm_app.services.inbound.runner import process

    return process(int(request_id)).status


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
