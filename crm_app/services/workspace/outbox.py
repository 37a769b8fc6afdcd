"""The outbox: edits amoCRM could not take yet, sent in order per entity by a worker.

A row is committed before anything else happens to it, so neither a killed worker nor a
restarted web process loses an edit. Rows of one entity (a deal and its notes) go strictly
in id order: a row waits while an older one of the same entity is open. When amoCRM answers
again, the heads of many deals' queues go out together, up to 50 edits per
``PATCH /api/v4/leads`` (amoCRM validates a batch as a whole; a refused batch is split).
Each row's version is checked against the mirror just before it is sent: if someone else
changed the entity meanwhile, the row becomes a conflict with both versions and is not sent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import and_, delete, func, or_, select, update

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import AmoCRMAPIError, AmoCRMRateLimited, AmoCRMValidationError
from crm_app.extensions import db
from crm_app.models import OutboxStatus, OutboxWrite
from crm_app.services.echo import remember_own_write
from crm_app.services.locks import LockTimeout, named_lock
from crm_app.services.workspace import lookup
from crm_app.services.workspace.send import (
    NO_RETRY,
    UPDATE_MODELS,
    Refused,
    field_errors,
    is_temporary,
    no_answer,
    refused,
    send,
    send_update_batch,
)

logger = logging.getLogger(__name__)

TASK_NAME = "workspace.outbox"
# A note's POST answer has no updated_at: our notes are remembered under this version, and
# their echo is recognised by id and text (crm_app.services.webhooks.apply).
NOTE_VERSION = 0
BATCH = 50  # amoCRM recommends at most 50 items per write request
HEADS = 500  # rows looked at per round
# Applied and dismissed edits stay visible in the card's history this long, then go.
RETENTION = timedelta(days=30)


def utcnow() -> datetime:
    return datetime.now(UTC)


def backoff(attempts: int, retry_after: float | None = None) -> float:
    """Seconds until the next try: short and capped, so a healed amoCRM is noticed quickly."""
    cap = float(current_app.config.get("WORKSPACE_OUTBOX_MAX_BACKOFF", 5.0))
    delay: float = min(cap, 0.5 * 2.0 ** max(0, attempts - 1))
    return max(delay, min(retry_after or 0.0, 60.0))


def has_open(owner_id: int, entity_type: str, entity_id: int | None) -> bool:
    return (
        db.session.scalar(
            select(OutboxWrite.id)
            .where(
                OutboxWrite.owner_id == owner_id,
                OutboxWrite.entity_type == entity_type,
                OutboxWrite.entity_id == entity_id
                if entity_id is not None
                else OutboxWrite.entity_id.is_(None),
                OutboxWrite.status.in_(OutboxStatus.OPEN),
            )
            .limit(1)
        )
        is not None
    )


def add(
    owner_id: int,
    entity_type: str,
    entity_id: int | None,
    op: str,
    payload: dict[str, Any],
    base_updated_at: int | None,
    *,
    user_id: int | None,
    reason: str,
    uncertain: bool = False,
    retry_after: float | None = None,
) -> OutboxWrite:
    """Store an edit for the worker (committed at once) and ask a worker to send it."""
    row = OutboxWrite(
        owner_id=owner_id,
        entity_type=entity_type,
        entity_id=entity_id,
        op=op,
        payload=payload,
        base_updated_at=base_updated_at,
        created_by=user_id,
        last_error=reason[:500],
        uncertain=uncertain,
        next_attempt_at=utcnow() + timedelta(seconds=backoff(1, retry_after)),
    )
    db.session.add(row)
    db.session.commit()
    kick(owner_id, backoff(1, retry_after))
    return row


def kick(owner_id: int, countdown: float | None = None) -> None:
    """Queue a drain; with the broker down the beat's sweep finds the rows later."""
    from crm_app.services.queue import enqueue

    try:
        enqueue(TASK_NAME, owner_id, countdown=countdown)
    except Exception as exc:
        logger.warning("outbox drain for owner %s not queued: %s", owner_id, type(exc).__name__)


