"""Celery tasks for tokens (thin: ids in, service call, retries and logging)."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="tokens.ping")
def ping(owner_id: int) -> int:
    """Round-trip check used by the worker tests."""
    from crm_app.extensions import db
    from crm_app.models import SyncLog

    db.session.add(SyncLog(owner_id=owner_id, operation="ping", status="success", details={}))
    db.session.commit()
    return owner_id
