"""An owner's Chats API channel: its settings, connecting the account to it, and a client."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import current_app

from crm_app.amocrm.chats import ChatsAPIError, ChatsClient, chats_origin
from crm_app.amocrm.errors import AmoCRMAPIError
from crm_app.extensions import db
from crm_app.i18n import mark as _n
from crm_app.models.chats import ChatChannel, ChatMode
from crm_app.services.amo import client_for_owner, get_config, hosts_for

logger = logging.getLogger(__name__)

HOOK_PATH = "/webhooks/amojo/"
_UUID_RE = re.compile(r"^[0-9a-fA-F-]{8,64}$")
_SECRET_RE = re.compile(r"^[0-9A-Za-z]{16,128}$")
_BOT_TOKEN_RE = re.compile(r"^\d{3,20}:[A-Za-z0-9_-]{20,100}$")


class ChannelInvalid(ValueError):
    """Bad channel settings; ``errors`` maps a field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class ChannelNotReady(RuntimeError):
    """No channel, or the account is not connected to it yet."""


@dataclass(frozen=True)
class ChannelView:
    """What the settings panel and the API show: never the secret or the bot token."""

    configured: bool
    channel_id: str | None
    bot_id: str | None
    mode: str
    connected: bool
    scope_id: str | None
    hook_url: str
    has_telegram_bot: bool
    widget_callback_url: str | None
    last_error: str | None


def hook_url() -> str:
    """The hook URL to register with the channel (amoCRM substitutes ``:scope_id``)."""
    return str(current_app.config["PUBLIC_URL"]).rstrip("/") + HOOK_PATH + ":scope_id"


def get_channel(owner_id: int) -> ChatChannel | None:
    return db.session.get(ChatChannel, owner_id)


def channel_view(owner_id: int) -> ChannelView:
    ch = get_channel(owner_id)
    if ch is None:
        return ChannelView(
            False, None, None, ChatMode.NOTES, False, None, hook_url(), False, None, None
        )
    return ChannelView(
        configured=True,
        channel_id=ch.channel_id,
        bot_id=ch.bot_id,
        mode=ch.mode,
        connected=bool(ch.scope_id),
        scope_id=ch.scope_id,
        hook_url=hook_url(),
        has_telegram_bot=bool(ch.telegram_bot_token),
        widget_callback_url=ch.widget_callback_url,
        last_error=ch.last_error,
    )


def mode_for(owner_id: int) -> str:
    """Where a person's messages go: chat, notes (without a channel) or both."""
    ch = get_channel(owner_id)
    return ch.mode if ch is not None and ch.scope_id else ChatMode.NOTES


def save_channel(owner_id: int, data: dict[str, Any]) -> ChatChannel:
    """Validate and store the channel settings; an empty secret or token keeps the stored one."""
    errors: dict[str, str] = {}
    ch = get_channel(owner_id)
    channel_id = str(data.get("channel_id") or "").strip()
    secret = str(data.get("secret") or "").strip()
    bot_id = str(data.get("bot_id") or "").strip() or None
    mode = str(data.get("mode") or ChatMode.BOTH).strip()
    token = str(data.get("telegram_bot_token") or "").strip()
    callback = str(data.get("widget_callback_url") or "").strip() or None
    if not _UUID_RE.match(channel_id):
        errors["channel_id"] = _n("ID канала, который выдал amoCRM (UUID)")
    if not secret and (ch is None or not ch.secret):
        errors["secret"] = _n("Укажите секрет канала")
    elif secret and not _SECRET_RE.match(secret):
        errors["secret"] = _n("Секрет канала: 16–128 латинских букв и цифр")
    if bot_id and not _UUID_RE.match(bot_id):
        errors["bot_id"] = _n("ID бота, который выдал amoCRM (UUID)")
    if mode not in ChatMode.ALL:
        errors["mode"] = _n("Выберите, куда писать сообщения")
    if token and not _BOT_TOKEN_RE.match(token):
        errors["telegram_bot_token"] = _n("Токен Telegram-бота выглядит так: 123456:ABC…")
    if callback and not re.match(r"^https?://[^\s/]+(/\S*)?$", callback):
        errors["widget_callback_url"] = _n("Адрес http(s)://…")
    if errors:
        raise ChannelInvalid(errors)
    if ch is None:
        ch = ChatChannel(owner_id=owner_id, channel_id=channel_id, secret=secret)
        db.session.add(ch)
    elif ch.channel_id != channel_id:
        ch.scope_id = None  # another channel: connect again
        ch.amojo_account_id = None
    ch.channel_id = channel_id
    if secret:
        ch.secret = secret
    ch.bot_id = bot_id
    ch.mode = mode
    if token:
        ch.telegram_bot_token = token
    ch.widget_callback_url = callback
    if callback and not ch.widget_secret:
        import secrets as _secrets

        ch.widget_secret = _secrets.token_hex(32)
    db.session.commit()
    return ch


