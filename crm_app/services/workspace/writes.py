"""The workspace's writes: check the version seen, send one request, mirror the answer.

Every edit names the version the person saw (amoCRM's ``updated_at``). If the mirror holds a
newer one (a webhook or a sync brought someone else's change), nothing is sent and the caller
gets both versions. Otherwise exactly one amoCRM request carries only the changed fields, and
its answer goes into the mirror at once. When amoCRM answers 429/5xx or not at all, the edit
goes to the outbox (``outbox.py``) instead; an edit of an entity that already has edits waiting
there queues behind them, so one entity's edits reach amoCRM in the order they were made.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app
from sqlalchemy import select

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import AmoCRMAPIError, AmoCRMRateLimited
from crm_app.extensions import db
from crm_app.models import Contact, Lead, LossReason, PipelineStatus, Task
from crm_app.services.echo import remember_own_write
from crm_app.services.workspace import outbox
from crm_app.services.workspace.results import (
    Applied,
    Conflict,
    Invalid,
    NotFound,
    Outcome,
    Pending,
)
from crm_app.services.workspace.send import NO_RETRY, is_temporary, no_answer, refused, send
from crm_app.services.workspace.views import entity_view

logger = logging.getLogger(__name__)

LEAD_FIELDS = ("name", "price", "status_id", "pipeline_id", "responsible_user_id", "loss_reason_id")
CONTACT_FIELDS = ("name", "first_name", "last_name", "responsible_user_id")
TASK_FIELDS = ("text", "complete_till", "responsible_user_id", "task_type_id", "is_completed")
MODELS: dict[str, Any] = {"leads": Lead, "contacts": Contact, "tasks": Task}


def _client(owner_id: int) -> AmoCRMClient:
    """A client that gives up at once on 429/5xx: the outbox retries, the person never waits."""
    from crm_app.models import AmoToken
    from crm_app.services.amo import NotConfigured, client_for_owner

    if db.session.scalar(select(AmoToken.id).where(AmoToken.owner_id == owner_id)) is None:
        raise NotConfigured("amoCRM is not connected")
    client = client_for_owner(owner_id)
    client.retry = NO_RETRY
    client.timeout = current_app.config.get("WORKSPACE_WRITE_TIMEOUT", (3.05, 10.0))
    return client


def _locked(model: Any, owner_id: int, entity_id: int) -> Any:
    # Row lock (PostgreSQL) for the duration of the write: two tabs editing the same deal
    # are serialised, and the second one sees the first one's new version.
    return db.session.scalar(
        select(model)
        .where(model.owner_id == owner_id, model.id == entity_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def _fresh(
    model: Any,
    entity_type: str,
    owner_id: int,
    entity_id: int,
    changes: dict[str, Any],
    seen: int | None,
) -> tuple[Any, Outcome | None]:
    """The row, locked, when it exists and is the version the person saw; else the outcome."""
    row = _locked(model, owner_id, entity_id)
    if row is None:
        db.session.rollback()
        return None, NotFound(entity_type, entity_id)
    if _stale(row, seen):
        theirs = entity_view(entity_type, row)
        db.session.rollback()
        return None, Conflict(entity_type, entity_id, theirs, {**changes, "updated_at": seen})
    return row, None


def _write(
    owner_id: int,
    entity_type: str,
    entity_id: int | None,
    op: str,
    payload: dict[str, Any],
    base: int | None,
    user_id: int | None,
    answer_row: Any = None,
) -> Outcome:
    """Send now, or queue behind earlier edits / on a temporary failure."""
    client = _client(owner_id)
    queue_key = entity_id
    if outbox.has_open(owner_id, entity_type, queue_key):
        client.close()
        db.session.rollback()
        row = outbox.add(
            owner_id, entity_type, entity_id, op, payload, base,
            user_id=user_id, reason="waiting for earlier edits of the same entity",
        )  # fmt: skip
        return _pending(row, answer_row)
    try:
        sent = send(client, owner_id, entity_type, entity_id, op, payload)
    except AmoCRMAPIError as exc:
        db.session.rollback()
        if is_temporary(exc):
            retry_after = exc.retry_after if isinstance(exc, AmoCRMRateLimited) else None
            row = outbox.add(
                owner_id, entity_type, entity_id, op, payload, base,
                user_id=user_id, reason=exc.message, uncertain=no_answer(exc),
                retry_after=retry_after,
            )  # fmt: skip
            logger.info(
                "owner %s: %s %s %s queued in the outbox (%s)",
                owner_id, op, entity_type, entity_id, type(exc).__name__,
            )  # fmt: skip
            return _pending(row, answer_row)
        problem = refused(exc)
        if not problem.fields:
            return NotFound(entity_type, int(entity_id or 0))
        return Invalid(problem.fields, problem.detail)
    finally:
        client.close()
    db.session.commit()
    target_type = "tasks" if (entity_type == "tasks" and op == "create") else entity_type
    target_id = sent.entity_id
    if op == "note":
        from crm_app.models import Note

        remember_own_write(owner_id, "notes", int(sent.extra["note_id"]), outbox.NOTE_VERSION)
        note = db.session.get(Note, (owner_id, sent.extra["note_id"]))
        view = note_view(note) if note is not None else {}
        return Applied("notes", int(sent.extra["note_id"]), view)
    if sent.updated_at is not None and target_id is not None:
        remember_own_write(owner_id, target_type, int(target_id), sent.updated_at)
    mirrored = db.session.get(MODELS[target_type], (owner_id, target_id))
    view = entity_view(target_type, mirrored) if mirrored is not None else {}
    return Applied(target_type, int(target_id or 0), view)


def _pending(row: Any, answer_row: Any) -> Pending:
    current = None
    if answer_row is not None:
        db.session.refresh(answer_row)
        current = entity_view(row.entity_type, answer_row)
    return Pending(
        row.entity_type, row.entity_id, row.id, dict(row.payload), row.last_error or "", current
    )


def note_view(note: Any) -> dict[str, Any]:
    return {
        "id": note.id,
        "entity_type": note.entity_type,
        "entity_id": note.entity_id,
        "note_type": note.note_type,
        "text": note.text,
        "params": note.params,
        "created_by": note.created_by,
        "created_at": note.created_at,
        "updated_at": note.updated_at,
    }


def _stale(row: Any, seen: int | None) -> bool:
    return seen is not None and row.updated_at is not None and row.updated_at > seen


# -- deals ----------------------------------------------------------------------------------


def _lead_payload(owner_id: int, row: Lead, changes: dict[str, Any]) -> dict[str, Any] | Invalid:
    """Only the changed fields; a status always travels with its pipeline (142/143 exist in
    every pipeline, and a lone one closes the deal in its current pipeline)."""
    payload = {k: changes[k] for k in LEAD_FIELDS if k in changes}
    if "status_id" in payload:
        status_id = payload["status_id"]
        pipeline_id = payload.get("pipeline_id")
        if pipeline_id is None:
            if status_id in (142, 143):
                pipeline_id = row.pipeline_id
            else:
                pipeline_id = db.session.scalar(
                    select(PipelineStatus.pipeline_id).where(
                        PipelineStatus.owner_id == owner_id, PipelineStatus.id == status_id
                    )
                )
        known = db.session.scalar(
            select(PipelineStatus.type).where(
                PipelineStatus.owner_id == owner_id,
                PipelineStatus.pipeline_id == pipeline_id,
                PipelineStatus.id == status_id,
            )
        )
        if known is None:
            return Invalid({"status_id": "not a stage of the deal's pipeline"})
        if known == 1:
            return Invalid({"status_id": "the unsorted stage cannot be set"})
        payload["pipeline_id"] = pipeline_id
    elif "pipeline_id" in payload and payload["pipeline_id"] != row.pipeline_id:
        first = outbox_first_status(owner_id, int(payload["pipeline_id"]))
        if first is None:
            return Invalid({"pipeline_id": "unknown pipeline"})
        payload["status_id"] = first
    reason = payload.get("loss_reason_id")
    if reason is not None:
        mirrored = db.session.scalar(
            select(LossReason.id).where(LossReason.owner_id == owner_id).limit(1)
        )
        if mirrored is not None and db.session.get(LossReason, (owner_id, reason)) is None:
            return Invalid({"loss_reason_id": "unknown loss reason"})
    return payload


def outbox_first_status(owner_id: int, pipeline_id: int) -> int | None:
    from crm_app.services.workspace.apply import first_status

    return first_status(owner_id, pipeline_id)


def update_lead(
    owner_id: int,
    lead_id: int,
    changes: dict[str, Any],
    seen_updated_at: int | None,
    *,
    user_id: int | None = None,
) -> Outcome:
    """Change a deal's name, price, stage, pipeline, responsible user or loss reason."""
    row, refused = _fresh(Lead, "leads", owner_id, lead_id, changes, seen_updated_at)
    if refused is not None:
        return refused
    payload = _lead_payload(owner_id, row, changes)
    if isinstance(payload, Invalid):
        db.session.rollback()
        return payload
    if not payload:
        db.session.rollback()
        return Invalid({"_": "nothing to change"})
    return _write(owner_id, "leads", lead_id, "update", payload, seen_updated_at, user_id, row)


