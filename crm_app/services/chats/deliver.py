"""The chat outbox: pending messages of one conversation sent in order, to amoCRM and to the person.

One worker at a time holds a conversation (a named lock), so two copies of a task never send the
same message twice and the person's order is kept. A retryable failure stops the conversation
until its ``next_attempt_at``; the rows are the outbox, so a killed worker or a broker outage
loses nothing (the beat's sweep picks them up again).
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import Select, and_, or_, select

from crm_app.amocrm.chats import DELIVERED, FAILED, ChatsAPIError, ChatsClient
from crm_app.amocrm.errors import AmoCRMAPIError
from crm_app.extensions import db
from crm_app.models.chats import ChatChannel, ChatMessage, Conversation, Leg
from crm_app.models.inbound import InboundPerson, InboundRequest, InboundStatus
from crm_app.services.amo import client_for_owner
from crm_app.services.chats.channel import ChannelNotReady, chats_client
from crm_app.services.chats.outbound import send_to_person
from crm_app.services.locks import LockTimeout, named_lock

logger = logging.getLogger(__name__)

# A message that cannot be delivered because the other side is down or throttling is retried
# for this long (CHATS_GIVE_UP_HOURS) before it is marked failed: an outage of hours loses
# nothing. A refusal (blocked bot, bad request) fails at once.
GIVE_UP_HOURS = 24.0
# How long the first message waits for the inbound flow to create the person's contact, so that
# the chat is linked to it instead of amoCRM making a second contact.
CONTACT_WAIT = 120.0


class Retry(Exception):
    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


def backoff(attempts: int) -> float:
    """1, 2, 4 … seconds, at most a minute: outages end in seconds more often than in hours."""
    return float(min(60, 2 ** max(0, attempts - 1)))


def _now() -> datetime:
    return datetime.now(UTC)


def pending_query(conversation_id: int) -> Select[ChatMessage]:
    return (
        select(ChatMessage)
        .where(
            ChatMessage.conversation_id == conversation_id,
            or_(
                ChatMessage.to_amo == Leg.PENDING,
                ChatMessage.to_person == Leg.PENDING,
                and_(
                    ChatMessage.author == "manager",
                    ChatMessage.status_reported.is_(False),
                    ChatMessage.to_person.in_((Leg.SENT, Leg.FAILED)),
                ),
            ),
        )
        .order_by(ChatMessage.id)
    )


def lock_ttl() -> float:
    """How long a conversation's lock outlives a killed holder (CHATS_LOCK_TTL, seconds)."""
    value = current_app.config.get("CHATS_LOCK_TTL") or os.environ.get("CHATS_LOCK_TTL") or 60
    return float(value)


def deliver(conversation_id: int) -> float | None:
    """Send what is pending; the seconds until the next try if something must wait, else None.

    One hold of the conversation's lock sends for at most a third of the lock's life, so the
    lock never expires under a live holder; what is left is picked up by the next try.
    """
    ttl = lock_ttl()
    try:
        with named_lock(f"chat-conversation-{conversation_id}", ttl=ttl, wait=0):
            return _deliver(conversation_id, time.monotonic() + ttl / 3)
    except LockTimeout:
        # Another worker holds it, or a killed one did until its lock expires: try again soon.
        return min(5.0, ttl)


def _deliver(conversation_id: int, until: float) -> float | None:
    conv = db.session.get(Conversation, conversation_id)
    if conv is None:
        return None
    ch = db.session.get(ChatChannel, conv.owner_id)
    while True:
        if time.monotonic() > until:
            return 0.1  # enough for one hold of the lock: the rest in a moment
        db.session.expire_all()
        msg = db.session.scalars(pending_query(conversation_id).limit(1)).first()
        if msg is None:
            return None
        if msg.next_attempt_at is not None and msg.next_attempt_at > _now():
            return max(0.1, (msg.next_attempt_at - _now()).total_seconds())
        if ch is None or not ch.scope_id:
            _give_up(msg, "the chat channel is not connected")
            continue
        try:
            _step(ch, conv, msg)
        except Retry as exc:
            msg.attempts += 1
            msg.error = exc.reason[:500]
            if _too_old(msg):
                _give_up(msg, exc.reason)
                continue
            msg.next_attempt_at = _now() + timedelta(seconds=exc.delay)
            db.session.commit()
            logger.info("chat message %s: retry in %.0f s (%s)", msg.id, exc.delay, exc.reason)
            return exc.delay


def _too_old(msg: ChatMessage) -> bool:
    hours = float(current_app.config.get("CHATS_GIVE_UP_HOURS") or GIVE_UP_HOURS)
    created = msg.created_at.replace(tzinfo=msg.created_at.tzinfo or UTC)
    return _now() - created > timedelta(hours=hours)


