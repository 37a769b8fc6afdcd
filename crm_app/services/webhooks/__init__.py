"""amoCRM account webhooks: receive into an inbox, apply to the mirror, manage the subscription."""

from crm_app.services.webhooks.subscription import (
    ensure_webhook_token,
    subscribe,
    subscription_state,
    unsubscribe,
    webhook_url,
)

__all__ = [
    "ensure_webhook_token",
    "subscribe",
    "subscription_state",
    "unsubscribe",
    "webhook_url",
]
