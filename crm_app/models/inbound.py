"""First-contact requests from the Telegram bot or the website widget."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from crm_app.extensions import Model
from crm_app.models.base import JSONType, UTCDateTime, utcnow


class InboundStatus:
    QUEUED = "queued"
    CREATED = "created"
    FAILED = "failed"


class InboundOutcome:
    """What processing did (``InboundRequest.outcome``)."""

    NEW = "new"  # new contact and new deal (one leads/complex call)
    NEW_DEAL = "new_deal"  # known contact, new deal (none open, or the last one closed)
    EXISTING_DEAL = "existing_deal"  # known amoCRM contact with an open deal: message as a note
    NOTE = "note"  # repeat contact: message as a note on their deal
    DUPLICATE = "duplicate"  # the same message was already handled (retry or concurrent copy)
    DISABLED = "disabled"  # Auto Create Lead is off: stored, nothing sent to amoCRM
    NOT_CONNECTED = "not_connected"
    REJECTED = "rejected"  # amoCRM refused the data (validation, bad pipeline/status)
    ERROR = "error"


class InboundRequest(Model):
    __tablename__ = "inbound_requests"
    __table_args__ = (
        # A client-sent Idempotency-Key (or a Telegram update id) maps to one request.
        UniqueConstraint("owner_id", "idempotency_key"),
        Index("ix_inbound_requests_owner_created", "owner_id", "created_at"),
        Index("ix_inbound_requests_person_fp", "person_id", "fingerprint"),
        Index("ix_inbound_requests_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(36), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    person_id: Mapped[int | None] = mapped_column(
        ForeignKey("inbound_people.id", ondelete="SET NULL")
    )
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    channel: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    # SHA-256 of the message content: copies of one message collapse into one note.
    fingerprint: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), default=InboundStatus.QUEUED)
    outcome: Mapped[str | None] = mapped_column(String(32))  # see InboundOutcome
    contact_id: Mapped[int | None] = mapped_column(BigInteger)
    lead_id: Mapped[int | None] = mapped_column(BigInteger)
    note_added: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # When the beat may enqueue it again (a Celery retry is pending until then).
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class InboundPerson(Model):
    """One row per (owner, channel, external id): the exactly-once anchor."""

    __tablename__ = "inbound_people"
    __table_args__ = (UniqueConstraint("owner_id", "channel", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(128))
    # Unique reference carried in the deal name: finds a deal whose create call had no answer.
    ref: Mapped[str] = mapped_column(String(16), unique=True)
    contact_id: Mapped[int | None] = mapped_column(BigInteger)
    lead_id: Mapped[int | None] = mapped_column(BigInteger)
    # Set just before leads/complex is sent, cleared when its answer is stored: while set, a
    # retry must look the deal up by `ref` before creating anything.
    create_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class InboundFieldMap(Model):
    """Per owner: the amoCRM custom field ids inbound writes (Telegram ID, UTM, source)."""

    __tablename__ = "inbound_field_maps"

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