def _give_up(msg: ChatMessage, reason: str) -> None:
    if msg.to_amo == Leg.PENDING:
        msg.to_amo = Leg.FAILED
    if msg.to_person == Leg.PENDING:
        msg.to_person = Leg.FAILED
    msg.status_reported = True
    msg.error = reason[:500]
    msg.next_attempt_at = None
    db.session.commit()
    logger.warning("chat message %s not delivered: %s", msg.id, reason)


def _step(ch: ChatChannel, conv: Conversation, msg: ChatMessage) -> None:
    """One message's pending legs, each committed as soon as it is done."""
    if msg.to_amo == Leg.PENDING:
        _to_amo(ch, conv, msg)
    if msg.to_person == Leg.PENDING:
        result = send_to_person(ch, conv, msg)
        if not result.ok and result.retryable:
            delay = (
                result.retry_after if result.retry_after is not None else backoff(msg.attempts + 1)
            )
            raise Retry(delay, result.error or "not delivered")
        msg.to_person = Leg.DELIVERED if result.ok else Leg.FAILED
        msg.error = None if result.ok else result.error
        msg.telegram_message_id = result.external_id
        msg.next_attempt_at = None
        db.session.commit()
    if msg.author == "manager" and not msg.status_reported and msg.amojo_msgid:
        _report(ch, msg)


def _client(ch: ChatChannel) -> ChatsClient:
    try:
        return chats_client(ch)
    except ChannelNotReady as exc:
        raise Retry(60, str(exc)) from None


def _retry_from(exc: ChatsAPIError | AmoCRMAPIError, attempts: int) -> Retry:
    return Retry(backoff(attempts + 1), f"amoCRM: {exc.message}")


def _report(ch: ChatChannel, msg: ChatMessage) -> None:
    """Tell amoCRM whether a manager's message reached the person (shown in the chat)."""
    status = DELIVERED if msg.to_person == Leg.DELIVERED else FAILED
    try:
        _client(ch).delivery_status(str(ch.scope_id), str(msg.amojo_msgid), status, msg.error)
    except ChatsAPIError as exc:
        if exc.retryable:
            raise _retry_from(exc, msg.attempts) from None
        logger.warning("chat message %s: delivery status refused: %s", msg.id, exc.message)
    msg.status_reported = True
    db.session.commit()


def _person_user_id(conv: Conversation) -> str:
    return f"{conv.conversation_key}-u"


def _profile(conv: Conversation) -> dict[str, str]:
    profile = {}
    if conv.phone:
        profile["phone"] = conv.phone
    if conv.email:
        profile["email"] = conv.email
    return profile


def _to_amo(ch: ChatChannel, conv: Conversation, msg: ChatMessage) -> None:
    client = _client(ch)
    scope = str(ch.scope_id)
    if conv.amojo_chat_id is None:
        _open_chat(ch, client, conv, msg)
    if msg.amo_tried and _already_there(client, scope, conv, msg):
        return
    msg.amo_tried = True
    db.session.commit()
    person: dict[str, Any] = {"id": _person_user_id(conv), "name": conv.name or conv.external_id}
    if _profile(conv):
        person["profile"] = _profile(conv)
    if conv.avatar:
        person["avatar"] = conv.avatar
    if conv.amojo_user_id:
        person["ref_id"] = conv.amojo_user_id
    stamp = msg.created_at.replace(tzinfo=msg.created_at.tzinfo or UTC).timestamp()
    payload: dict[str, object] = {
        "timestamp": int(stamp),
        "msec_timestamp": int(stamp * 1000),
        "msgid": msg.msgid,
        "conversation_id": conv.conversation_key,
        "silent": False,
        "message": _message_body(msg),
    }
    if conv.amojo_chat_id:
        payload["conversation_ref_id"] = conv.amojo_chat_id
    if msg.direction == "in":
        payload["sender"] = person
    else:
        sender: dict[str, str] = {"id": f"operator-{ch.owner_id}", "name": msg.author_name or "—"}
        if ch.bot_id:
            sender["ref_id"] = ch.bot_id  # an unattributed outgoing message: the channel's bot
        payload["sender"] = sender
        payload["receiver"] = person
    try:
        sent = client.send_message(scope, payload)
    except ChatsAPIError as exc:
        if exc.retryable:
            raise _retry_from(exc, msg.attempts) from None
        if _already_there(client, scope, conv, msg):
            return  # refused as a double of a try whose answer was lost
        msg.to_amo = Leg.FAILED
        msg.error = exc.message[:500]
        db.session.commit()
        return
    msg.to_amo = Leg.SENT
    msg.amojo_msgid = sent.amojo_id
    msg.error = None
    msg.next_attempt_at = None
    db.session.commit()


