"""Celery tasks for tokens (thin: ids in, service call, retries and logging)."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="tokens.refresh_due")
def refresh_due() -> list[int]:
    """Beat: queue a refresh for every owner whose token expires soon or is idle too long.

    ``due_for_refresh`` holds both rules: expiry within TOKEN_REFRESH_AHEAD_SECONDS, and the
    keep-alive (no rotation for TOKEN_KEEPALIVE_DAYS), which keeps an idle integration's
    3-month refresh token from lapsing.
    """
    from crm_app.services.tokens import due_for_refresh

    owners = due_for_refresh()
    for owner_id in owners:
        refresh_owner.delay(owner_id)
    if owners:
        logger.info("queued token refresh for %d owner(s)", len(owners))
    return owners


@shared_task(
    name="tokens.refresh_owner",
    bind=True,
    max_retries=5,
    default_retry_delay=60,
)
def refresh_owner(self, owner_id: int) -> bool:
    """Refresh one owner's pair under the per-owner lock; True if a new pair was stored."""
    from crm_app.amocrm.errors import AmoCRMAuthError, AmoCRMTokenExpired, AmoCRMUnavailable
    from crm_app.services.locks import LockTimeout
    from crm_app.services.tokens import NotConnected, due_for_refresh, refresh_tokens

    # A duplicate message (beat fired twice, redelivery) finds the owner no longer due.
    if owner_id not in due_for_refresh():
        return False
    try:
        refresh_tokens(owner_id, force=True)
    except NotConnected:
        return False
    except (AmoCRMAuthError, AmoCRMTokenExpired) as exc:
        # refresh_tokens already put the reason on the badge; retrying a refused grant is futile.
        logger.warning("token refresh refused for owner %s: %s", owner_id, exc)
        return False
    except (AmoCRMUnavailable, LockTimeout) as exc:
        logger.warning("token refresh for owner %s postponed: %s", owner_id, exc)
        raise self.retry(exc=exc) from None
    return True
