"""Workspace writes: the outbox of edits waiting for amoCRM, and the account's choice lists."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from crm_app.extensions import Model
from crm_app.models.base import BigId, JSONType, UTCDateTime, utcnow


class OutboxStatus:
    PENDING = "pending"  # waiting for amoCRM (429, 5xx, unreachable) or behind an earlier edit
    APPLIED = "applied"
    CONFLICT = "conflict"  # amoCRM changed the entity after the version the edit was made on
    FAILED = "failed"  # amoCRM refused it (validation, entity gone); kept with the reason
    DISMISSED = "dismissed"  # a conflict or refusal the person closed
    OPEN = (PENDING,)


class OutboxWrite(Model):
    """One edit made in the workspace that amoCRM has not accepted yet (or refused).

    Rows are never deleted by the worker: an applied row keeps amoCRM's answer, a conflict both
    versions, a failure the reason, so the card can show what happened to every edit. The beat
    prunes applied and dismissed rows 30 days after they finished (``outbox.prune``).
    """

    __tablename__ = "crm_outbox"
    __table_args__ = (
        # The worker's queue per entity, oldest first; the card's pending edits.
        Index("ix_crm_outbox_entity", "owner_id", "entity_type", "entity_id", "status", "id"),
        Index("ix_crm_outbox_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    # What is written: leads | contacts | tasks, and the amoCRM id (None until a create lands).
    entity_type: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[int | None] = mapped_column(BigInteger)
    # update | create | note | complete (see crm_app.services.workspace.outbox)
    op: Mapped[str] = mapped_column(String(16))
    # The body amoCRM gets (only the fields the person changed).
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # The version the person saw (amoCRM updated_at); None for creates and notes.
    base_updated_at: Mapped[int | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # True after a send whose outcome is unknown (no answer): a create is looked for before
    # it is sent again, so a retry never duplicates it.
    uncertain: Mapped[bool] = mapped_column(default=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    # amoCRM's answer, field errors, or {"theirs": ..., "yours": ...} for a conflict.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LossReason(Model):
    """Why a deal was lost (``GET /api/v4/leads/loss_reasons``)."""

    __tablename__ = "crm_loss_reasons"

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(255))
    sort: Mapped[int] = mapped_column(default=0)
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TaskType(Model):
    """The account's task types (``GET /api/v4/account?with=task_types``)."""

    __tablename__ = "crm_task_types"

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(255))
    code: Mapped[str | None] = mapped_column(String(64))
    color: Mapped[str | None] = mapped_column(String(16))
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
