"""The owner's webhook URL secret and its amoCRM subscription (POST/DELETE /api/v4/webhooks)."""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from sqlalchemy import select

from crm_app.amocrm.errors import AmoCRMAPIError, AmoCRMBlocked, AmoCRMPaymentRequired
from crm_app.extensions import db
from crm_app.models import AmoConfig

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/amocrm/"
MANUAL = "subscribe manually"

# amoCRM's `settings` names per mirrored entity
# (https://www.amocrm.ru/developers/content/crm_platform/webhooks-api).
EVENTS_BY_ENTITY: dict[str, list[str]] = {
    "leads": [
        "add_lead",
        "update_lead",
        "delete_lead",
        "restore_lead",
        "status_lead",
        "responsible_lead",
    ],
    "contacts": [
        "add_contact",
        "update_contact",
        "delete_contact",
        "restore_contact",
        "responsible_contact",
    ],
    "tasks": ["add_task", "update_task", "delete_task", "responsible_task"],
}
_FLAGS = {"leads": "sync_leads", "contacts": "sync_contacts", "tasks": "sync_tasks"}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _config(owner_id: int, *, create: bool = False) -> AmoConfig | None:
    cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
    if cfg is None and create:
        cfg = AmoConfig(owner_id=owner_id)
        db.session.add(cfg)
        db.session.flush()
    return cfg


def ensure_webhook_token(owner_id: int) -> str:
    """The owner's webhook secret, created on first use (stored encrypted and as SHA-256)."""
    cfg = _config(owner_id, create=True)
    assert cfg is not None
    if cfg.webhook_token and cfg.webhook_token_hash == token_hash(cfg.webhook_token):
        return cfg.webhook_token
    token = secrets.token_urlsafe(32)
    cfg.webhook_token = token
    cfg.webhook_token_hash = token_hash(token)
    db.session.commit()
    return token


def rotate_webhook_token(owner_id: int) -> str:
    """Issue a new secret; the old URL stops working at once (resubscribe afterwards)."""
    cfg = _config(owner_id, create=True)
    assert cfg is not None
    token = secrets.token_urlsafe(32)
    cfg.webhook_token = token
    cfg.webhook_token_hash = token_hash(token)
    cfg.webhook_subscribed = False
    db.session.commit()
    return token


def rotate_url(owner_id: int) -> dict[str, Any]:
    """A new webhook URL (the old one leaked, say): the old destination is removed from amoCRM,
    the old URL answers 404 from now on, and the new one is subscribed when amoCRM is connected.

    Deliveries already stored are kept; amoCRM's in-flight retries to the old URL are lost to
    us, which the next incremental sync makes good (it reads everything changed since the last).
    """
    cfg = _config(owner_id)
    connected = bool(cfg and cfg.account_id)
    if connected:
        unsubscribe(owner_id)
    rotate_webhook_token(owner_id)
    if not connected:
        return subscription_state(owner_id) | {"rotated": True}
    return subscribe(owner_id) | {"rotated": True}


def webhook_url(owner_id: int) -> str:
    """PUBLIC_URL + /webhooks/amocrm/<token> (creates the token if needed)."""
    base = str(current_app.config.get("PUBLIC_URL") or "").rstrip("/")
    return f"{base}{WEBHOOK_PATH}{ensure_webhook_token(owner_id)}"


def masked_url(owner_id: int) -> str:
    """The URL with the secret hidden, for people who may see but not use it."""
    base = str(current_app.config.get("PUBLIC_URL") or "").rstrip("/")
    return f"{base}{WEBHOOK_PATH}…"


def wanted_events(cfg: AmoConfig | None) -> list[str]:
    """The `settings` list the owner's sync flags call for."""
    events: list[str] = []
    for entity, names in EVENTS_BY_ENTITY.items():
        if cfg is None or getattr(cfg, _FLAGS[entity], True):
            events.extend(names)
    return events


