"""The inbox: an owner's Chats API channel, conversations with people, and their messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from crm_app.crypto import EncryptedText
from crm_app.extensions import Model
from crm_app.models.base import JSONType, UTCDateTime, utcnow


class ChatMode:
    """Where a person's messages go in amoCRM."""

    CHAT = "chat"  # amoCRM's chat panel (Chats API)
    NOTES = "notes"  # notes on the deal
    BOTH = "both"

    ALL = (CHAT, NOTES, BOTH)


class Leg:
    """The state of one side of a message's delivery (to amoCRM, or to the person)."""

    NONE = "none"  # this side does not need it
    PENDING = "pending"  # in the outbox
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"  # given up (the reason is in ``error``)


class ChatChannel(Model):
    """One owner's channel: the ids and secret amoCRM issued, and where replies go."""

    __tablename__ = "chat_channels"

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True
    )
    channel_id: Mapped[str] = mapped_column(String(64))
    secret: Mapped[str] = mapped_column(EncryptedText())
    # The channel's bot id from registration: the sender of unattributed outgoing messages.
    bot_id: Mapped[str | None] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(8), default=ChatMode.BOTH)
    amojo_account_id: Mapped[str | None] = mapped_column(String(64))
    scope_id: Mapped[str | None] = mapped_column(String(160), unique=True)
    connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Replies to Telegram users go through the bot (its token is needed to send).
    telegram_bot_token: Mapped[str | None] = mapped_column(EncryptedText())
    # Replies to widget visitors are POSTed here, signed with widget_secret.
    widget_callback_url: Mapped[str | None] = mapped_column(String(500))
    widget_secret: Mapped[str | None] = mapped_column(EncryptedText())
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Conversation(Model):
    """One person on one channel (a Telegram chat, a widget visitor) and its amoCRM chat."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("owner_id", "channel", "external_id"),
        Index("ix_conversations_owner_last", "owner_id", "last_message_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))  # telegram | widget
    external_id: Mapped[str] = mapped_column(String(128))
    # Our conversation id in the Chats API, and amojo's ids once the chat exists there.
    conversation_key: Mapped[str] = mapped_column(String(64), unique=True)
    amojo_chat_id: Mapped[str | None] = mapped_column(String(64), index=True)
    amojo_user_id: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255), default="")
    phone: Mapped[str | None] = mapped_column(String(64))
    email: Mapped[str | None] = mapped_column(String(255))
    avatar: Mapped[str | None] = mapped_column(String(500))
    contact_id: Mapped[int | None] = mapped_column(BigInteger)
    lead_id: Mapped[int | None] = mapped_column(BigInteger)
    # The chat was linked to contact_id before its first message (no second contact is made).
    linked: Mapped[bool] = mapped_column(default=False)
    unread: Mapped[int] = mapped_column(default=0)
    last_message_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_text: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ChatMessage(Model):
    """One message either way, with the state of both of its deliveries (the outbox)."""

    __tablename__ = "chat_messages"
    __table_args__ = (
        Index("ix_chat_messages_conversation", "conversation_id", "id"),
        Index("ix_chat_messages_pending", "owner_id", "next_attempt_at"),
        UniqueConstraint("owner_id", "amojo_msgid"),
        UniqueConstraint("owner_id", "source_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(3))  # in (from the person) | out (to them)
    author: Mapped[str] = mapped_column(String(16))  # person | manager | operator
    author_name: Mapped[str] = mapped_column(String(255), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    media: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Our message id: the Chats API msgid (a retry sends the same one, amojo refuses doubles).
    msgid: Mapped[str] = mapped_column(String(64), unique=True)
    amojo_msgid: Mapped[str | None] = mapped_column(String(64))
    # Where the message came from, unique per owner: a redelivered Telegram update or channel
    # hook is stored once (e.g. "tg:<update_id>", "amojo:<msg id>", "widget:<id>").
    source_key: Mapped[str | None] = mapped_column(String(128))
    telegram_message_id: Mapped[int | None] = mapped_column(BigInteger)
    to_amo: Mapped[str] = mapped_column(String(10), default=Leg.NONE)
    # Set (and committed) before the first send to amoCRM: after a crash the next try first
    # looks for the message in the chat's history instead of sending it blindly.
    amo_tried: Mapped[bool] = mapped_column(default=False)
    to_person: Mapped[str] = mapped_column(String(10), default=Leg.NONE)
    # The delivery status reported back to amoCRM for a manager's message.
    status_reported: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
