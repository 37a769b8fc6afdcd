"""Reaching the person: the Telegram Bot API, or the owner's widget callback URL.

Telegram: https://core.telegram.org/bots/api#sendmessage (a 429 carries
``parameters.retry_after``). The widget callback gets a JSON POST signed with
``X-Signature: sha256=<hex HMAC-SHA256 of the body>`` keyed by the owner's widget secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import requests

from crm_app.amocrm.transport import make_session
from crm_app.models.chats import ChatChannel, ChatMessage, Conversation
from crm_app.services.inbound.telegram import api_base

TIMEOUT = (5.0, 15.0)


@dataclass(frozen=True)
class SendResult:
    """``ok``; or a failure that is ``retryable`` (after ``retry_after`` s if known) or final."""

    ok: bool
    retryable: bool = False
    retry_after: float | None = None
    error: str | None = None
    external_id: int | None = None


def send_to_person(ch: ChatChannel, conv: Conversation, msg: ChatMessage) -> SendResult:
    if conv.channel == "telegram":
        return _telegram(ch, conv, msg)
    if conv.channel == "widget":
        return _widget(ch, conv, msg)
    return SendResult(False, error=f"no way to reach a {conv.channel} person")


def _telegram(ch: ChatChannel, conv: Conversation, msg: ChatMessage) -> SendResult:
    if not ch.telegram_bot_token:
        return SendResult(False, error="no Telegram bot token is set for replies")
    method, params = "sendMessage", {"chat_id": conv.external_id, "text": msg.text or " "}
    media = msg.media or {}
    if media.get("media"):
        kind = "photo" if media.get("type") == "picture" else "document"
        method = "sendPhoto" if kind == "photo" else "sendDocument"
        params = {"chat_id": conv.external_id, kind: str(media["media"])}
        if msg.text:
            params["caption"] = msg.text[:1024]
    url = f"{api_base()}/bot{ch.telegram_bot_token}/{method}"
    try:
        with make_session() as session:
            answer = session.post(url, json=params, timeout=TIMEOUT)
    except requests.RequestException as exc:
        return SendResult(
            False, retryable=True, error=f"Telegram unreachable: {type(exc).__name__}"
        )
    try:
        body: Any = answer.json()
    except ValueError:
        body = {}
    if answer.status_code == 200 and isinstance(body, dict) and body.get("ok"):
        result = body.get("result") or {}
        return SendResult(True, external_id=result.get("message_id"))
    description = str(body.get("description") or f"HTTP {answer.status_code}")[:300]
    if answer.status_code == 429:
        params_ = body.get("parameters") or {}
        return SendResult(False, True, float(params_.get("retry_after") or 1), description)
    if answer.status_code >= 500:
        return SendResult(False, retryable=True, error=f"Telegram: {description}")
    # 400/403 (chat not found, bot blocked by the user): trying again will not help.
    return SendResult(False, error=f"Telegram: {description}")


def widget_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _widget(ch: ChatChannel, conv: Conversation, msg: ChatMessage) -> SendResult:
    if not ch.widget_callback_url or not ch.widget_secret:
        return SendResult(False, error="no widget callback URL is set for replies")
    body = json.dumps(
        {
            "type": "message",
            "external_id": conv.external_id,
            "message_id": msg.msgid,
            "text": msg.text,
            "media": msg.media,
            "author": msg.author_name or msg.author,
            "sent_at": int(msg.created_at.timestamp()),
        },
        ensure_ascii=False,
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Signature": widget_signature(ch.widget_secret, body),
        # The same id on every retry: the widget backend can drop a copy it already has.
        "Idempotency-Key": msg.msgid,
    }
    try:
        with make_session() as session:
            answer = session.post(
                ch.widget_callback_url,
                data=body,
                headers=headers,
                timeout=TIMEOUT,
                allow_redirects=False,
            )
    except requests.RequestException as exc:
        return SendResult(False, retryable=True, error=f"widget unreachable: {type(exc).__name__}")
    if 200 <= answer.status_code < 300:
        return SendResult(True)
    retryable = answer.status_code in (408, 425, 429) or answer.status_code >= 500
    return SendResult(False, retryable=retryable, error=f"widget answered {answer.status_code}")