def _record(cfg: AmoConfig, subscribed: bool, error: str | None) -> None:
    cfg.webhook_subscribed = subscribed
    cfg.webhook_error = error[:500] if error else None
    db.session.commit()


def subscribe(owner_id: int) -> dict[str, Any]:
    """Point the account's webhooks at our URL with the events the sync flags need.

    Never raises for an amoCRM refusal: 403 (no admin rights, or webhooks not in the plan) and
    402 record "subscribe manually" so the page shows the manual set-up; other failures are
    recorded on the config and returned.
    """
    from crm_app.services.amo import client_for_owner, record_api_failure, record_api_success

    url = webhook_url(owner_id)
    cfg = _config(owner_id)
    assert cfg is not None  # webhook_url() created it
    events = wanted_events(cfg)
    state: dict[str, Any] = {"url": url, "events": events, "subscribed": False, "manual": False}
    if not events:
        unsubscribe(owner_id)
        state["error"] = None
        return state
    try:
        client = client_for_owner(owner_id)
    except Exception as exc:  # not configured / not connected
        _record(cfg, False, f"not connected: {exc}")
        state["error"] = cfg.webhook_error
        return state
    began = datetime.now(UTC)
    try:
        hook = client.subscribe_webhook(url, events)
    except (AmoCRMBlocked, AmoCRMPaymentRequired) as exc:
        if isinstance(exc, AmoCRMBlocked) and exc.from_gateway:
            record_api_failure(owner_id, exc)  # a real block, not a rights problem
        _record(cfg, False, f"{MANUAL}: amoCRM refused the API call (HTTP {exc.status})")
        state.update(manual=True, error=cfg.webhook_error)
        return state
    except AmoCRMAPIError as exc:
        _record(cfg, False, f"amoCRM: {exc.message}")
        state["error"] = cfg.webhook_error
        return state
    finally:
        client.close()
    _record(cfg, not hook.get("disabled", False), None)
    record_api_success(owner_id, began)
    logger.info("owner %s subscribed to %d webhook events", owner_id, len(events))
    state.update(subscribed=cfg.webhook_subscribed, error=None, hook_id=hook.get("id"))
    return state


def unsubscribe(owner_id: int) -> dict[str, Any]:
    """Remove our destination from the account (call before the tokens are forgotten)."""
    from crm_app.services.amo import client_for_owner

    cfg = _config(owner_id)
    if cfg is None or not cfg.webhook_token:
        return {"unsubscribed": False, "error": None}
    base = str(current_app.config.get("PUBLIC_URL") or "").rstrip("/")
    url = f"{base}{WEBHOOK_PATH}{cfg.webhook_token}"
    try:
        client = client_for_owner(owner_id)
    except Exception as exc:
        _record(cfg, False, None)
        return {"unsubscribed": False, "error": f"not connected: {exc}"}
    try:
        removed = client.unsubscribe_webhook(url)
    except AmoCRMAPIError as exc:
        # Disconnect goes on regardless; the admin sees why the hook may still exist.
        _record(cfg, False, f"unsubscribe failed: {exc.message}")
        return {"unsubscribed": False, "error": cfg.webhook_error}
    finally:
        client.close()
    _record(cfg, False, None)
    return {"unsubscribed": removed, "error": None}


def subscription_state(owner_id: int, *, reveal: bool = True) -> dict[str, Any]:
    """What the admin card shows: URL, events, subscribed or why not."""
    cfg = _config(owner_id)
    url = webhook_url(owner_id) if reveal else masked_url(owner_id)
    cfg = cfg or _config(owner_id)
    error = cfg.webhook_error if cfg else None
    return {
        "url": url,
        "events": wanted_events(cfg),
        "subscribed": bool(cfg and cfg.webhook_subscribed),
        "manual": bool(error and error.startswith(MANUAL)),
        "error": error,
        "connected": bool(cfg and cfg.account_id),
    }
