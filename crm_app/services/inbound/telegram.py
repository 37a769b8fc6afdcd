"""Telegram Bot API: the per-owner webhook secret, turning Updates into inbound requests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any

import requests
from flask import current_app
from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import AmoConfig, InboundRequest
from crm_app.services.inbound.intake import submit
from crm_app.services.inbound.schema import MAX_MESSAGE, InboundPayload

logger = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.telegram.org"
WEBHOOK_PATH = "/webhooks/telegram/"
HEADER = "X-Telegram-Bot-Api-Secret-Token"


def _derive(secret: str, purpose: str) -> str:
    mac = hmac.new(secret.encode("utf-8"), purpose.encode("utf-8"), hashlib.sha256).digest()
    # URL-safe base64 without padding: only A-Z, a-z, 0-9, '_' and '-', as Telegram requires.
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def path_token(secret: str) -> str:
    """The URL path segment. Derived, so a path seen in a log does not reveal the header token."""
    return _derive(secret, "telegram-webhook-path")


def header_token(secret: str) -> str:
    """The ``secret_token`` Telegram echoes in ``X-Telegram-Bot-Api-Secret-Token``."""
    return _derive(secret, "telegram-webhook-header")


def path_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def webhook_url(secret: str) -> str:
    base = str(current_app.config.get("PUBLIC_URL") or "").rstrip("/")
    return f"{base}{WEBHOOK_PATH}{path_token(secret)}"


def api_base() -> str:
    """Bot API origin; TELEGRAM_API_BASE overrides it (tests, a local Bot API server)."""
    value = current_app.config.get("TELEGRAM_API_BASE") or os.environ.get("TELEGRAM_API_BASE")
    return str(value or DEFAULT_API_BASE).rstrip("/")


def config_for_path(token: str) -> AmoConfig | None:
    """The owner's config whose webhook path this is, or None."""
    if not token or len(token) > 128:
        return None
    cfg = db.session.scalar(
        select(AmoConfig).where(AmoConfig.telegram_secret_hash == path_hash(token))
    )
    if cfg is None or not cfg.telegram_secret:
        return None
    # The hash found it; compare the derived token too, in constant time.
    if not hmac.compare_digest(path_token(cfg.telegram_secret), token):
        return None
    return cfg


def header_ok(cfg: AmoConfig, value: str | None) -> bool:
    if not value or not cfg.telegram_secret:
        return False
    return hmac.compare_digest(header_token(cfg.telegram_secret), value)


@dataclass(frozen=True)
class WebhookSetup:
    """What ``setWebhook`` gets: the method URL carries the bot token, so never print it."""

    method_url: str
    body: dict[str, Any]
    secret: str

    def printable(self) -> dict[str, Any]:
        return {
            "url": f"{api_base()}/bot<token>/setWebhook",
            "body": {
                **self.body,
                "url": self.body["url"].rsplit("/", 1)[0] + "/<secret>",
                "secret_token": "<secret>",
            },
        }


def prepare_webhook(bot_token: str) -> WebhookSetup:
    """A fresh secret and the ``setWebhook`` call that registers it (nothing stored yet)."""
    secret = secrets.token_urlsafe(32)
    body = {
        "url": webhook_url(secret),
        "secret_token": header_token(secret),
        "allowed_updates": ["message"],
        "drop_pending_updates": False,
    }
    return WebhookSetup(f"{api_base()}/bot{bot_token}/setWebhook", body, secret)


class TelegramError(RuntimeError):
    """The Bot API refused or could not be reached (message is safe: no token inside)."""


def call_set_webhook(setup: WebhookSetup, timeout: float = 15.0) -> dict[str, Any]:
    try:
        response = requests.post(setup.method_url, json=setup.body, timeout=timeout)
    except requests.RequestException as exc:
        raise TelegramError(f"Bot API unreachable ({type(exc).__name__})") from None
    try:
        data = response.json()
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    if response.status_code != 200 or not data.get("ok"):
        detail = str(data.get("description") or f"HTTP {response.status_code}")[:200]
        raise TelegramError(f"setWebhook refused: {detail}")
    return data


def store_secret(cfg: AmoConfig, secret: str) -> None:
    cfg.telegram_secret = secret
    cfg.telegram_secret_hash = path_hash(path_token(secret))
    db.session.commit()


def owner_webhook_url(cfg: AmoConfig | None) -> str | None:
    """The owner's full webhook URL (it contains the path secret: never show or log it)."""
    if cfg is None or not cfg.telegram_secret:
        return None
    return webhook_url(cfg.telegram_secret)


def masked_webhook_url(cfg: AmoConfig | None) -> str | None:
    """The webhook URL with all but 4 characters of the path secret hidden, for the admin UI."""
    url = owner_webhook_url(cfg)
    if url is None:
        return None
    head, token = url.rsplit("/", 1)
    return f"{head}/{token[:4]}…"


# -- updates ----------------------------------------------------------------------------------------

_MEDIA_KINDS = ("photo", "video", "voice", "audio", "document", "sticker", "contact", "location")


def message_payload(message: dict[str, Any]) -> InboundPayload | None:
    """An inbound payload from a private Bot API ``Message``; None if it is not one we take."""
    chat = message.get("chat") or {}
    sender = message.get("from") or {}
    if chat.get("type") != "private" or sender.get("is_bot"):
        return None
    user_id = sender.get("id")
    if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id <= 0:
        return None
    text = message.get("text") or message.get("caption")
    if not text:
        kind = next((k for k in _MEDIA_KINDS if k in message), None)
        text = f"[{kind}]" if kind else None
    data: dict[str, Any] = {
        "channel": "telegram",
        "external_id": str(user_id),
        "first_name": sender.get("first_name"),
        "last_name": sender.get("last_name"),
        "username": sender.get("username"),
        "message": str(text)[:MAX_MESSAGE] if text else None,
    }
    shared = message.get("contact") or {}
    if shared.get("user_id") == user_id and shared.get("phone_number"):
        data["phone"] = str(shared["phone_number"])  # the user shared their own number
    try:
        return InboundPayload.model_validate({k: v for k, v in data.items() if v})
    except ValueError:
        # A phone Telegram sent but we cannot parse must not lose the message.
        data.pop("phone", None)
        return InboundPayload.model_validate({k: v for k, v in data.items() if v})


def handle_update(cfg: AmoConfig, update: dict[str, Any]) -> InboundRequest | None:
    """Store the update's private message as an inbound request; None when ignored."""
    message = update.get("message")
    if not isinstance(message, dict):
        return None  # edited messages, callbacks, channel posts...: not ours
    payload = message_payload(message)
    if payload is None:
        return None
    update_id = update.get("update_id")
    # update_id counts per bot; the webhook secret changes with every set-webhook, so a new
    # bot (whose ids start over) never collides with the old one's.
    bot = (cfg.telegram_secret_hash or "")[:8]
    key = f"tg:{bot}:{update_id}" if isinstance(update_id, int) else None
    # The message id keeps two equal texts apart; a redelivered update has the same one.
    return submit(
        cfg.owner_id,
        payload,
        idempotency_key=key,
        fingerprint_extra=f"tg-message:{message.get('message_id')}",
    )
