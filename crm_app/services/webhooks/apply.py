"""Apply stored deliveries to the mirror: events are hints, amoCRM's current state is the truth.

Each pass takes an owner's pending deliveries, collects the ids they name per entity type,
re-reads those ids from the API in batches (``crm_app.services.sync.refetch_entities``) and
confirms deletes by reading them back (amoCRM answers 204 for an id that is gone). Order of
arrival therefore never matters, and a redelivered or reordered hook cannot roll the mirror back.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Insert, select, tuple_, update

from crm_app.amocrm.errors import AmoCRMAPIError, AmoCRMRateLimited
from crm_app.extensions import db
from crm_app.models import (
    AmoConfig,
    InboxStatus,
    Note,
    SyncLog,
    WebhookDelivery,
    WebhookEventKey,
)
from crm_app.services.echo import is_own_echo, own_echoes, unix_version
from crm_app.services.locks import LockTimeout, named_lock
from crm_app.services.webhooks import inbox
from crm_app.services.webhooks.parse import Event, MalformedBody, parse_delivery

logger = logging.getLogger(__name__)

BATCH_DELIVERIES = 500
MAX_ATTEMPTS = 12
LOG_MERGE_WINDOW = timedelta(seconds=60)

MIRROR_MODELS: tuple[str, ...] = ("contacts", "leads", "tasks", "lead_notes", "contact_notes")
# Which sync flag of the owner's config lets an entity into the mirror.
SYNC_FLAGS = {"leads": "sync_leads", "contacts": "sync_contacts", "tasks": "sync_tasks"}
# `note` events of these entities re-read the note into the notes mirror.
NOTE_ENTITIES = {"leads": "lead_notes", "contacts": "contact_notes"}


class RetryLater(RuntimeError):
    """Processing hit a temporary amoCRM failure; the deliveries stay pending."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass
