"""The webhook inbox: every delivery stored before it is acknowledged."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from crm_app.extensions import Model
from crm_app.models.base import JSONType, UTCDateTime, utcnow


class InboxStatus:
    PENDING = "pending"
    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    FAILED = "failed"


class WebhookDelivery(Model):
    """One POST from amoCRM, raw, as received; processed later by the worker."""

    __tablename__ = "webhook_inbox"
    __table_args__ = (
        # A redelivery carries the same bytes: the second insert is a no-op.
        UniqueConstraint("owner_id", "body_hash", name="uq_webhook_inbox_owner_hash"),
        # The worker's queue (owner, pending, oldest first) and the card's recent rows. Every
        # index costs each acknowledgement an update, so there are only these two.
        Index("ix_webhook_inbox_owner_status", "owner_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    body_hash: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=InboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    # Set after a failed attempt so the drain backs off instead of hammering a broken account.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # {"leads:status": 1, "task:update": 2, ...} filled in when processed, for the admin card.
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)


class WebhookEventKey(Model):
    """One distinct change seen in a delivery: entity + action + id + modification time.

    The unique key makes "applied exactly once" checkable and drops the same change arriving in
    a second, differently encoded delivery. Events without a modification time (deletes) get no
    row: a delete, a restore and a second delete of one id are three real changes.
    """

    __tablename__ = "webhook_event_keys"
    __table_args__ = (
        UniqueConstraint(
            "owner_id", "entity", "action", "entity_id", "modified", name="uq_webhook_event_key"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    entity: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[int] = mapped_column(BigInteger)
    modified: Mapped[str] = mapped_column(String(32))
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_inbox.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
