"""Build amoCRM clients for an owner from the stored config, tokens and deployment settings."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy import select

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import AmoCRMBlocked
from crm_app.amocrm.hosts import AmoHosts
from crm_app.amocrm.oauth import OAuthClient
from crm_app.amocrm.throttle import FileThrottle, RedisThrottle, Throttle
from crm_app.extensions import db
from crm_app.models import AmoConfig, ConnectionStatus
from crm_app.services.tokens import DbTokenSource

logger = logging.getLogger(__name__)


class NotConfigured(RuntimeError):
    """The owner has not filled in the amoCRM settings."""


def hosts_for(cfg: AmoConfig) -> AmoHosts:
    if not cfg.subdomain:
        raise NotConfigured("subdomain is not set")
    return AmoHosts(
        cfg.subdomain,
        cfg.domain or "amocrm.ru",
        base_url=current_app.config.get("AMOCRM_BASE_URL") or None,
    )


def _proxy() -> str | None:
    return current_app.config.get("AMOCRM_PROXY") or None


def shared_throttle() -> Throttle:
    """One pacing budget per amoCRM account for every process of this deployment."""
    cache: dict[tuple[str, float], Throttle] = current_app.extensions.setdefault("crm_throttle", {})
    rate = float(current_app.config["AMOCRM_RATE_LIMIT"])
    key = (current_app.config.get("REDIS_URL") or "file", rate)
    if key not in cache:
        url = current_app.config.get("REDIS_URL")
        if url:
            import redis

            cache[key] = RedisThrottle(redis.Redis.from_url(url), rate=rate)
        else:
            cache[key] = FileThrottle(f"{current_app.instance_path}/throttle", rate=rate)
    return cache[key]


def oauth_client_for(cfg: AmoConfig) -> OAuthClient:
    return OAuthClient(
        hosts_for(cfg),
        cfg.client_id,
        cfg.client_secret or "",
        cfg.redirect_uri,
        proxy=_proxy(),
        timeout=current_app.config["AMOCRM_TIMEOUT"],
    )


def get_config(owner_id: int) -> AmoConfig | None:
    return db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))


def client_for_owner(owner_id: int) -> AmoCRMClient:
    """A client for the owner's connected account (tokens refresh under the owner's lock)."""
    cfg = get_config(owner_id)
    if cfg is None:
        raise NotConfigured(f"owner {owner_id} has no amoCRM config")
    return AmoCRMClient(
        hosts_for(cfg),
        DbTokenSource(owner_id),
        throttle=shared_throttle(),
        proxy=_proxy(),
        timeout=current_app.config["AMOCRM_TIMEOUT"],
    )


def record_api_failure(owner_id: int, exc: Exception) -> None:
    """Show a failed amoCRM call on the owner's badge (a 403 block turns it red)."""
    cfg = get_config(owner_id)
    if cfg is None:
        return
    cfg.last_error = str(exc)[:500]
    cfg.last_error_at = datetime.now(UTC)
    if isinstance(exc, AmoCRMBlocked):
        cfg.status = ConnectionStatus.ERROR
        cfg.last_error = "amoCRM заблокировал доступ по API (403). " + cfg.last_error
    db.session.commit()
