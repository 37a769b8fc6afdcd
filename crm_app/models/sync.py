"""Sync runs (the rows the UI polls), the sync log, and incremental cursors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from crm_app.extensions import Model
from crm_app.models.base import JSONType, UTCDateTime, utcnow


class RunStatus:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"
    ACTIVE = (QUEUED, RUNNING)


class SyncRun(Model):
    """One requested sync; progress and per-entity checkpoints live here, not in Celery."""

    __tablename__ = "sync_runs"
    __table_args__ = (
        # One active run per owner, enforced by the database: concurrent start_sync() calls
        # race on this index and the losers read the winner's run.
        Index(
            "uq_sync_runs_active_owner",
            "owner_id",
            unique=True,
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    entities: Mapped[list[str]] = mapped_column(JSONType, default=list)
    full: Mapped[bool] = mapped_column(default=False)
    trigger: Mapped[str] = mapped_column(
        String(16), default="manual"
    )  # manual|beat|cli|api|reconcile
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED, index=True)
    current_entity: Mapped[str | None] = mapped_column(String(32))
    pages: Mapped[int] = mapped_column(default=0)
    records: Mapped[int] = mapped_column(default=0)
    requests: Mapped[int] = mapped_column(default=0)
    rate_limited: Mapped[int] = mapped_column(default=0)  # HTTP 429 answers seen (retried)
    # {"contacts": {"page": 7, "done": false, "cursor_from": 1700000000, "max_updated_at": ...}}
    checkpoint: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Fencing token of the worker executing the run: every checkpoint write checks it, so a
    # worker that was taken over (no heartbeat for SYNC_STALE_SECONDS) can no longer write.
    lease: Mapped[str | None] = mapped_column(String(36))
    worker: Mapped[str | None] = mapped_column(String(128))


class SyncLog(Model):
    """The admin-visible log: sync_contacts, sync_leads, sync_tasks, create_lead, webhook, ..."""

    __tablename__ = "sync_log"
    __table_args__ = (Index("ix_sync_log_owner_ts", "owner_id", "timestamp"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    operation: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # success | error
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("sync_runs.id", ondelete="SET NULL"))


class SyncCursor(Model):
    """Per owner and entity: the high-water mark of the last successful sync."""

    __tablename__ = "sync_cursors"

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True
    )
    entity: Mapped[str] = mapped_column(String(32), primary_key=True)
    updated_at_cursor: Mapped[int | None] = mapped_column()  # unix seconds
    last_full_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_reconcile_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class BeatClaim(Model):
    """(task name, interval slot) claimed by the first beat-scheduled run; a second beat skips."""

    __tablename__ = "sync_beat_claims"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
