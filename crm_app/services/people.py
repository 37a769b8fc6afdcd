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
from sqlalchemy.orm import aliased

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


def find_contact(
    owner_id: int,
    *,
    telegram_id: str | None = None,
    phone: str | None = None,
    email: str | None = None,
    external_id: str | None = None,
    channel: str | None = None,
) -> Contact | None:
    """The mirrored contact named by one identity, or None (one indexed query, rarely two)."""
    if external_id is not None or telegram_id is not None:
        chan, ext = ("telegram", telegram_id) if telegram_id is not None else (channel, external_id)
        via_person = db.session.scalar(
            select(Contact)
            .join(
                InboundPerson,
                sa.and_(
                    InboundPerson.owner_id == Contact.owner_id,
                    InboundPerson.contact_id == Contact.id,
                ),
            )
            .where(
                InboundPerson.owner_id == owner_id,
                InboundPerson.channel == chan,
                InboundPerson.external_id == ext,
            )
        )
        if via_person is not None or telegram_id is None:
            return via_person
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


def find_contact_id(owner_id: int, **identity: str | None) -> int | None:
    """The id of the mirrored contact named by one identity, or None."""
    found = find_contact(owner_id, **identity)
    return int(found.id) if found is not None else None


def _first(owner_id: int, condition: Any) -> Contact | None:
    # `id + 0`: SQLite (no statistics) would otherwise walk the owner's primary key in id order,
    # every contact of the owner, to skip sorting the one or two rows the identity index finds.
    return db.session.scalar(
        select(Contact)
        .where(Contact.owner_id == owner_id, condition)
        .order_by(Contact.id + 0)
        .limit(1)
    )


_WEBHOOK = " webhook"  # not an entity name: marks the webhook row of freshness()'s query


def freshness(owner_id: int, row_synced_at: datetime | None = None) -> dict[str, Any]:
    """When the mirror last heard from amoCRM, per entity and by webhook."""
    # One round trip: the cursors, plus the latest processed webhook as one more row.
    last_hook = (
        select(WebhookDelivery.processed_at)
        .where(
            WebhookDelivery.owner_id == owner_id,
            WebhookDelivery.status == InboxStatus.PROCESSED,
        )
        .order_by(WebhookDelivery.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    rows = db.session.execute(
        select(SyncCursor.entity, SyncCursor.last_success_at)
        .where(SyncCursor.owner_id == owner_id)
        .union_all(select(sa.literal(_WEBHOOK, sa.String), last_hook))
    ).all()
    cursors = {entity: at for entity, at in rows}
    last_hook_at = cursors.pop(_WEBHOOK, None)
    return {
        "as_of": datetime.now(UTC).isoformat(),
        "contact_synced_at": _iso(row_synced_at),
        "contacts_synced_at": _iso(cursors.get("contacts")),
        "leads_synced_at": _iso(cursors.get("leads")),
        "tasks_synced_at": _iso(cursors.get("tasks")),
        "notes_synced_at": _iso(cursors.get("notes")),
        "last_webhook_at": _iso(last_hook_at),
    }


class _Names:
    """User, pipeline and stage names of one owner, read once per answer."""

    def __init__(self, owner_id: int, user_ids: set[int], pipeline_ids: set[int]) -> None:
        self.users: dict[int, str | None] = {}
        self.pipelines: dict[int, str | None] = {}
        self.stages: dict[tuple[int, int], str | None] = {}
        parts = []
        if user_ids:
            parts.append(
                select(sa.literal("u"), AmoUser.id, sa.literal(0), AmoUser.name).where(
                    AmoUser.owner_id == owner_id, AmoUser.id.in_(user_ids)
                )
            )
        if pipeline_ids:
            parts.append(
                select(sa.literal("p"), Pipeline.id, sa.literal(0), Pipeline.name).where(
                    Pipeline.owner_id == owner_id, Pipeline.id.in_(pipeline_ids)
                )
            )
            parts.append(
                select(
                    sa.literal("s"),
                    PipelineStatus.pipeline_id,
                    PipelineStatus.id,
                    PipelineStatus.name,
                ).where(
                    PipelineStatus.owner_id == owner_id,
                    PipelineStatus.pipeline_id.in_(pipeline_ids),
                )
            )
        if not parts:
            return
        # One round trip for all three kinds of names.
        for kind, first, second, name in db.session.execute(sa.union_all(*parts)):
            if kind == "u":
                self.users[int(first)] = name
            elif kind == "p":
                self.pipelines[int(first)] = name
            else:
                self.stages[(int(first), int(second))] = name

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
    return _view(owner_id, contact)


def _by_entity(
    model: Any,
    owner_id: int,
    contact_id: int,
    lead_ids: list[int],
    order: list[Any],
    limit: int,
    *extra: Any,
) -> list[Any]:
    """Rows of `model` on the contact or on its deals, the first `limit` of each part by `order`,
    in one round trip: a UNION ALL of two index range reads over (owner, entity_type, entity_id),
    which both databases plan the same way (an OR of the two lets SQLite walk every row of the
    owner)."""
    branches = [sa.and_(model.entity_type == "contacts", model.entity_id == contact_id)]
    if lead_ids:
        branches.append(sa.and_(model.entity_type == "leads", model.entity_id.in_(lead_ids)))
    parts = [
        select(model)
        .where(model.owner_id == owner_id, branch, *extra)
        .order_by(*order)
        .limit(limit)
        .subquery()
        for branch in branches
    ]
    if len(parts) == 1:
        return list(db.session.scalars(select(aliased(model, parts[0]))))
    union = sa.union_all(*(select(part) for part in parts)).subquery()
    return list(db.session.scalars(select(aliased(model, union))))


def _view(owner_id: int, contact: Contact) -> dict[str, Any]:
    contact_id = int(contact.id)
    linked = Lead.main_contact_id == contact_id
    if _postgres():
        linked = sa.or_(linked, _jsonb_has(Lead.contact_ids, contact_id))
    # `updated_at + 0`: an expression, so SQLite (no statistics) takes the contact's index
    # instead of walking the owner's (owner_id, updated_at) index to skip the sort.
    leads = list(
        db.session.scalars(
            select(Lead)
            .where(Lead.owner_id == owner_id, linked)
            .order_by((Lead.updated_at + 0).desc().nulls_last(), Lead.id.desc())
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
    tasks = _by_entity(
        Task,
        owner_id,
        contact_id,
        lead_ids,
        [Task.complete_till.asc().nulls_last(), Task.id],
        TASKS_LIMIT,
        Task.is_completed.is_(False),
    )
    tasks.sort(key=lambda t: (t.complete_till is None, t.complete_till or 0, t.id))
    tasks = tasks[:TASKS_LIMIT]
    notes = _by_entity(
        Note,
        owner_id,
        contact_id,
        lead_ids[:50],
        [Note.created_at.desc().nulls_last(), Note.id.desc()],
        NOTES_LIMIT,
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
    contact = find_contact(owner_id, **identity)
    if contact is None:
        return None
    return _view(owner_id, contact)
