"""The bot's view of a person, answered from the mirror (no amoCRM request).

A person is found by Telegram id, phone, e-mail, or a channel's external id; the answer holds the
contact, their open deals and the last closed one (pipeline and stage names, price, responsible
user), open tasks, the latest notes, and how fresh the mirror is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select

from crm_app.amocrm.fields import normalize_email, normalize_phone
from crm_app.extensions import db
from crm_app.models import (
    AmoUser,
    Contact,
    InboundPerson,
    InboxStatus,
    Lead,
    Note,
    Pipeline,
    PipelineStatus,
    SyncCursor,
    Task,
    WebhookDelivery,
)

CLOSED = (142, 143)
DEALS_LIMIT = 20
TASKS_LIMIT = 20
NOTES_LIMIT = 10


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _jsonb_has(column: Any, value: Any) -> Any:
    from sqlalchemy.dialects.postgresql import JSONB

    return sa.type_coerce(column, JSONB).contains([value])


def _postgres() -> bool:
    return db.engine.dialect.name == "postgresql"


def find_contact_id(
    owner_id: int,
    *,
    telegram_id: str | None = None,
    phone: str | None = None,
    email: str | None = None,
    external_id: str | None = None,
    channel: str | None = None,
) -> int | None:
    """The mirrored contact named by one identity, or None."""
    if external_id is not None or telegram_id is not None:
        chan, ext = ("telegram", telegram_id) if telegram_id is not None else (channel, external_id)
        via_person = db.session.scalar(
            select(InboundPerson.contact_id).where(
                InboundPerson.owner_id == owner_id,
                InboundPerson.channel == chan,
                InboundPerson.external_id == ext,
                InboundPerson.contact_id.is_not(None),
            )
        )
        if via_person is not None or telegram_id is None:
            return int(via_person) if via_person is not None else None
        return _first(owner_id, Contact.telegram_id == telegram_id)
    if phone is not None:
        value = normalize_phone(phone)
        if value is None:
            return None
        found = _first(owner_id, Contact.phone == value)
        if found is None and _postgres():  # a second or third number of the contact
            found = _first(owner_id, _jsonb_has(Contact.phones, value))
        return found
    if email is not None:
        value = normalize_email(email)
        if value is None:
            return None
        found = _first(owner_id, Contact.email == value)
        if found is None and _postgres():
            found = _first(owner_id, _jsonb_has(Contact.emails, value))
        return found
    return None


def _first(owner_id: int, condition: Any) -> int | None:
    found = db.session.scalar(
        select(Contact.id)
        .where(Contact.owner_id == owner_id, condition)
        .order_by(Contact.id)
        .limit(1)
    )
    return int(found) if found is not None else None


def freshness(owner_id: int, row_synced_at: datetime | None = None) -> dict[str, Any]:
    """When the mirror last heard from amoCRM, per entity and by webhook."""
    cursors = {
        c.entity: c.last_success_at
        for c in db.session.scalars(select(SyncCursor).where(SyncCursor.owner_id == owner_id))
    }
    last_hook = db.session.scalar(
        select(WebhookDelivery.processed_at)
        .where(
            WebhookDelivery.owner_id == owner_id,
            WebhookDelivery.status == InboxStatus.PROCESSED,
        )
        .order_by(WebhookDelivery.id.desc())
        .limit(1)
    )
    return {
        "as_of": datetime.now(UTC).isoformat(),
        "contact_synced_at": _iso(row_synced_at),
        "contacts_synced_at": _iso(cursors.get("contacts")),
        "leads_synced_at": _iso(cursors.get("leads")),
        "tasks_synced_at": _iso(cursors.get("tasks")),
        "notes_synced_at": _iso(cursors.get("notes")),
        "last_webhook_at": _iso(last_hook),
    }


class _Names:
    """User, pipeline and stage names of one owner, read once per answer."""

    def __init__(self, owner_id: int, user_ids: set[int], pipeline_ids: set[int]) -> None:
        self.users: dict[int, str | None] = {}
        if user_ids:
            self.users = {
                int(uid): name
                for uid, name in db.session.execute(
                    select(AmoUser.id, AmoUser.name).where(
                        AmoUser.owner_id == owner_id, AmoUser.id.in_(user_ids)
                    )
                )
            }
        self.pipelines: dict[int, str] = {}
        self.stages: dict[tuple[int, int], str] = {}
        if pipeline_ids:
            self.pipelines = {
                int(pid): name
                for pid, name in db.session.execute(
                    select(Pipeline.id, Pipeline.name).where(
                        Pipeline.owner_id == owner_id, Pipeline.id.in_(pipeline_ids)
                    )
                )
            }
            for pid, sid, name in db.session.execute(
                select(PipelineStatus.pipeline_id, PipelineStatus.id, PipelineStatus.name).where(
                    PipelineStatus.owner_id == owner_id,
                    PipelineStatus.pipeline_id.in_(pipeline_ids),
                )
            ):
                self.stages[(int(pid), int(sid))] = name

    def user(self, user_id: int | None) -> dict[str, Any] | None:
        if not user_id:
            return None
        return {"id": int(user_id), "name": self.users.get(int(user_id))}


def _deal(lead: Lead, names: _Names) -> dict[str, Any]:
    pid, sid = lead.pipeline_id, lead.status_id
    return {
        "id": int(lead.id),
        "name": lead.name,
        "price": lead.price,
        "pipeline": {"id": pid, "name": names.pipelines.get(int(pid)) if pid else None},
        "status": {
            "id": sid,
            "name": names.stages.get((int(pid), int(sid))) if pid and sid else None,
        },
        "is_closed": sid in CLOSED,
        "responsible_user": names.user(lead.responsible_user_id),
        "created_at": lead.created_at,
        "updated_at": lead.updated_at,
        "closed_at": lead.closed_at,
    }


def person_view(owner_id: int, contact_id: int) -> dict[str, Any] | None:
    """Everything the bot may know about one contact of this owner, or None."""
    contact = db.session.get(Contact, (owner_id, contact_id))
    if contact is None:
        return None
    linked = Lead.main_contact_id == contact_id
    if _postgres():
        linked = sa.or_(linked, _jsonb_has(Lead.contact_ids, contact_id))
    leads = list(
        db.session.scalars(
            select(Lead)
            .where(Lead.owner_id == owner_id, linked)
            .order_by(Lead.updated_at.desc().nulls_last(), Lead.id.desc())
            .limit(200)
        )
    )
    open_leads = [lead for lead in leads if lead.status_id not in CLOSED][:DEALS_LIMIT]
    closed = sorted(
        (lead for lead in leads if lead.status_id in CLOSED),
        key=lambda lead: (lead.closed_at or 0, lead.id),
        reverse=True,
    )
    lead_ids = [int(lead.id) for lead in leads]
    on_entity = sa.and_(Task.entity_type == "contacts", Task.entity_id == contact_id)
    if lead_ids:
        on_entity = sa.or_(
            on_entity, sa.and_(Task.entity_type == "leads", Task.entity_id.in_(lead_ids))
        )
    tasks = list(
        db.session.scalars(
            select(Task)
            .where(Task.owner_id == owner_id, Task.is_completed.is_(False), on_entity)
            .order_by(Task.complete_till.asc().nulls_last(), Task.id)
            .limit(TASKS_LIMIT)
        )
    )
    # Two index range reads (crm_notes' (owner, entity_type, entity_id, created_at)), merged.
    notes = list(
        db.session.scalars(
            select(Note)
            .where(
                Note.owner_id == owner_id,
                Note.entity_type == "contacts",
                Note.entity_id == contact_id,
            )
            .order_by(Note.created_at.desc().nulls_last(), Note.id.desc())
            .limit(NOTES_LIMIT)
        )
    )
    if lead_ids:
        notes += db.session.scalars(
            select(Note)
            .where(
                Note.owner_id == owner_id,
                Note.entity_type == "leads",
                Note.entity_id.in_(lead_ids[:50]),
            )
            .order_by(Note.created_at.desc().nulls_last(), Note.id.desc())
            .limit(NOTES_LIMIT)
        )
    notes.sort(key=lambda n: (n.created_at or 0, n.id), reverse=True)
    notes = notes[:NOTES_LIMIT]
    shown = [*open_leads, *closed[:1]]
    names = _Names(
        owner_id,
        {
            u
            for u in [
                contact.responsible_user_id,
                *(x.responsible_user_id for x in shown),
                *(t.responsible_user_id for t in tasks),
            ]
            if u
        },
        {int(x.pipeline_id) for x in shown if x.pipeline_id},
    )
    return {
        "contact": {
            "id": int(contact.id),
            "name": contact.name,
            "first_name": contact.first_name,
            "last_name": contact.last_name,
            "phones": list(contact.phones or ([contact.phone] if contact.phone else [])),
            "emails": list(contact.emails or ([contact.email] if contact.email else [])),
            "telegram_id": contact.telegram_id,
            "responsible_user": names.user(contact.responsible_user_id),
            "updated_at": contact.updated_at,
        },
        "open_deals": [_deal(lead, names) for lead in open_leads],
        "last_closed_deal": _deal(closed[0], names) if closed else None,
        "open_tasks": [
            {
                "id": int(t.id),
                "text": t.text,
                "task_type_id": t.task_type_id,
                "complete_till": t.complete_till,
                "entity_type": t.entity_type,
                "entity_id": t.entity_id,
                "responsible_user": names.user(t.responsible_user_id),
            }
            for t in tasks
        ],
        "last_notes": [
            {
                "id": int(n.id),
                "entity_type": n.entity_type,
                "entity_id": int(n.entity_id),
                "note_type": n.note_type,
                "text": n.text,
                "created_at": n.created_at,
            }
            for n in notes
        ],
        "freshness": freshness(owner_id, contact.synced_at),
    }


def lookup(owner_id: int, **identity: str | None) -> dict[str, Any] | None:
    """Find the person by one identity and build their view; None when the mirror has nobody."""
    contact_id = find_contact_id(owner_id, **identity)
    if contact_id is None:
        return None
    return person_view(owner_id, contact_id)