def open_items(owner_id: int, entity_type: str, entity_id: int) -> list[OutboxWrite]:
    """Pending edits of one entity (the card shows them), oldest first."""
    return list(
        db.session.scalars(
            select(OutboxWrite)
            .where(
                OutboxWrite.owner_id == owner_id,
                OutboxWrite.entity_type == entity_type,
                OutboxWrite.entity_id == entity_id,
                OutboxWrite.status.in_(OutboxStatus.OPEN),
            )
            .order_by(OutboxWrite.id)
        )
    )


def owners_due(now: datetime | None = None) -> list[int]:
    now = now or utcnow()
    return list(
        db.session.scalars(
            select(OutboxWrite.owner_id)
            .where(
                OutboxWrite.status == OutboxStatus.PENDING,
                or_(OutboxWrite.next_attempt_at.is_(None), OutboxWrite.next_attempt_at <= now),
            )
            .distinct()
        )
    )


# -- draining ---------------------------------------------------------------------------------


@dataclass
class Pass:
    applied: int = 0
    conflicts: int = 0
    failed: int = 0
    requests: int = 0
    retry_in: float | None = None
    more: bool = False
    errors: list[str] = field(default_factory=list)


def _heads(owner_id: int, now: datetime) -> list[OutboxWrite]:
    """The oldest open row of each entity, if it is due (rows behind it wait their turn)."""
    first = (
        select(func.min(OutboxWrite.id))
        .where(OutboxWrite.owner_id == owner_id, OutboxWrite.status.in_(OutboxStatus.OPEN))
        .group_by(OutboxWrite.entity_type, OutboxWrite.entity_id)
    )
    return list(
        db.session.scalars(
            select(OutboxWrite)
            .where(
                OutboxWrite.id.in_(first),
                or_(OutboxWrite.next_attempt_at.is_(None), OutboxWrite.next_attempt_at <= now),
            )
            .order_by(OutboxWrite.id)
            .limit(HEADS)
        )
    )


def _finish(
    row: OutboxWrite, status: str, result: dict[str, Any] | None, error: str | None
) -> None:
    row.status = status
    row.result = result
    row.last_error = error
    row.finished_at = utcnow()
    row.next_attempt_at = None


def _mirror_version(row: OutboxWrite) -> tuple[Any, int | None]:
    model = UPDATE_MODELS[row.entity_type]
    entity = db.session.get(model, (row.owner_id, row.entity_id))
    return entity, (entity.updated_at if entity is not None else None)


def _already_there(entity: Any, payload: dict[str, Any]) -> bool:
    """After an answer that never came: the mirror (refreshed by the webhook) shows our values."""
    for key, value in payload.items():
        if key == "result":
            if (getattr(entity, "result_text", None) or "") != (value or {}).get("text", ""):
                return False
        elif key in ("custom_fields_values", "closed_at", "loss_reason_id", "updated_by"):
            continue
        elif getattr(entity, key, value) != value:
            return False
    return True


def _check_version(row: OutboxWrite, p: Pass) -> bool:
    """False when the row is settled without sending (a conflict, or it already landed)."""
    if row.op != "update" or row.base_updated_at is None:
        return True
    entity, current = _mirror_version(row)
    if entity is None:
        _finish(row, OutboxStatus.FAILED, None, "the entity is no longer in the mirror")
        p.failed += 1
        return False
    if current is None or current <= row.base_updated_at:
        return True
    if row.uncertain and _already_there(entity, row.payload):
        _settle(row, current, p)
        return False
    from crm_app.services.workspace.views import entity_view

    _finish(
        row,
        OutboxStatus.CONFLICT,
        {"theirs": entity_view(row.entity_type, entity), "yours": dict(row.payload)},
        "changed in amoCRM after this edit was made",
    )
    p.conflicts += 1
    return False


