"""Celery tasks for webhooks (thin: ids in, service call, retries and logging)."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="webhooks.process", bind=True)
def process(self, target: int | list[int]) -> dict[str, Any]:
    """Apply pending deliveries: `target` is an owner id, or a list of delivery ids."""
    from crm_app.services.webhooks import enqueue, inbox
    from crm_app.services.webhooks.apply import process_owner

    owners = inbox.owners_of(list(target)) if isinstance(target, list) else [int(target)]
    results: dict[str, Any] = {}
    for owner_id in owners:
        # Cleared before reading: a kick arriving from now on must queue a fresh task.
        enqueue.clear_flag(owner_id)
        try:
            result = process_owner(owner_id)
        except Exception as exc:
            # Redis (locks, throttle) gone mid-pass, say: the rows stay pending for the drain.
            logger.warning("webhook pass for owner %s failed: %s", owner_id, type(exc).__name__)
            results[str(owner_id)] = {"error": type(exc).__name__}
            continue
        results[str(owner_id)] = result
        if result.get("retry_in"):
            if self.request.is_eager:
                continue  # run inline, a countdown cannot wait: the next delivery kicks again
            enqueue.kick_now(owner_id, countdown=float(result["retry_in"]))
        elif result.get("more"):
            enqueue.kick_now(owner_id)
        logger.info("webhooks for owner %s: %s", owner_id, result)
    return results


@shared_task(name="webhooks.drain_inbox")
def drain_inbox() -> dict[str, Any]:
    """Beat: queue every owner with due pending deliveries (after a broker outage, say)."""
    from crm_app.services.webhooks import enqueue, inbox

    owners = inbox.owners_with_pending()
    queued = [owner_id for owner_id in owners if enqueue.kick_now(owner_id)]
    pruned = 0
    if _claim_prune_slot():
        pruned = inbox.prune()
    if owners or pruned:
        logger.info(
            "webhook drain: %d owners queued, %d old deliveries pruned", len(queued), pruned
        )
    return {"owners": queued, "pruned": pruned}


def _claim_prune_slot() -> bool:
    """Pruning once an hour is plenty; the sync engine's beat guard makes it once, anywhere."""
    try:
        from crm_app.services.sync import claim_beat_slot
    except ImportError:
        return True
    return bool(claim_beat_slot("webhooks.prune", 3600))


@shared_task(name="webhooks.subscribe")
def subscribe(owner_id: int) -> dict[str, Any]:
    """Subscribe the owner's webhook URL (queued on connect and when sync flags change)."""
    from crm_app.services.webhooks.subscription import subscribe as subscribe_owner

    return subscribe_owner(owner_id)


@shared_task(name="webhooks.watchdog")
def watchdog() -> dict[str, Any]:
    """Beat: re-subscribe hooks amoCRM disabled or lost, then sync what was missed."""
    from flask import current_app

    from crm_app.services.sync import claim_beat_slot
    from crm_app.services.webhooks.watchdog import check_all

    interval = float(current_app.config.get("WEBHOOK_WATCHDOG_SECONDS", 300))
    if not claim_beat_slot("webhooks.watchdog", interval):
        return {}
    return {str(owner): result for owner, result in check_all().items()}