def create_lead(
    owner_id: int,
    *,
    name: str,
    price: int | None = None,
    pipeline_id: int | None = None,
    status_id: int | None = None,
    responsible_user_id: int | None = None,
    contact_id: int | None = None,
    contact: dict[str, Any] | None = None,
    user_id: int | None = None,
) -> Outcome:
    """A new deal with an existing contact (``contact_id``) or a new one (``contact``: name,
    phone, email) in one ``POST /api/v4/leads/complex``."""
    payload: dict[str, Any] = {"name": name}
    for key, value in (
        ("price", price),
        ("pipeline_id", pipeline_id),
        ("status_id", status_id),
        ("responsible_user_id", responsible_user_id),
    ):
        if value is not None:
            payload[key] = value
    if status_id is not None and pipeline_id is None:
        payload["pipeline_id"] = db.session.scalar(
            select(PipelineStatus.pipeline_id).where(
                PipelineStatus.owner_id == owner_id, PipelineStatus.id == status_id
            )
        )
    if contact_id is not None:
        if db.session.get(Contact, (owner_id, contact_id)) is None:
            return Invalid({"contact_id": "unknown contact"})
        payload["_embedded"] = {"contacts": [{"id": contact_id}]}
    elif contact:
        ref: dict[str, Any] = {"name": contact.get("name") or name}
        fields = []
        if contact.get("phone"):
            fields.append(
                {
                    "field_code": "PHONE",
                    "values": [{"value": contact["phone"], "enum_code": "WORK"}],
                }
            )
        if contact.get("email"):
            fields.append(
                {
                    "field_code": "EMAIL",
                    "values": [{"value": contact["email"], "enum_code": "WORK"}],
                }
            )
        if fields:
            ref["custom_fields_values"] = fields
        payload["_embedded"] = {"contacts": [ref]}
    return _write(owner_id, "leads", None, "create", payload, None, user_id)


