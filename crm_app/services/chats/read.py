"""Read models of the inbox: the conversation list and one thread, for pages and JSON alike."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select

from crm_app.extensions import db
from crm_app.models.chats import ChatMessage, Conversation, Leg

LIST_LIMIT = 100
THREAD_LIMIT = 200


@dataclass(frozen=True)
class ConversationItem:
    id: int
    name: str
    channel: str
    last_text: str
    last_message_at: datetime
    unread: int
    contact_id: int | None
    lead_id: int | None


@dataclass(frozen=True)
class MessageItem:
    id: int
    direction: str
    author: str
    author_name: str
    text: str
    media_url: str | None
    created_at: datetime
    to_amo: str
    to_person: str
    error: str | None

    @property
    def mark(self) -> str:
        """One delivery mark for the thread: pending, sent, delivered or failed."""
        legs = [leg for leg in (self.to_amo, self.to_person) if leg != Leg.NONE]
        if Leg.FAILED in legs:
            return Leg.FAILED
        if Leg.PENDING in legs:
            return Leg.PENDING
        if Leg.DELIVERED in legs:
            return Leg.DELIVERED
        return Leg.SENT


@dataclass(frozen=True)
class Thread:
    conversation: ConversationItem
    messages: list[MessageItem]


def _item(conv: Conversation) -> ConversationItem:
    return ConversationItem(
        id=conv.id,
        name=conv.name or conv.external_id,
        channel=conv.channel,
        last_text=conv.last_text,
        last_message_at=conv.last_message_at,
        unread=conv.unread,
        contact_id=conv.contact_id,
        lead_id=conv.lead_id,
    )


def conversations(owner_id: int, q: str = "", limit: int = LIST_LIMIT) -> list[ConversationItem]:
    """Unread first, then the most recent; ``q`` searches the name, phone, e-mail and last text."""
    query = select(Conversation).where(Conversation.owner_id == owner_id)
    q = q.strip()
    if q:
        like = f"%{q.lower()}%"
        query = query.where(
            or_(
                func.lower(Conversation.name).like(like),
                func.lower(Conversation.last_text).like(like),
                Conversation.phone.like(f"%{q}%"),
                func.lower(Conversation.email).like(like),
            )
        )
    query = query.order_by(
        (Conversation.unread > 0).desc(),
        Conversation.last_message_at.desc(),
        Conversation.id.desc(),
    ).limit(limit)
    return [_item(c) for c in db.session.scalars(query)]


def thread(owner_id: int, conversation_id: int) -> Thread | None:
    conv = db.session.get(Conversation, conversation_id)
    if conv is None or conv.owner_id != owner_id:
        return None
    rows = db.session.scalars(
        select(ChatMessage)
        .where(ChatMessage.conversation_id == conversation_id)
        .order_by(ChatMessage.id.desc())
        .limit(THREAD_LIMIT)
    ).all()
    items = [
        MessageItem(
            id=m.id,
            direction=m.direction,
            author=m.author,
            author_name=m.author_name,
            text=m.text,
            media_url=str((m.media or {}).get("media") or "") or None,
            created_at=m.created_at,
            to_amo=m.to_amo,
            to_person=m.to_person,
            error=m.error,
        )
        for m in reversed(rows)
    ]
    return Thread(_item(conv), items)


def version(owner_id: int, conversation_id: int | None = None) -> str:
    """A cheap ETag: changes whenever a conversation or (in a thread) a message changes."""
    conv = db.session.execute(
        select(func.count(Conversation.id), func.max(Conversation.updated_at)).where(
            Conversation.owner_id == owner_id
        )
    ).one()
    parts = [str(conv[0]), str(conv[1])]
    if conversation_id is not None:
        msg = db.session.execute(
            select(func.count(ChatMessage.id), func.max(ChatMessage.updated_at)).where(
                ChatMessage.conversation_id == conversation_id
            )
        ).one()
        parts += [str(msg[0]), str(msg[1])]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]
