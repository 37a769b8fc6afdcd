"""Storing messages either way: the person's, a manager's (channel hook) and our operator's."""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from crm_app.extensions import db
from crm_app.models.chats import ChatChannel, ChatMessage, ChatMode, Conversation, Leg
from crm_app.services import queue

logger = logging.getLogger(__name__)

DELIVER_TASK = "chats.deliver"
PREVIEW = 300


@dataclass(frozen=True)
class Person:
    """Who writes: their id on the channel and the profile amoCRM's contact gets."""

    channel: str  # telegram | widget
    external_id: str
    name: str
    phone: str | None = None
    email: str | None = None
    avatar: str | None = None


def conversation_key(owner_id: int, channel: str, external_id: str) -> str:
    """Our conversation id in the Chats API: stable, opaque, and no personal data in it."""
    digest = hashlib.sha256(f"{owner_id}:{channel}:{external_id}".encode()).hexdigest()[:24]
    return f"c-{owner_id}-{digest}"


def conversation_for(owner_id: int, person: Person) -> Conversation:
    """The person's conversation, created once however many messages race to create it."""
    query = select(Conversation).where(
        Conversation.owner_id == owner_id,
        Conversation.channel == person.channel,
        Conversation.external_id == person.external_id,
    )
    found = db.session.scalars(query).first()
    if found is None:
        found = Conversation(
            owner_id=owner_id,
            channel=person.channel,
            external_id=person.external_id,
            conversation_key=conversation_key(owner_id, person.channel, person.external_id),
            name=person.name[:255],
        )
        db.session.add(found)
        try:
            db.session.flush()
        except IntegrityError:
            db.session.rollback()
            found = db.session.scalars(query).one()
    if person.name:
        found.name = person.name[:255]
    found.phone = person.phone or found.phone
    found.email = person.email or found.email
    found.avatar = person.avatar or found.avatar
    return found


def _touch(conv: Conversation, text: str, unread: bool) -> None:
    conv.last_message_at = datetime.now(UTC)
    conv.last_text = text[:PREVIEW]
    if unread:
        conv.unread = (conv.unread or 0) + 1


def _store(msg: ChatMessage) -> ChatMessage | None:
    """Insert; None when ``source_key`` says this message was stored before (a redelivery)."""
    db.session.add(msg)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return None
    return msg


def record_from_person(
    owner_id: int, person: Person, text: str, source_key: str, media: dict[str, Any] | None = None
) -> ChatMessage | None:
    """A message the person sent to the bot or the widget; queued for amoCRM's chat."""
    ch = db.session.get(ChatChannel, owner_id)
    if ch is None or not ch.scope_id or ch.mode == ChatMode.NOTES:
        return None
    conv = conversation_for(owner_id, person)
    _touch(conv, text, unread=True)
    msg = ChatMessage(
        owner_id=owner_id,
        conversation_id=conv.id,
        direction="in",
        author="person",
        author_name=person.name[:255],
        text=text,
        media=media,
        msgid=str(uuid.uuid4()),
        source_key=source_key[:128],
        to_amo=Leg.PENDING,
        to_person=Leg.NONE,
    )
    stored = _store(msg)
    if stored is not None:
        kick(conv.id)
    return stored


@dataclass(frozen=True)
class ManagerReply:
    """A manager's message as the channel hook (v2 shape) describes it."""

    amojo_msgid: str
    client_id: str | None  # our conversation key
    chat_ref: str | None  # amojo's chat id
    text: str
    media: dict[str, Any] | None
    author_name: str
    kind: str

    @property
    def preview(self) -> str:
        return (self.text or f"[{self.kind}]")[:PREVIEW]


def clean(value: Any, size: int | None = None) -> str:
    """Text for a column: PostgreSQL cannot store NUL, and a hook carrying one is still a message."""
    return str(value or "").replace("\x00", "")[:size]


