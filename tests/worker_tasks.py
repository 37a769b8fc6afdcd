"""Probe tasks for the worker tests; the `celery_worker` fixture's workers import this module."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="tests.ping")
def ping(owner_id: int) -> int:
    """Leave a `ping` line in the owner's sync log, from inside the app context."""
    from crm_app.extensions import db
    from crm_app.models import SyncLog

    db.session.add(SyncLog(owner_id=owner_id, operation="ping", status="success", details={}))
    db.session.commit()
    return owner_id