class Plan:
    """What one batch of deliveries asks for."""

    refetch: dict[str, set[int]] = field(default_factory=dict)
    deletes: dict[str, set[int]] = field(default_factory=dict)
    new_keys: list[tuple[str, str, int, str, int]] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)
    changes: int = 0
    duplicates: int = 0
    ignored: int = 0
    echoes: int = 0  # our own writes coming back: nothing to re-read
    statuses: dict[int, str] = field(default_factory=dict)
    summaries: dict[int, dict[str, int]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    fresh: dict[int, int] = field(default_factory=dict)  # new changes per delivery


def _mirrored_entities(cfg: AmoConfig | None) -> set[str]:
    entities = set()
    for entity, flag in SYNC_FLAGS.items():
        if cfg is None or getattr(cfg, flag, True):
            entities.add(entity)
    # Companies arrive under `contacts`; there is no company mirror, so they are ignored.
    return entities


def _backoff(attempts: int) -> float:
    return float(min(600, 5 * 2 ** max(0, attempts - 1)))


# -- planning -------------------------------------------------------------------------------------


def _existing_keys(
    owner_id: int, keys: set[tuple[str, str, int, str]]
) -> dict[tuple[str, str, int, str], datetime | None]:
    """Keys already applied by earlier deliveries → when that earlier delivery was processed."""
    found: dict[tuple[str, str, int, str], datetime | None] = {}
    items = list(keys)
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        rows = db.session.execute(
            select(
                WebhookEventKey.entity,
                WebhookEventKey.action,
                WebhookEventKey.entity_id,
                WebhookEventKey.modified,
                WebhookDelivery.processed_at,
            )
            .join(WebhookDelivery, WebhookDelivery.id == WebhookEventKey.delivery_id)
            .where(
                WebhookEventKey.owner_id == owner_id,
                tuple_(
                    WebhookEventKey.entity,
                    WebhookEventKey.action,
                    WebhookEventKey.entity_id,
                    WebhookEventKey.modified,
                ).in_(chunk),
            )
        )
        for entity, action, entity_id, modified, processed_at in rows:
            found[(entity, action, entity_id, modified)] = processed_at
    return found


def plan_batch(owner_id: int, rows: list[WebhookDelivery], mirrored: set[str]) -> Plan:
    """Parse the rows, drop changes already applied, and gather the ids to re-read."""
    plan = Plan()
    parsed: list[tuple[WebhookDelivery, list[Event]]] = []
    wanted: set[tuple[str, str, int, str]] = set()
    for row in rows:
        try:
            delivery = parse_delivery(bytes(row.body))
        except MalformedBody as exc:
            # Checked at the door already; a row that still fails is kept for a human to read.
            plan.statuses[row.id] = InboxStatus.FAILED
            plan.errors[row.id] = f"unreadable body: {exc}"
            continue
        parsed.append((row, delivery.events))
        for event in delivery.events:
            if event.entity_id is not None and event.modified:
                wanted.add((event.entity, event.action, event.entity_id, event.modified))
    existing = _existing_keys(owner_id, wanted) if wanted else {}
    echoes = _own_echoes(owner_id, parsed, mirrored)
    seen_here: set[tuple[str, str, int, str]] = set()
    for row, events in parsed:
        summary: Counter[str] = Counter()
        fresh = duplicate = 0
        for event in events:
            summary[event.name] += 1
            plan.events[event.name] += 1
            actionable = event.entity in mirrored and event.entity_id is not None
            if event.entity_id is not None and event.modified:
                key = (event.entity, event.action, event.entity_id, event.modified)
                if key in seen_here or key in existing:
                    duplicate += 1
                    plan.duplicates += 1
                    earlier = existing.get(key) if key not in seen_here else None
                    # The earlier read may predate this delivery; re-reading is cheap and safe.
                    if (
                        actionable
                        and earlier is not None
                        and earlier < row.received_at
                        and _echo_key(event) not in echoes
                    ):
                        _add(plan, event)
                    continue
                seen_here.add(key)
                plan.new_keys.append((*key, row.id))
            if event.action == "note" and (
                NOTE_ENTITIES.get(event.entity) is None or event.note_id is None
            ):
                actionable = False
            if not actionable:
                plan.ignored += 1
                continue
            if _echo_key(event) in echoes or _own_note_echo(owner_id, event):
                # The mirror was written when we made this change; amoCRM only confirms it.
                plan.echoes += 1
                continue
            fresh += 1
            plan.changes += 1
            _add(plan, event)
        plan.summaries[row.id] = dict(summary)
        plan.fresh[row.id] = fresh
        if fresh:
            plan.statuses[row.id] = InboxStatus.PROCESSED
        elif duplicate:
            plan.statuses[row.id] = InboxStatus.DUPLICATE
        else:
            plan.statuses[row.id] = InboxStatus.IGNORED
    return plan


def _echo_key(event: Event) -> tuple[str, int, int] | None:
    version = unix_version(event.modified)
    if event.entity_id is None or version is None or event.is_delete:
        return None
    return (event.entity, event.entity_id, version)


def _own_note_echo(owner_id: int, event: Event) -> bool:
    """A note we added ourselves, still as we wrote it: the webhook carries no version we could
    match (amoCRM's answer to a note POST has no updated_at), so the text is compared."""
    note_id = event.note_id
    if note_id is None or not is_own_echo(owner_id, "notes", note_id, 0):
        return False
    note = db.session.get(Note, (owner_id, note_id))
    raw = event.data.get("note")
    sent: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return note is not None and (note.text or "") == str(sent.get("text") or "")


def _own_echoes(
    owner_id: int, parsed: list[tuple[WebhookDelivery, list[Event]]], mirrored: set[str]
) -> set[tuple[str, int, int] | None]:
    """Which of the batch's change events announce a version we wrote ourselves."""
    keys = {
        key
        for _row, events in parsed
        for event in events
        if event.entity in mirrored and (key := _echo_key(event)) is not None
    }
    found: set[tuple[str, int, int] | None] = set()
    found.update(own_echoes(owner_id, keys) if keys else ())
    return found


def _add(plan: Plan, event: Event) -> None:
    assert event.entity_id is not None
    if event.action == "note":
        note_entity = NOTE_ENTITIES.get(event.entity)
        if note_entity is not None and event.note_id is not None:
            plan.refetch.setdefault(note_entity, set()).add(event.note_id)
        return
    target = plan.deletes if event.is_delete else plan.refetch
    target.setdefault(event.entity, set()).add(event.entity_id)


# -- reading amoCRM -------------------------------------------------------------------------------


def _apply_plan(owner_id: int, plan: Plan) -> dict[str, Any]:
    """Re-read every hinted id (deletes included) inside the caller's transaction.

    ``refetch_entities`` upserts what amoCRM returns and deletes only ids that answer 204 on
    their own, which is the confirmation a delete hook needs.
    """
    from crm_app.services.amo import client_for_owner
    from crm_app.services.sync import refetch_entities

    upserted: dict[str, int] = {}
    deleted: dict[str, int] = {}
    wanted = {e: plan.refetch.get(e, set()) | plan.deletes.get(e, set()) for e in MIRROR_MODELS}
    wanted = {e: ids for e, ids in wanted.items() if ids}
    if not wanted:
        return {"upserted": upserted, "deleted": deleted}
    client = client_for_owner(owner_id)
    try:
        conn = db.session.connection()
        for entity, ids in wanted.items():
            up, gone = refetch_entities(owner_id, entity, sorted(ids), client=client, conn=conn)
            upserted[entity], deleted[entity] = up, gone
    finally:
        client.close()
    return {"upserted": upserted, "deleted": deleted}


def _insert_keys(owner_id: int, keys: list[tuple[str, str, int, str, int]]) -> None:
    if not keys:
        return
    rows = [
        {
            "owner_id": owner_id,
            "entity": e,
            "action": a,
            "entity_id": i,
            "modified": m,
            "delivery_id": d,
            "created_at": datetime.now(UTC),
        }
        for e, a, i, m, d in keys
    ]
    dialect = db.engine.dialect.name
    stmt: Insert
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(WebhookEventKey).on_conflict_do_nothing(constraint="uq_webhook_event_key")
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(WebhookEventKey).on_conflict_do_nothing()
    else:  # pragma: no cover - other databases are not supported targets
        from sqlalchemy import insert

        stmt = insert(WebhookEventKey)
    for start in range(0, len(rows), 1000):
        db.session.execute(stmt, rows[start : start + 1000])


def _finish(owner_id: int, rows: list[WebhookDelivery], plan: Plan) -> int:
    """Record keys and statuses; returns the changes this pass really applied.

    Only rows still pending are moved on, so even two passes racing over the same rows (a lock
    lost with a restarted Redis) count each change once.
    """
    now = datetime.now(UTC)
    _insert_keys(owner_id, plan.new_keys)
    applied = 0
    for row in rows:
        status = plan.statuses.get(row.id, InboxStatus.IGNORED)
        result = cast(
            "CursorResult[Any]",
            db.session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == row.id, WebhookDelivery.status == InboxStatus.PENDING)
                .values(
                    status=status,
                    processed_at=now,
                    attempts=WebhookDelivery.attempts + 1,
                    next_attempt_at=None,
                    summary=plan.summaries.get(row.id),
                    error=plan.errors.get(row.id),
                )
                .execution_options(synchronize_session=False)
            ),
        )
        if result.rowcount:
            applied += plan.fresh.get(row.id, 0)
    return applied


