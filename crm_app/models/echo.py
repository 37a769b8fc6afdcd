"""Versions of amoCRM entities this service wrote itself, so their webhook echoes can be skipped."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from crm_app.extensions import Model
from crm_app.models.base import UTCDateTime, utcnow


class OwnWrite(Model):
    """One (entity, version) we produced: amoCRM's webhook for it tells us nothing new."""

    __tablename__ = "own_writes"
    __table_args__ = (Index("ix_own_writes_recorded", "recorded_at"),)

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True
    )
    entity_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    entity_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # amoCRM's updated_at (unix seconds) of the version we wrote.
    updated_at: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