# -- notes -----------------------------------------------------------------------------------


def add_note(
    owner_id: int, entity_type: str, entity_id: int, text: str, *, user_id: int | None = None
) -> Outcome:
    """A text (``common``) note on a deal or contact: one ``POST``; no version needed."""
    model = MODELS.get(entity_type)
    if model is None or entity_type == "tasks":
        raise ValueError("notes belong to leads or contacts")
    if db.session.get(model, (owner_id, entity_id)) is None:
        return NotFound(entity_type, entity_id)
    text = text.strip()
    if not text:
        return Invalid({"text": "empty note"})
    payload = {"note_type": "common", "params": {"text": text}}
    return _write(owner_id, entity_type, entity_id, "note", payload, None, user_id)


# -- tasks -----------------------------------------------------------------------------------


def create_task(
    owner_id: int,
    *,
    text: str,
    complete_till: int,
    entity_type: str | None = None,
    entity_id: int | None = None,
    task_type_id: int | None = None,
    responsible_user_id: int | None = None,
    user_id: int | None = None,
) -> Outcome:
    """A task (text and due time are required by amoCRM), optionally on a deal or contact."""
    payload: dict[str, Any] = {"text": text, "complete_till": complete_till}
    if entity_type is not None and entity_id is not None:
        model = MODELS.get(entity_type)
        if model is None or entity_type == "tasks":
            return Invalid({"entity_type": "leads or contacts"})
        if db.session.get(model, (owner_id, entity_id)) is None:
            return Invalid({"entity_id": "unknown entity"})
        payload.update(entity_type=entity_type, entity_id=entity_id)
    if task_type_id is not None:
        payload["task_type_id"] = task_type_id
    if responsible_user_id is not None:
        payload["responsible_user_id"] = responsible_user_id
    return _write(owner_id, "tasks", None, "create", payload, None, user_id)