def _fail(rows: list[WebhookDelivery], message: str, delay: float | None) -> None:
    now = datetime.now(UTC)
    for row in rows:
        attempts = (row.attempts or 0) + 1
        wait = delay if delay is not None else _backoff(attempts)
        give_up = attempts >= MAX_ATTEMPTS
        db.session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == row.id, WebhookDelivery.status == InboxStatus.PENDING)
            .values(
                attempts=attempts,
                error=message[:500],
                status=InboxStatus.FAILED if give_up else InboxStatus.PENDING,
                next_attempt_at=None if give_up else now + timedelta(seconds=wait),
            )
        )


def write_log(owner_id: int, status: str, details: dict[str, Any]) -> None:
    """A `webhook` sync-log entry; a burst of passes within a minute shares one entry."""
    now = datetime.now(UTC)
    last = db.session.scalar(
        select(SyncLog)
        .where(SyncLog.owner_id == owner_id, SyncLog.operation == "webhook")
        .order_by(SyncLog.id.desc())
        .limit(1)
    )
    if (
        status == "success"
        and last is not None
        and last.status == "success"
        and last.timestamp >= now - LOG_MERGE_WINDOW
    ):
        merged = dict(last.details or {})
        for key, value in details.items():
            if isinstance(value, int) and isinstance(merged.get(key), int):
                merged[key] = merged[key] + value
            elif isinstance(value, dict):
                sub = dict(merged.get(key) or {})
                for k, v in value.items():
                    sub[k] = int(sub.get(k, 0)) + int(v)
                merged[key] = sub
            else:
                merged[key] = value
        merged["passes"] = int(merged.get("passes", 1)) + 1
        last.details = merged
        last.timestamp = now
        return
    db.session.add(
        SyncLog(
            owner_id=owner_id,
            operation="webhook",
            status=status,
            details={**details, "passes": 1},
            timestamp=now,
        )
    )


