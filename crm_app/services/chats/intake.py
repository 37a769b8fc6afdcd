"""What enters the inbox: a Telegram update, a widget message, and amojo's channel hook."""

from __future__ import annotations

import logging
from typing import Any

from crm_app.models.chats import ChatMessage
from crm_app.services.chats.channel import channel_for_scope
from crm_app.services.chats.hook import checked_reply
from crm_app.services.chats.messages import Person, record_from_person, store_manager_reply

logger = logging.getLogger(__name__)

_MEDIA_KINDS = ("photo", "document", "video", "voice", "audio", "sticker")


def from_telegram(owner_id: int, bot_key: str, update: dict[str, Any]) -> ChatMessage | None:
    """A private message to the bot, for the chat (the inbound flow handles the contact)."""
    message = update.get("message")
    if not isinstance(message, dict):
        return None
    chat = message.get("chat") or {}
    sender = message.get("from") or {}
    user_id = sender.get("id")
    if chat.get("type") != "private" or sender.get("is_bot") or not isinstance(user_id, int):
        return None
    text = message.get("text") or message.get("caption") or ""
    if not text:
        kind = next((k for k in _MEDIA_KINDS if k in message), None)
        text = f"[{kind}]" if kind else ""
    if not text:
        return None
    name = " ".join(p for p in (sender.get("first_name"), sender.get("last_name")) if p)
    person = Person("telegram", str(user_id), name or str(sender.get("username") or user_id))
    key = f"tg:{bot_key}:{update.get('update_id')}:{message.get('message_id')}"
    return record_from_person(owner_id, person, str(text)[:4000], key)


def from_widget(owner_id: int, payload: dict[str, Any], request_key: str) -> ChatMessage | None:
    """A widget visitor's message (the inbound API), for the chat."""
    text = str(payload.get("message") or "")
    if not text:
        return None
    name = str(payload.get("name") or payload.get("username") or payload.get("external_id"))
    person = Person(
        str(payload.get("channel") or "widget"),
        str(payload["external_id"]),
        name,
        phone=payload.get("phone"),
        email=payload.get("email"),
    )
    return record_from_person(owner_id, person, text[:4000], f"inbound:{request_key}")


def channel_hook(scope_id: str, raw: bytes, signature: str | None) -> ChatMessage | None:
    """amojo's hook through SQLAlchemy (see `hook` for the PostgreSQL fast path)."""
    ch = channel_for_scope(scope_id)
    reply = checked_reply(None if ch is None else ch.secret, raw, signature)
    if reply is None or ch is None:
        return None
    return store_manager_reply(ch.owner_id, reply)