def update_task(
    owner_id: int,
    task_id: int,
    changes: dict[str, Any],
    seen_updated_at: int | None = None,
    *,
    user_id: int | None = None,
) -> Outcome:
    """Edit or complete a task (``is_completed`` with an optional ``result`` text)."""
    row, refused = _fresh(Task, "tasks", owner_id, task_id, changes, seen_updated_at)
    if refused is not None:
        return refused
    payload = {k: changes[k] for k in TASK_FIELDS if k in changes}
    if changes.get("result"):
        payload["result"] = {"text": str(changes["result"])}
    if not payload:
        db.session.rollback()
        return Invalid({"_": "nothing to change"})
    return _write(owner_id, "tasks", task_id, "update", payload, seen_updated_at, user_id, row)


# -- contacts --------------------------------------------------------------------------------


def update_contact(
    owner_id: int,
    contact_id: int,
    changes: dict[str, Any],
    seen_updated_at: int | None,
    *,
    user_id: int | None = None,
) -> Outcome:
    """Edit a contact's names, responsible user, phones or e-mails (lists replace the field)."""
    row, refused = _fresh(Contact, "contacts", owner_id, contact_id, changes, seen_updated_at)
    if refused is not None:
        return refused
    payload: dict[str, Any] = {k: changes[k] for k in CONTACT_FIELDS if k in changes}
    fields = []
    for key, code in (("phones", "PHONE"), ("emails", "EMAIL")):
        if key in changes and changes[key] is not None:
            values = [{"value": v, "enum_code": "WORK"} for v in changes[key]]
            fields.append({"field_code": code, "values": values})
    if fields:
        payload["custom_fields_values"] = fields
    if not payload:
        db.session.rollback()
        return Invalid({"_": "nothing to change"})
    return _write(
        owner_id, "contacts", contact_id, "update", payload, seen_updated_at, user_id, row
    )


def contact_payload_update(
    owner_id: int,
    contact_id: int,
    payload: dict[str, Any],
    seen_updated_at: int | None,
    *,
    user_id: int | None = None,
) -> Outcome:
    """Send an amoCRM-shaped contact body again (a conflict re-applied on top of theirs)."""
    row = _locked(Contact, owner_id, contact_id)
    if row is None:
        db.session.rollback()
        return NotFound("contacts", contact_id)
    return _write(
        owner_id, "contacts", contact_id, "update", payload, seen_updated_at, user_id, row
    )
