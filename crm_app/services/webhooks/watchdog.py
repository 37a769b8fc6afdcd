"""The subscription watchdog: put back a hook amoCRM switched off, then catch up by a sync.

amoCRM disables a webhook after more than 100 failed deliveries (an outage on our side, a
network problem) and never enables it again. Every WEBHOOK_WATCHDOG_SECONDS the beat reads
``GET /api/v4/webhooks``; a missing or disabled hook is subscribed again, and an incremental
sync fetches the changes whose webhooks were never sent. Each check that finds something
wrong (or fails) leaves a ``webhook_watchdog`` line in the sync log, which the Webhooks card
shows.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select

from crm_app.amocrm.errors import AmoCRMAPIError
from crm_app.extensions import db
from crm_app.models import AmoConfig, ConnectionStatus, SyncLog
from crm_app.services.webhooks import subscription

logger = logging.getLogger(__name__)

OPERATION = "webhook_watchdog"
ACTIVE, DISABLED, MISSING = "active", "disabled", "missing"


def owners_to_watch() -> list[int]:
    """Connected owners who receive webhooks (not those told to subscribe by hand)."""
    rows = db.session.scalars(
        select(AmoConfig).where(AmoConfig.status == ConnectionStatus.CONNECTED)
    )
    owners = []
    for cfg in rows:
        if not subscription.wanted_events(cfg) or not cfg.webhook_token:
            continue
        if (cfg.webhook_error or "").startswith(subscription.MANUAL):
            continue
        owners.append(cfg.owner_id)
    return owners


def hook_state(owner_id: int) -> str:
    """active / disabled / missing, as amoCRM reports our destination."""
    from crm_app.services.amo import client_for_owner

    url = subscription.webhook_url(owner_id)
    client = client_for_owner(owner_id)
    try:
        hooks = client.list_webhooks(destination=url)
    finally:
        client.close()
    # The filter is honoured by amoCRM; matching again keeps a plan without it correct too.
    ours = [h for h in hooks if h.get("destination") == url]
    if not ours:
        return MISSING
    return DISABLED if any(h.get("disabled") for h in ours) else ACTIVE


def check(owner_id: int) -> dict[str, Any]:
    """Check one owner's hook; re-subscribe and start an incremental sync when it is off."""
    from crm_app.services.sync import SyncError, start_sync

    try:
        found = hook_state(owner_id)
    except (AmoCRMAPIError, RuntimeError) as exc:
        result: dict[str, Any] = {"found": None, "error": str(exc)[:300]}
        _log(owner_id, "error", result)
        return result
    result = {"found": found, "resubscribed": False, "run_id": None}
    if found == ACTIVE:
        cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
        if cfg is not None and not cfg.webhook_subscribed:
            cfg.webhook_subscribed = True
            db.session.commit()
        return result
    logger.warning("owner %s: amoCRM webhook %s; subscribing again", owner_id, found)
    state = subscription.subscribe(owner_id)
    result["resubscribed"] = bool(state.get("subscribed"))
    if not result["resubscribed"]:
        result["error"] = state.get("error")
        _log(owner_id, "error", result)
        return result
    try:
        result["run_id"] = start_sync(owner_id, trigger="webhook").id
    except SyncError as exc:
        result["error"] = str(exc)
    _log(owner_id, "success", result)
    return result


def check_all() -> dict[int, dict[str, Any]]:
    results = {}
    for owner_id in owners_to_watch():
        try:
            results[owner_id] = check(owner_id)
        except Exception:
            db.session.rollback()
            logger.exception("webhook watchdog failed for owner %s", owner_id)
    return results


def _log(owner_id: int, status: str, details: dict[str, Any]) -> None:
    db.session.add(SyncLog(owner_id=owner_id, operation=OPERATION, status=status, details=details))
    db.session.commit()


def last_event(owner_id: int) -> dict[str, Any] | None:
    """The latest watchdog action for the Webhooks card: when, what it found, what it did."""
    row = db.session.scalar(
        select(SyncLog)
        .where(SyncLog.owner_id == owner_id, SyncLog.operation == OPERATION)
        .order_by(SyncLog.id.desc())
        .limit(1)
    )
    if row is None:
        return None
    at: datetime = row.timestamp
    return {"at": at, "status": row.status, **(row.details or {})}
