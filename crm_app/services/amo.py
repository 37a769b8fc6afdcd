"""Build amoCRM clients for an owner from the stored config, tokens and deployment settings."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, cast

from flask import current_app
from sqlalchemy import CursorResult, case, select, update

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import AmoCRMBlocked
from crm_app.amocrm.hosts import AmoHosts
from crm_app.amocrm.oauth import OAuthClient
from crm_app.amocrm.retry import RetryPolicy
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


def client_for_owner(owner_id: int, *, retry: RetryPolicy | None = None) -> AmoCRMClient:
    """A client for the owner's connected account (tokens refresh under the owner's lock).

    ``retry`` replaces the client's default policy (``sync_retry_policy`` for background runs).
    """
    cfg = get_config(owner_id)
    if cfg is None:
        raise NotConfigured(f"owner {owner_id} has no amoCRM config")
    return AmoCRMClient(
        hosts_for(cfg),
        DbTokenSource(owner_id),
        throttle=shared_throttle(),
        proxy=_proxy(),
        timeout=current_app.config["AMOCRM_TIMEOUT"],
        retry=retry or RetryPolicy(),
    )


def sync_retry_policy() -> RetryPolicy:
    """The policy of background reads (sync, re-fetches): wait out a long 429 pause, bounded.

    A sync only reads and nobody waits on it, so it rather waits than fails the run: a lone 429
    (jitter past our pacing) 1.5 s, a second one in a row amoCRM's ``retry_after`` capped at
    SYNC_RATE_LIMIT_MAX_WAIT, and so on; after a fourth 429 in a row the run stops and the next
    one resumes from its checkpoint.
    """
    return RetryPolicy(
        rate_limit_retries=3,
        max_wait=float(current_app.config.get("SYNC_RATE_LIMIT_MAX_WAIT", 60)),
        wait_out_long_pauses=True,
        retry_after_from=2,
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


def record_api_success(owner_id: int, since: datetime) -> bool:
    """A call started at `since` worked: clear a badge error recorded before it.

    Only errors older than the successful call are cleared (a failure recorded meanwhile by a
    concurrent call stays), and a red badge turns green again, because access evidently works.
    True when something was cleared.
    """
    from crm_app.models import AmoToken

    has_tokens = select(AmoToken.owner_id).where(AmoToken.owner_id == owner_id).exists()
    result = cast(
        "CursorResult[Any]",
        db.session.execute(
            update(AmoConfig)
            .where(
                AmoConfig.owner_id == owner_id,
                AmoConfig.last_error.is_not(None),
                (AmoConfig.last_error_at.is_(None)) | (AmoConfig.last_error_at <= since),
                AmoConfig.status.in_((ConnectionStatus.CONNECTED, ConnectionStatus.ERROR)),
                has_tokens,
            )
            .values(
                last_error=None,
                last_error_at=None,
                status=case(
                    (AmoConfig.status == ConnectionStatus.ERROR, ConnectionStatus.CONNECTED),
                    else_=AmoConfig.status,
                ),
            )
            .execution_options(synchronize_session=False)
        ),
    )
    db.session.commit()
    cleared = bool(result.rowcount)
    if cleared:
        logger.info("owner %s: amoCRM answered again; the old badge error is cleared", owner_id)
    return cleared
