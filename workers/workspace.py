"""Celery tasks for workspace writes: drain an owner's outbox, and the beat's sweep."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="workspace.outbox", bind=True)
def drain_outbox(self: Any, owner_id: int) -> dict[str, Any]:
    """Send the owner's due outbox rows; queue the next pass when some are backing off."""
    from crm_app.services.workspace import outbox

    result = outbox.drain(int(owner_id))
    summary = {
        "applied": result.applied,
        "conflicts": result.conflicts,
        "failed": result.failed,
        "requests": result.requests,
        "retry_in": result.retry_in,
        "more": result.more,
    }
    if result.applied or result.conflicts or result.failed or result.errors:
        logger.info("outbox owner %s: %s", owner_id, summary)
    if not self.request.is_eager:
        if result.more:
            outbox.kick(int(owner_id))
        elif result.retry_in is not None:
            outbox.kick(int(owner_id), countdown=result.retry_in)
    return summary


@shared_task(name="workspace.outbox_sweep")
def sweep() -> list[int]:
    """Beat: queue a drain for every owner with due rows (a lost message, a broker outage)."""
    from crm_app.services.sync import claim_beat_slot
    from crm_app.services.workspace import outbox

    owners = outbox.owners_due()
    for owner_id in owners:
        outbox.kick(owner_id)
    if claim_beat_slot("workspace.prune", 3600):  # once an hour, whichever beat runs it
        pruned = outbox.prune()
        if pruned:
            logger.info("outbox: %d finished edits past retention pruned", pruned)
    return owners