def chats_client(ch: ChatChannel) -> ChatsClient:
    cfg = get_config(ch.owner_id)
    if cfg is None or not cfg.subdomain:
        raise ChannelNotReady(_n("amoCRM не настроен"))
    return ChatsClient(
        chats_origin(hosts_for(cfg)),
        ch.channel_id,
        ch.secret,
        proxy=current_app.config.get("AMOCRM_PROXY") or None,
        timeout=current_app.config["AMOCRM_TIMEOUT"],
    )


def connect_channel(owner_id: int) -> str:
    """Connect the owner's amoCRM account to the channel; stores and returns the scope id.

    The account's amojo id comes from ``GET /api/v4/account?with=amojo_id``; connecting is
    repeated after every (re)connection of the integration, as amoCRM asks.
    """
    ch = get_channel(owner_id)
    if ch is None:
        raise ChannelNotReady(_n("Канал чатов не настроен"))
    try:
        account = client_for_owner(owner_id).get_account(with_="amojo_id")
        amojo_id = str(account.get("amojo_id") or "")
        if not amojo_id:
            raise ChannelNotReady(_n("amoCRM не сообщил amojo_id аккаунта"))
        scope = chats_client(ch).connect(amojo_id, current_app.config.get("CHAT_TITLE"))
    except (AmoCRMAPIError, ChannelNotReady) as exc:
        ch.last_error = str(exc)[:500]
        ch.last_error_at = datetime.now(UTC)
        db.session.commit()
        raise
    ch.amojo_account_id = amojo_id
    ch.scope_id = scope
    ch.connected_at = datetime.now(UTC)
    ch.last_error = None
    ch.last_error_at = None
    db.session.commit()
    logger.info("owner %s: chat channel connected", owner_id)
    return scope


def reconnect_channel(owner_id: int) -> str | None:
    """After the account is (re)connected: connect the channel again if one is set up."""
    if get_channel(owner_id) is None:
        return None
    return connect_channel(owner_id)


def disconnect_channel(owner_id: int) -> None:
    """Disconnect the account from the channel (best effort) and forget the scope."""
    ch = get_channel(owner_id)
    if ch is None or not ch.scope_id:
        return
    if ch.amojo_account_id:
        try:
            chats_client(ch).disconnect(ch.amojo_account_id)
        except (ChatsAPIError, ChannelNotReady) as exc:
            logger.warning("owner %s: channel disconnect failed: %s", owner_id, exc)
    ch.scope_id = None
    ch.connected_at = None
    db.session.commit()


def channel_for_scope(scope_id: str) -> ChatChannel | None:
    from sqlalchemy import select

    if "\x00" in scope_id:  # PostgreSQL refuses NUL in a text parameter: no channel has one
        return None
    found: ChatChannel | None = db.session.scalars(
        select(ChatChannel).where(ChatChannel.scope_id == scope_id)
    ).first()
    return found