def _settle(
    row: OutboxWrite, stamp: int | None, p: Pass, extra: dict[str, Any] | None = None
) -> None:
    """Applied: record it, and let the entity's later edits build on this version."""
    _finish(row, OutboxStatus.APPLIED, {"updated_at": stamp, **(extra or {})}, None)
    p.applied += 1
    if row.entity_id is not None and row.base_updated_at is not None and stamp is not None:
        db.session.execute(
            update(OutboxWrite)
            .where(
                OutboxWrite.owner_id == row.owner_id,
                OutboxWrite.entity_type == row.entity_type,
                OutboxWrite.entity_id == row.entity_id,
                OutboxWrite.status.in_(OutboxStatus.OPEN),
                OutboxWrite.id > row.id,
                OutboxWrite.base_updated_at >= row.base_updated_at,
            )
            .values(base_updated_at=stamp)
            .execution_options(synchronize_session=False)
        )
    if row.op == "note" and (extra or {}).get("note_id"):
        remember_own_write(row.owner_id, "notes", int((extra or {})["note_id"]), NOTE_VERSION)
    elif row.entity_id is not None and stamp is not None:
        remember_own_write(row.owner_id, row.entity_type, row.entity_id, stamp)


def _temporary(rows: list[OutboxWrite], exc: AmoCRMAPIError, p: Pass) -> None:
    retry_after = exc.retry_after if isinstance(exc, AmoCRMRateLimited) else None
    uncertain = no_answer(exc)
    for row in rows:
        row.attempts += 1
        row.last_error = exc.message[:500]
        row.uncertain = row.uncertain or uncertain
        wait = backoff(row.attempts, retry_after)
        row.next_attempt_at = utcnow() + timedelta(seconds=wait)
        p.retry_in = wait if p.retry_in is None else min(p.retry_in, wait)
    p.errors.append(exc.message[:200])


def _send_one(client: AmoCRMClient, row: OutboxWrite, p: Pass) -> bool:
    """True to go on with the pass, False when amoCRM is unavailable (stop and back off)."""
    if row.uncertain and row.op in ("note", "create"):
        found = lookup.find_created(client, row)
        p.requests += 1
        if found is not None:
            _settle(row, None, p, found)
            db.session.commit()
            return True
    if row.op in ("note", "create"):
        # A create that loses its answer must not be sent twice: mark it before sending.
        row.uncertain = True
        db.session.commit()
    try:
        p.requests += 1
        sent = send(client, row.owner_id, row.entity_type, row.entity_id, row.op, row.payload)
    except AmoCRMAPIError as exc:
        db.session.rollback()
        if is_temporary(exc):
            _temporary([row], exc, p)
            db.session.commit()
            return False
        problem = refused(exc)
        _finish(row, OutboxStatus.FAILED, {"fields": problem.fields}, problem.detail)
        p.failed += 1
        db.session.commit()
        return True
    if row.op == "create":
        row.entity_id = row.entity_id or sent.entity_id
    _settle(row, sent.updated_at, p, {**sent.extra, "id": sent.entity_id})
    db.session.commit()
    return True


def _send_batch(client: AmoCRMClient, entity_type: str, rows: list[OutboxWrite], p: Pass) -> bool:
    items = [(int(r.entity_id or 0), dict(r.payload)) for r in rows]
    try:
        p.requests += 1
        stamps = send_update_batch(client, rows[0].owner_id, entity_type, items)
    except AmoCRMValidationError as exc:
        db.session.rollback()
        # All or nothing: the items amoCRM names fail, the others go again next round.
        bad = False
        for index, row in enumerate(rows):
            errors = field_errors(exc, index)
            if errors:
                _finish(row, OutboxStatus.FAILED, {"fields": errors}, "amoCRM rejected the values")
                p.failed += 1
                bad = True
        if not bad:  # cannot tell which: send them one by one
            for row in rows:
                if not _send_one(client, row, p):
                    return False
        db.session.commit()
        return True
    except AmoCRMAPIError as exc:
        db.session.rollback()
        if is_temporary(exc):
            _temporary(rows, exc, p)
            db.session.commit()
            return False
        return all(_send_one(client, row, p) for row in rows)
    for row, stamp in zip(rows, stamps, strict=True):
        _settle(row, stamp, p)
    db.session.commit()
    return True


