"""The inbox: store raw deliveries (deduplicated by body hash) and hand them to the worker."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Insert, delete, func, insert, select, update
from sqlalchemy.sql.dml import ReturningInsert

from crm_app.extensions import db
from crm_app.models import AmoConfig, InboxStatus, WebhookDelivery

logger = logging.getLogger(__name__)

# Redeliveries come within hours (the retry ladder ends after ~1.5 h); keep a week for the card.
RETENTION = timedelta(days=7)


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def insert_statement(dialect: str) -> ReturningInsert[Any]:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id, built once per dialect."""
    cached = _STATEMENTS.get(dialect)
    if cached is not None:
        return cached
    table = WebhookDelivery.__table__
    stmt: Insert
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(table).on_conflict_do_nothing(constraint="uq_webhook_inbox_owner_hash")
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - PostgreSQL and SQLite are the supported databases
        stmt = insert(table)
    returning = stmt.returning(table.c.id)
    _STATEMENTS[dialect] = returning
    return returning


_STATEMENTS: dict[str, ReturningInsert[Any]] = {}


def owners_with_pending(now: datetime | None = None) -> list[int]:
    """Owners that have deliveries due for processing (backed-off ones excluded)."""
    now = now or datetime.now(UTC)
    due = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.owner_id == AmoConfig.owner_id,
            WebhookDelivery.status == InboxStatus.PENDING,
            (WebhookDelivery.next_attempt_at.is_(None)) | (WebhookDelivery.next_attempt_at <= now),
        )
        .exists()
    )
    # Per owner through (owner_id, status, id): owners are few, the inbox is not.
    return list(db.session.scalars(select(AmoConfig.owner_id).where(due)))


def owners_of(delivery_ids: list[int]) -> list[int]:
    rows = db.session.execute(
        select(WebhookDelivery.owner_id).where(WebhookDelivery.id.in_(delivery_ids)).distinct()
    )
    return [r[0] for r in rows]


def due_pending(owner_id: int, limit: int, now: datetime | None = None) -> list[WebhookDelivery]:
    """The oldest pending deliveries of one owner that are not waiting out a back-off."""
    now = now or datetime.now(UTC)
    return list(
        db.session.scalars(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.owner_id == owner_id,
                WebhookDelivery.status == InboxStatus.PENDING,
                (WebhookDelivery.next_attempt_at.is_(None))
                | (WebhookDelivery.next_attempt_at <= now),
            )
            .order_by(WebhookDelivery.id)
            .limit(limit)
        )
    )


def counts(owner_id: int, since: datetime | None = None) -> dict[str, int]:
    """Deliveries per status (received since `since`, default the last 24 hours)."""
    since = since or datetime.now(UTC) - timedelta(hours=24)
    rows = db.session.execute(
        select(WebhookDelivery.status, func.count())
        .where(WebhookDelivery.owner_id == owner_id, WebhookDelivery.received_at >= since)
        .group_by(WebhookDelivery.status)
    )
    out = {
        s: 0
        for s in (
            InboxStatus.PENDING,
            InboxStatus.PROCESSED,
            InboxStatus.DUPLICATE,
            InboxStatus.IGNORED,
            InboxStatus.FAILED,
        )
    }
    out.update({status: int(n) for status, n in rows})
    out["total"] = sum(out.values())
    return out


def recent(owner_id: int, limit: int = 10) -> list[WebhookDelivery]:
    return list(
        db.session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.owner_id == owner_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
    )


def last_error(owner_id: int) -> WebhookDelivery | None:
    return db.session.scalar(
        select(WebhookDelivery)
        .where(WebhookDelivery.owner_id == owner_id, WebhookDelivery.error.is_not(None))
        .order_by(WebhookDelivery.id.desc())
        .limit(1)
    )


def prune(older_than: timedelta = RETENTION, batch: int = 5000) -> int:
    """Forget finished deliveries past retention; pending ones are never dropped.

    Walks each owner's oldest rows by id (rows arrive in id order), a batch at a time, so no
    index on received_at is needed on the hot insert path.
    """
    cutoff = datetime.now(UTC) - older_than
    removed = 0
    for owner_id in db.session.scalars(select(AmoConfig.owner_id)):
        while True:
            old = (
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.owner_id == owner_id,
                    WebhookDelivery.status != InboxStatus.PENDING,
                    WebhookDelivery.received_at < cutoff,
                )
                .order_by(WebhookDelivery.id)
                .limit(batch)
            )
            ids = list(db.session.scalars(old))
            if not ids:
                break
            db.session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
            db.session.commit()
            removed += len(ids)
            if len(ids) < batch:
                break
    return removed


def requeue_failed(owner_id: int) -> int:
    """Put failed deliveries back in the queue (after a reconnect, say)."""
    result = cast(
        "CursorResult[Any]",
        db.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.owner_id == owner_id,
                WebhookDelivery.status == InboxStatus.FAILED,
            )
            .values(status=InboxStatus.PENDING, next_attempt_at=None, attempts=0)
        ),
    )
    db.session.commit()
    return int(result.rowcount or 0)