def process_batch(owner_id: int, rows: list[WebhookDelivery]) -> dict[str, Any]:
    """Plan, read amoCRM, then commit keys, statuses and the log together."""
    cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
    plan = plan_batch(owner_id, rows, _mirrored_entities(cfg))
    try:
        applied = _apply_plan(owner_id, plan)
    except AmoCRMAPIError as exc:
        db.session.rollback()
        from crm_app.services.amo import record_api_failure

        record_api_failure(owner_id, exc)
        delay = exc.retry_after if isinstance(exc, AmoCRMRateLimited) else None
        _fail(rows, f"amoCRM: {exc.message}", delay)
        write_log(owner_id, "error", {"deliveries": len(rows), "error": exc.message[:300]})
        db.session.commit()
        raise RetryLater(exc.message, delay or _backoff((rows[0].attempts or 0) + 1)) from exc
    except Exception as exc:
        # Not connected, not configured, a bug: keep the rows, back off, tell the admin.
        db.session.rollback()
        message = f"{type(exc).__name__}: {exc}"[:300]
        logger.warning("webhook processing for owner %s failed: %s", owner_id, message)
        _fail(rows, message, None)
        write_log(owner_id, "error", {"deliveries": len(rows), "error": message})
        db.session.commit()
        raise RetryLater(message, _backoff((rows[0].attempts or 0) + 1)) from exc
    applied_changes = _finish(owner_id, rows, plan)
    details = {
        "deliveries": len(rows),
        "changes": applied_changes,
        "duplicates": plan.duplicates,
        "ignored": plan.ignored,
        "echoes": plan.echoes,
        "events": dict(plan.events),
        **applied,
    }
    write_log(owner_id, "success", details)
    db.session.commit()
    return details


def process_owner(
    owner_id: int, *, max_seconds: float = 50.0, batch: int = BATCH_DELIVERIES
) -> dict[str, Any]:
    """Apply every due pending delivery of one owner; one pass at a time per owner.

    Returns totals plus `more` (work left after the time budget) and `retry_in` (seconds,
    after a temporary failure).
    """
    totals: Counter[str] = Counter()
    started = time.monotonic()
    try:
        with named_lock(f"webhooks-apply-{owner_id}", ttl=max_seconds + 120, wait=max_seconds):
            while True:
                rows = inbox.due_pending(owner_id, batch)
                if not rows:
                    return {**totals, "more": False}
                try:
                    details = process_batch(owner_id, rows)
                except RetryLater as exc:
                    return {**totals, "more": False, "retry_in": exc.delay}
                for key in ("deliveries", "changes", "duplicates", "ignored", "echoes"):
                    totals[key] += int(details.get(key, 0))
                if time.monotonic() - started > max_seconds:
                    return {**totals, "more": True}
    except LockTimeout:
        # Another pass holds the owner for longer than we waited; it will see our rows.
        return {**totals, "more": True}