def _round(client: AmoCRMClient, owner_id: int, p: Pass) -> bool:
    """Send every due head once; False when there was nothing to do or amoCRM is down."""
    heads = _heads(owner_id, utcnow())
    if not heads:
        return False
    batches: dict[str, list[OutboxWrite]] = {}
    for row in heads:
        if not _check_version(row, p):
            db.session.commit()
            continue
        if row.op == "update" and row.entity_type in UPDATE_MODELS and not row.uncertain:
            batches.setdefault(row.entity_type, []).append(row)
            continue
        if not _send_one(client, row, p):
            return False
    for entity_type, rows in batches.items():
        for start in range(0, len(rows), BATCH):
            chunk = rows[start : start + BATCH]
            ok = (
                _send_one(client, chunk[0], p)
                if len(chunk) == 1
                else _send_batch(client, entity_type, chunk, p)
            )
            if not ok:
                return False
    return True


def drain(owner_id: int, *, max_seconds: float = 10.0) -> Pass:
    """Send the owner's due outbox rows, round after round, until none is due or amoCRM fails.

    One pass per owner at a time. The lock's lifetime covers a pass plus one request in
    flight, so a worker killed mid-pass holds the owner up for well under a minute.
    """
    from crm_app.services.amo import NotConfigured, client_for_owner
    from crm_app.services.tokens import NotConnected

    p = Pass()
    started = time.monotonic()
    try:
        connect, read = current_app.config.get("WORKSPACE_WRITE_TIMEOUT", (3.05, 10.0))
        ttl = max_seconds + 2 * (float(connect) + float(read)) + 5
        with named_lock(f"workspace-outbox-{owner_id}", ttl=ttl, wait=0):
            try:
                client = client_for_owner(owner_id)
                client.timeout = (float(connect), float(read))
                client.tokens.access_token()
            except (NotConfigured, NotConnected) as exc:
                # Kept until the account is connected again; the beat's sweep retries.
                p.errors.append(str(exc))
                p.retry_in = 60.0
                return p
            except AmoCRMAPIError as exc:  # the token refresh itself failed: amoCRM is down
                p.errors.append(exc.message[:200])
                p.retry_in = backoff(2)
                return p
            # A 429 or 5xx ends the pass at once: the outbox's own backoff takes over.
            client.retry = NO_RETRY
            try:
                while _round(client, owner_id, p):
                    if time.monotonic() - started > max_seconds:
                        p.more = True
                        break
            finally:
                client.close()
    except LockTimeout:
        # Another pass holds the owner (or a killed one's lock has not expired yet): look
        # again shortly rather than leave the rows to the beat.
        p.retry_in = 5.0
        return p
    if p.retry_in is None and not p.more:
        p.retry_in = _next_due(owner_id)
    return p


def _next_due(owner_id: int) -> float | None:
    """Seconds until the owner's next waiting row is due (rows still backing off)."""
    when = db.session.scalar(
        select(func.min(OutboxWrite.next_attempt_at)).where(
            and_(OutboxWrite.owner_id == owner_id, OutboxWrite.status == OutboxStatus.PENDING)
        )
    )
    if when is None:
        return None
    return max(0.0, (when - utcnow()).total_seconds())


def settle_refused(row: OutboxWrite, problem: Refused) -> None:
    _finish(row, OutboxStatus.FAILED, {"fields": problem.fields}, problem.detail)


def prune(older_than: timedelta = RETENTION, batch: int = 5000) -> int:
    """Forget applied and dismissed edits finished before the retention; returns how many.

    Pending edits, conflicts and refusals nobody has closed are never pruned: they still ask
    for a person's decision.
    """
    cutoff = utcnow() - older_than
    removed = 0
    while True:
        ids = list(
            db.session.scalars(
                select(OutboxWrite.id)
                .where(
                    OutboxWrite.status.in_((OutboxStatus.APPLIED, OutboxStatus.DISMISSED)),
                    OutboxWrite.finished_at < cutoff,
                )
                .limit(batch)
            )
        )
        if not ids:
            return removed
        db.session.execute(delete(OutboxWrite).where(OutboxWrite.id.in_(ids)))
        db.session.commit()
        removed += len(ids)