def manager_reply(hook: dict[str, Any]) -> ManagerReply | None:
    """The message in a channel hook, or None for hooks that carry none (typing, reactions)."""
    body = hook.get("message") if isinstance(hook.get("message"), dict) else None
    if body is None:
        return None
    inner = body.get("message") if isinstance(body.get("message"), dict) else {}
    conversation = body.get("conversation") if isinstance(body.get("conversation"), dict) else {}
    amojo_msgid = clean(inner.get("id"), 64)
    if not amojo_msgid:
        return None
    media = None
    if inner.get("media"):
        media = {
            k: clean(v) if isinstance(v, str) else v
            for k in ("type", "media", "file_name", "file_size")
            if (v := inner.get(k))
        }
    sender = body.get("sender") if isinstance(body.get("sender"), dict) else {}
    return ManagerReply(
        amojo_msgid=amojo_msgid,
        client_id=clean(conversation.get("client_id"), 64) or None,
        chat_ref=clean(conversation.get("id"), 64) or None,
        text=clean(inner.get("text")),
        media=media,
        author_name=clean(sender.get("name"), 255),
        kind=clean(inner.get("type"), 32) or "file",
    )


def record_from_manager(ch: ChatChannel, hook: dict[str, Any]) -> ChatMessage | None:
    """A manager's reply from a channel hook (or the chat history); stored once."""
    reply = manager_reply(hook)
    return None if reply is None else store_manager_reply(ch.owner_id, reply)


def store_manager_reply(owner_id: int, reply: ManagerReply) -> ChatMessage | None:
    """Stored once per amojo message id, queued for the person; None if known or unplaced."""
    conv = _conversation_of_hook(owner_id, reply)
    if conv is None:
        logger.warning("owner %s: channel hook for an unknown conversation", owner_id)
        return None
    _touch(conv, reply.preview, unread=False)
    msg = ChatMessage(
        owner_id=owner_id,
        conversation_id=conv.id,
        direction="out",
        author="manager",
        author_name=reply.author_name,
        text=reply.text,
        media=reply.media,
        msgid=str(uuid.uuid4()),
        amojo_msgid=reply.amojo_msgid,
        source_key=f"amojo:{reply.amojo_msgid}",
        to_amo=Leg.SENT,
        to_person=Leg.PENDING,
    )
    stored = _store(msg)
    if stored is not None:
        kick(conv.id)
    return stored


def _conversation_of_hook(owner_id: int, reply: ManagerReply) -> Conversation | None:
    query = select(Conversation).where(Conversation.owner_id == owner_id)
    if reply.client_id:
        found = db.session.scalars(
            query.where(Conversation.conversation_key == reply.client_id)
        ).first()
        if found is not None:
            return found
    if reply.chat_ref:
        return db.session.scalars(query.where(Conversation.amojo_chat_id == reply.chat_ref)).first()
    return None


def record_from_operator(
    owner_id: int, conversation_id: int, text: str, author_name: str
) -> ChatMessage:
    """A reply typed in our inbox: to the person, and into amoCRM's chat as an outgoing one."""
    conv = db.session.get(Conversation, conversation_id)
    if conv is None or conv.owner_id != owner_id:
        raise LookupError(conversation_id)
    _touch(conv, text, unread=False)
    conv.unread = 0
    msg = ChatMessage(
        owner_id=owner_id,
        conversation_id=conv.id,
        direction="out",
        author="operator",
        author_name=author_name[:255],
        text=text,
        msgid=str(uuid.uuid4()),
        to_amo=Leg.PENDING,
        to_person=Leg.PENDING,
    )
    db.session.add(msg)
    db.session.commit()
    kick(conv.id)
    return msg


def mark_read(owner_id: int, conversation_id: int) -> None:
    db.session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.owner_id == owner_id)
        .values(unread=0)
    )
    db.session.commit()


def kick(conversation_id: int, countdown: float | None = None) -> None:
    """Ask a worker to deliver what is pending; the beat's sweep covers a lost kick."""
    try:
        queue.enqueue(DELIVER_TASK, conversation_id, countdown=countdown)
    except Exception as exc:  # the broker is down: the rows are the outbox, the sweep sends them
        logger.warning(
            "could not enqueue chat delivery %s: %s", conversation_id, type(exc).__name__
        )
