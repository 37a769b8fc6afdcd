"""Gap repair: amojo sends a channel hook once and never retries, so recent chats' history is
read now and then, and a manager's message that never reached us is stored and delivered."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from crm_app.amocrm.chats import ChatsAPIError
from crm_app.extensions import db
from crm_app.models.chats import ChatChannel, ChatMessage, Conversation
from crm_app.services.chats.channel import ChannelNotReady, chats_client
from crm_app.services.chats.messages import record_from_manager

logger = logging.getLogger(__name__)

RECENT = timedelta(hours=24)


def reconcile_recent(max_conversations: int = 200) -> int:
    """Store managers' messages missing from conversations active in the last day."""
    since = datetime.now(UTC) - RECENT
    channels = db.session.scalars(select(ChatChannel).where(ChatChannel.scope_id.is_not(None)))
    found = 0
    for ch in list(channels):
        convs = db.session.scalars(
            select(Conversation)
            .where(
                Conversation.owner_id == ch.owner_id,
                Conversation.amojo_chat_id.is_not(None),
                Conversation.last_message_at >= since,
            )
            .order_by(Conversation.last_message_at.desc())
            .limit(max_conversations)
        )
        for conv in list(convs):
            try:
                found += reconcile_conversation(ch, conv)
            except (ChatsAPIError, ChannelNotReady) as exc:
                logger.warning("owner %s: chat history unavailable: %s", ch.owner_id, exc)
                break
    return found


def reconcile_conversation(ch: ChatChannel, conv: Conversation) -> int:
    """One page of the chat's newest messages; returns how many were missing."""
    history = chats_client(ch).history(str(ch.scope_id), str(conv.amojo_chat_id))
    known = set(
        db.session.scalars(
            select(ChatMessage.amojo_msgid).where(
                ChatMessage.conversation_id == conv.id, ChatMessage.amojo_msgid.is_not(None)
            )
        )
    )
    ours = set(
        db.session.scalars(select(ChatMessage.msgid).where(ChatMessage.conversation_id == conv.id))
    )
    missing = 0
    for item in reversed(history):  # oldest first, so they are stored in order
        body = item.get("message") if isinstance(item.get("message"), dict) else {}
        amojo_id = str(body.get("id") or "")
        if not amojo_id or amojo_id in known or body.get("client_id") in ours:
            continue
        if "receiver" not in item:
            continue  # the person's own message: it came from us in the first place
        hook = {
            "message": {
                "sender": item.get("sender") or {},
                "conversation": {"id": conv.amojo_chat_id, "client_id": conv.conversation_key},
                "message": body,
            }
        }
        if record_from_manager(ch, hook) is not None:
            missing += 1
            logger.info(
                "owner %s: manager message %s recovered from history", ch.owner_id, amojo_id
            )
    return missing
