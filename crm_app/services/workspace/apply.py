"""Put a write's effect into the mirror straight from amoCRM's answer (no re-read)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import Contact, Lead, Note, PipelineStatus, Task
from crm_app.services.sync.mappers import contact_details

CLOSED = (142, 143)


def now_ts() -> int:
    return int(time.time())


def _raw(row: Any, changes: dict[str, Any]) -> None:
    raw = dict(row.raw or {})
    raw.update({k: v for k, v in changes.items() if k != "custom_fields_values"})
    row.raw = raw


def apply_lead_update(row: Lead, payload: dict[str, Any], updated_at: int | None) -> None:
    """Fields amoCRM accepted; closing stamps ``closed_at`` as amoCRM does when it is omitted."""
    for key in ("name", "price", "status_id", "pipeline_id", "responsible_user_id"):
        if key in payload:
            setattr(row, key, payload[key])
    stamp = updated_at or now_ts()
    if "status_id" in payload:
        if payload["status_id"] in CLOSED and row.closed_at is None:
            row.closed_at = payload.get("closed_at") or stamp
        elif payload["status_id"] not in CLOSED:
            row.closed_at = None
    _raw(row, payload)
    row.updated_at = stamp
    row.synced_at = datetime.now(UTC)


def apply_contact_update(
    row: Contact, payload: dict[str, Any], updated_at: int | None, region: str = "RU"
) -> None:
    for key in ("name", "first_name", "last_name", "responsible_user_id"):
        if key in payload:
            setattr(row, key, payload[key])
    if "custom_fields_values" in payload:
        # amoCRM replaces a multitext field's whole list: so does the mirror.
        merged = {
            str(f.get("field_code") or f.get("field_id")): f for f in row.custom_fields_values or []
        }
        for field in payload["custom_fields_values"]:
            merged[str(field.get("field_code") or field.get("field_id"))] = field
        row.custom_fields_values = list(merged.values())
        phones, emails, _telegram = contact_details(
            {"custom_fields_values": row.custom_fields_values}, region
        )
        row.phones, row.emails = phones, emails
        row.phone = next((p for p in phones if p.startswith("+")), None)
        row.email = emails[0] if emails else None
    _raw(row, payload)
    row.updated_at = updated_at or now_ts()
    row.synced_at = datetime.now(UTC)


def apply_task_update(row: Task, payload: dict[str, Any], updated_at: int | None) -> None:
    for key in ("text", "complete_till", "responsible_user_id", "task_type_id", "is_completed"):
        if key in payload:
            setattr(row, key, payload[key])
    result = payload.get("result")
    if isinstance(result, dict) and result.get("text"):
        row.result_text = str(result["text"])
    _raw(row, payload)
    row.updated_at = updated_at or now_ts()
    row.synced_at = datetime.now(UTC)


def insert_task(owner_id: int, task_id: int, payload: dict[str, Any]) -> Task:
    stamp = now_ts()
    row = Task(
        owner_id=owner_id,
        id=task_id,
        text=payload.get("text"),
        task_type_id=payload.get("task_type_id") or 1,
        entity_type=payload.get("entity_type"),
        entity_id=payload.get("entity_id"),
        responsible_user_id=payload.get("responsible_user_id"),
        is_completed=False,
        complete_till=payload.get("complete_till"),
        created_at=stamp,
        updated_at=stamp,
        raw={k: v for k, v in payload.items() if k != "request_id"},
    )
    db.session.merge(row)
    return row


def insert_note(
    owner_id: int, entity_type: str, entity_id: int, note_id: int, payload: dict[str, Any]
) -> Note:
    stamp = now_ts()
    params = dict(payload.get("params") or {})
    row = Note(
        owner_id=owner_id,
        id=note_id,
        entity_type=entity_type,
        entity_id=entity_id,
        note_type=payload.get("note_type", "common"),
        text=params.get("text"),
        params=params,
        responsible_user_id=payload.get("responsible_user_id"),
        created_by=payload.get("created_by"),
        created_at=stamp,
        updated_at=stamp,
    )
    db.session.merge(row)
    return row


def first_status(owner_id: int, pipeline_id: int) -> int | None:
    """The stage amoCRM puts a new deal in: the pipeline's first working (non-unsorted) one."""
    return db.session.scalar(
        select(PipelineStatus.id)
        .where(
            PipelineStatus.owner_id == owner_id,
            PipelineStatus.pipeline_id == pipeline_id,
            PipelineStatus.type == 0,
            PipelineStatus.id.not_in(CLOSED),
        )
        .order_by(PipelineStatus.sort, PipelineStatus.id)
        .limit(1)
    )


def insert_created_lead(
    owner_id: int, payload: dict[str, Any], answer: dict[str, Any], region: str = "RU"
) -> Lead:
    """The deal (and a new contact) a ``leads/complex`` answer names, built from what we sent."""
    stamp = now_ts()
    contact_id = answer.get("contact_id")
    embedded = payload.get("_embedded") or {}
    refs = embedded.get("contacts") or []
    if contact_id and refs and "id" not in refs[0]:
        ref = refs[0]
        phones, emails, _tg = contact_details(ref, region)
        db.session.merge(
            Contact(
                owner_id=owner_id,
                id=int(contact_id),
                name=ref.get("name")
                or " ".join(p for p in (ref.get("first_name"), ref.get("last_name")) if p),
                first_name=ref.get("first_name"),
                last_name=ref.get("last_name"),
                responsible_user_id=ref.get("responsible_user_id"),
                phones=phones,
                emails=emails,
                phone=next((p for p in phones if p.startswith("+")), None),
                email=emails[0] if emails else None,
                custom_fields_values=ref.get("custom_fields_values"),
                created_at=stamp,
                updated_at=stamp,
                raw={k: v for k, v in ref.items() if k != "custom_fields_values"},
            )
        )
    status_id = payload.get("status_id")
    pipeline_id = payload.get("pipeline_id")
    if status_id is None and pipeline_id is not None:
        status_id = first_status(owner_id, int(pipeline_id))
    contacts = [int(contact_id)] if contact_id else []
    row = Lead(
        owner_id=owner_id,
        id=int(answer["id"]),
        name=payload.get("name"),
        price=payload.get("price"),
        pipeline_id=pipeline_id,
        status_id=status_id,
        responsible_user_id=payload.get("responsible_user_id"),
        contact_ids=contacts,
        main_contact_id=contacts[0] if contacts else None,
        created_at=stamp,
        updated_at=stamp,
        raw={k: v for k, v in payload.items() if k not in ("_embedded", "request_id")},
    )
    db.session.merge(row)
    return row