def _message_body(msg: ChatMessage) -> dict[str, object]:
    media = msg.media or {}
    if media.get("media") and media.get("file_name"):
        kind = str(media.get("type") or "file")
        return {
            "type": kind if kind in ("picture", "video", "file") else "file",
            "media": str(media["media"]),
            "file_name": str(media["file_name"]),
            "file_size": int(media.get("file_size") or 0),
            "text": msg.text or "",
        }
    return {"type": "text", "text": msg.text or " "}


def _already_there(client: ChatsClient, scope: str, conv: Conversation, msg: ChatMessage) -> bool:
    """After a try whose answer was lost: find the message by our msgid in the chat's history."""
    if not conv.amojo_chat_id:
        return False
    try:
        history = client.history(scope, conv.amojo_chat_id)
    except ChatsAPIError as exc:
        if exc.retryable:
            raise _retry_from(exc, msg.attempts) from None
        return False
    for item in history:
        body = item.get("message") or {}
        if body.get("client_id") == msg.msgid:
            msg.to_amo = Leg.SENT
            msg.amojo_msgid = str(body.get("id") or "") or None
            db.session.commit()
            return True
    return False


def _open_chat(ch: ChatChannel, client: ChatsClient, conv: Conversation, msg: ChatMessage) -> None:
    """Create the chat and link it to the person's contact before the first message.

    A chat linked to an existing contact makes no incoming lead and no second contact; the
    contact comes from the inbound flow, which may still be creating it: wait a little for it.
    """
    contact_id = conv.contact_id or _known_contact(conv)
    if contact_id is None and _contact_on_its_way(conv, msg):
        raise Retry(2.0, "waiting for the person's contact to be created")
    person: dict[str, Any] = {"id": _person_user_id(conv), "name": conv.name or conv.external_id}
    if _profile(conv):
        person["profile"] = _profile(conv)
    try:
        chat = client.create_chat(str(ch.scope_id), conv.conversation_key, person)
    except ChatsAPIError as exc:
        if exc.retryable:
            raise _retry_from(exc, msg.attempts) from None
        raise Retry(60, f"amoCRM refused the chat: {exc.message}") from None
    conv.amojo_chat_id = str(chat.get("id") or "") or None
    raw_user = chat.get("user")
    user = raw_user if isinstance(raw_user, dict) else {}
    conv.amojo_user_id = str(user.get("id") or "") or None
    db.session.commit()
    if contact_id is not None and conv.amojo_chat_id:
        try:
            client_for_owner(conv.owner_id).request(
                "POST",
                "/api/v4/contacts/chats",
                json=[{"contact_id": int(contact_id), "chat_id": conv.amojo_chat_id}],
            )
        except AmoCRMAPIError as exc:
            if exc.status is None or exc.status == 429 or exc.status >= 500:
                raise _retry_from(exc, msg.attempts) from None
            logger.warning(
                "owner %s: linking a chat to contact %s failed: %s",
                conv.owner_id,
                contact_id,
                exc.message,
            )
        else:
            conv.contact_id = int(contact_id)
            conv.linked = True
            db.session.commit()


def _known_contact(conv: Conversation) -> int | None:
    person = db.session.scalars(
        select(InboundPerson).where(
            InboundPerson.owner_id == conv.owner_id,
            InboundPerson.channel == conv.channel,
            InboundPerson.external_id == conv.external_id,
        )
    ).first()
    if person is None or person.contact_id is None:
        return None
    conv.lead_id = conv.lead_id or person.lead_id
    return int(person.contact_id)


def _contact_on_its_way(conv: Conversation, msg: ChatMessage) -> bool:
    """An inbound request of this person is still queued, and we have not waited too long."""
    created = msg.created_at.replace(tzinfo=msg.created_at.tzinfo or UTC)
    if time.time() - created.timestamp() > CONTACT_WAIT:
        return False
    queued = db.session.scalars(
        select(InboundRequest.id).where(
            InboundRequest.owner_id == conv.owner_id,
            InboundRequest.channel == conv.channel,
            InboundRequest.external_id == conv.external_id,
            InboundRequest.status == InboundStatus.QUEUED,
        )
    ).first()
    return queued is not None


def due_conversations(limit: int = 500) -> list[int]:
    """Conversations with something pending and due: the beat's sweep enqueues them."""
    now = _now()
    rows = db.session.scalars(
        select(ChatMessage.conversation_id)
        .where(
            or_(ChatMessage.to_amo == Leg.PENDING, ChatMessage.to_person == Leg.PENDING),
            or_(ChatMessage.next_attempt_at.is_(None), ChatMessage.next_attempt_at <= now),
        )
        .distinct()
        .limit(limit)
    )
    return list(rows)
