"""Read models of the cards and lists: a deal, a contact, task lists, pending and conflicting
edits; plus what a person can do about a conflict (send theirs-plus-mine, or drop mine)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.models import (
    AmoUser,
    Contact,
    Lead,
    LossReason,
    Note,
    OutboxStatus,
    OutboxWrite,
    Pipeline,
    PipelineStatus,
    Task,
    TaskType,
)
from crm_app.services.workspace.board import DealCard, PipelineChoice, _cards, pipelines
from crm_app.services.workspace.results import NotFound, Outcome


@dataclass(frozen=True)
class ContactBrief:
    id: int
    name: str
    phones: list[str]
    emails: list[str]
    is_main: bool
    updated_at: int | None


@dataclass(frozen=True)
class NoteItem:
    id: int
    note_type: str | None
    text: str | None
    params: dict[str, Any]
    created_by: int | None
    author_name: str | None
    created_at: int | None


@dataclass(frozen=True)
class NotePage:
    """A page of a timeline, newest first; ``older`` is the ``before`` of the next page."""

    items: list[NoteItem]
    older: int | None


@dataclass(frozen=True)
class TaskItem:
    id: int
    text: str | None
    task_type_id: int | None
    task_type_name: str | None
    complete_till: int | None
    is_completed: bool
    result_text: str | None
    responsible_user_id: int | None
    responsible_name: str | None
    entity_type: str | None
    entity_id: int | None
    overdue: bool
    updated_at: int | None  # the version an edit or "complete" sends back


@dataclass(frozen=True)
class OutboxItem:
    """An edit not (yet) in amoCRM: pending, or settled as a conflict or a refusal."""

    id: int
    entity_type: str
    entity_id: int | None
    op: str
    payload: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None
    fields: dict[str, str]  # a refusal's field errors
    theirs: dict[str, Any] | None  # a conflict's current version in amoCRM
    created_at: datetime


@dataclass(frozen=True)
class DealView:
    deal: DealCard
    pipeline_name: str | None
    status_name: str | None
    loss_reason_id: int | None
    loss_reason_name: str | None
    contacts: list[ContactBrief]
    notes: list[NoteItem]
    tasks: list[TaskItem]
    pending: list[OutboxItem]
    conflicts: list[OutboxItem]
    failed: list[OutboxItem]
    older_notes: int | None = None  # the ``before`` of the timeline's next page, if any


@dataclass(frozen=True)
class ContactView:
    id: int
    name: str
    first_name: str | None
    last_name: str | None
    phones: list[str]
    emails: list[str]
    responsible_user_id: int | None
    responsible_name: str | None
    updated_at: int | None
    deals: list[DealCard]
    notes: list[NoteItem]
    tasks: list[TaskItem]
    pending: list[OutboxItem]
    conflicts: list[OutboxItem]
    failed: list[OutboxItem]
    older_notes: int | None = None


@dataclass(frozen=True)
class TaskPage:
    rows: list[TaskItem]
    total: int
    overdue: int
    page: int
    per_page: int


@dataclass(frozen=True)
class Choice:
    id: int
    name: str


@dataclass(frozen=True)
class Choices:
    """Everything an edit form offers: pipelines with stages, users, loss reasons, task types."""

    pipelines: list[PipelineChoice]
    users: list[Choice]
    loss_reasons: list[Choice]
    task_types: list[Choice]


def _users(owner_id: int) -> dict[int, str | None]:
    return dict(
        db.session.execute(
            select(AmoUser.id, AmoUser.name).where(AmoUser.owner_id == owner_id)
        ).all()
    )


def _task_types(owner_id: int) -> dict[int, str]:
    return dict(
        db.session.execute(
            select(TaskType.id, TaskType.name).where(TaskType.owner_id == owner_id)
        ).all()
    )


def exists(owner_id: int, entity_type: str, entity_id: int) -> bool:
    """Whether the owner's mirror has this deal (``leads``) or contact (``contacts``)."""
    model = Lead if entity_type == "leads" else Contact
    return db.session.get(model, (owner_id, entity_id)) is not None


NOTES_PAGE = 100
MAX_NOTES = 1000  # what one refresh renders at most, however far back a person has read


def note_page(
    owner_id: int,
    entity_type: str,
    entity_id: int,
    *,
    before: int | None = None,
    down_to: int | None = None,
    limit: int = NOTES_PAGE,
) -> NotePage:
    """A page of an entity's notes, newest first, keyset-paged by id (amoCRM numbers notes in
    the order they are made): ``before`` = the previous page's ``older``.

    ``down_to`` is a refresh's: the notes down to that id (the oldest one on screen), at least
    a page and at most MAX_NOTES, so older pages a person opened stay."""
    where = [
        Note.owner_id == owner_id,
        Note.entity_type == entity_type,
        Note.entity_id == entity_id,
    ]
    if before is not None:
        where.append(Note.id < before)
    if down_to is not None:
        on_screen = db.session.scalar(
            select(func.count()).select_from(Note).where(*where, Note.id >= down_to)
        )
        limit = min(max(limit, int(on_screen or 0)), MAX_NOTES)
    rows = list(
        db.session.scalars(select(Note).where(*where).order_by(Note.id.desc()).limit(limit + 1))
    )
    older = rows[limit - 1].id if len(rows) > limit else None
    users = _users(owner_id)
    items = [
        NoteItem(
            n.id,
            n.note_type,
            n.text,
            dict(n.params or {}),
            n.created_by,
            users.get(n.created_by or 0),
            n.created_at,
        )
        for n in rows[:limit]
    ]
    return NotePage(items, older)


def _task_items(owner_id: int, rows: list[Task]) -> list[TaskItem]:
    users = _users(owner_id)
    types = _task_types(owner_id)
    now = int(time.time())
    return [
        TaskItem(
            id=t.id,
            text=t.text,
            task_type_id=t.task_type_id,
            task_type_name=types.get(t.task_type_id or 0),
            complete_till=t.complete_till,
            is_completed=bool(t.is_completed),
            result_text=t.result_text,
            responsible_user_id=t.responsible_user_id,
            responsible_name=users.get(t.responsible_user_id or 0),
            entity_type=t.entity_type,
            entity_id=t.entity_id,
            overdue=not t.is_completed and t.complete_till is not None and t.complete_till < now,
            updated_at=t.updated_at,
        )
        for t in rows
    ]


def _entity_tasks(owner_id: int, entity_type: str, entity_id: int) -> list[TaskItem]:
    rows = list(
        db.session.scalars(
            select(Task)
            .where(
                Task.owner_id == owner_id,
                Task.entity_type == entity_type,
                Task.entity_id == entity_id,
            )
            .order_by(Task.is_completed, Task.complete_till.asc().nulls_last(), Task.id)
        )
    )
    return _task_items(owner_id, rows)


def outbox_items(owner_id: int, entity_type: str, entity_id: int) -> list[OutboxItem]:
    """Every edit of the entity that is pending, or ended as a conflict or a refusal."""
    rows = db.session.scalars(
        select(OutboxWrite)
        .where(
            OutboxWrite.owner_id == owner_id,
            OutboxWrite.entity_type == entity_type,
            OutboxWrite.entity_id == entity_id,
            OutboxWrite.status.in_(
                (OutboxStatus.PENDING, OutboxStatus.CONFLICT, OutboxStatus.FAILED)
            ),
        )
        .order_by(OutboxWrite.id)
    )
    items = []
    for r in rows:
        result = r.result or {}
        items.append(
            OutboxItem(
                id=r.id,
                entity_type=r.entity_type,
                entity_id=r.entity_id,
                op=r.op,
                payload=dict(r.payload or {}),
                status=r.status,
                attempts=r.attempts,
                last_error=r.last_error,
                fields=dict(result.get("fields") or {}),
                theirs=result.get("theirs"),
                created_at=r.created_at,
            )
        )
    return items


def _split(items: list[OutboxItem]) -> tuple[list[OutboxItem], list[OutboxItem], list[OutboxItem]]:
    return (
        [i for i in items if i.status == OutboxStatus.PENDING],
        [i for i in items if i.status == OutboxStatus.CONFLICT],
        [i for i in items if i.status == OutboxStatus.FAILED],
    )


def _contacts(owner_id: int, lead: Lead) -> list[ContactBrief]:
    ids = [int(i) for i in (lead.contact_ids or [])]
    if lead.main_contact_id and lead.main_contact_id not in ids:
        ids.insert(0, lead.main_contact_id)
    if not ids:
        return []
    rows = {
        c.id: c
        for c in db.session.scalars(
            select(Contact).where(Contact.owner_id == owner_id, Contact.id.in_(ids))
        )
    }
    return [
        ContactBrief(
            c.id,
            c.name or "",
            list(c.phones or []),
            list(c.emails or []),
            c.id == lead.main_contact_id,
            c.updated_at,
        )
        for c in (rows.get(i) for i in ids)
        if c is not None
    ]


def deal_card(
    owner_id: int,
    lead_id: int,
    *,
    notes_limit: int = NOTES_PAGE,
    notes_before: int | None = None,
    notes_down_to: int | None = None,
) -> DealView | None:
    """Everything the deal card shows; None when the deal is not in the owner's mirror.
    The timeline is a ``note_page`` (``notes_before`` / ``notes_down_to`` passed on)."""
    lead = db.session.get(Lead, (owner_id, lead_id))
    if lead is None:
        return None
    card = _cards(owner_id, [lead])[0]
    pipeline = db.session.get(Pipeline, (owner_id, lead.pipeline_id)) if lead.pipeline_id else None
    status = (
        db.session.get(PipelineStatus, (owner_id, lead.pipeline_id, lead.status_id))
        if lead.pipeline_id and lead.status_id
        else None
    )
    reason_id = (lead.raw or {}).get("loss_reason_id")
    reason = (
        db.session.get(LossReason, (owner_id, reason_id)) if isinstance(reason_id, int) else None
    )
    pending, conflicts, failed = _split(outbox_items(owner_id, "leads", lead_id))
    notes = note_page(
        owner_id,
        "leads",
        lead_id,
        before=notes_before,
        down_to=notes_down_to,
        limit=notes_limit,
    )
    return DealView(
        deal=card,
        pipeline_name=pipeline.name if pipeline else None,
        status_name=status.name if status else None,
        loss_reason_id=reason_id if isinstance(reason_id, int) else None,
        loss_reason_name=reason.name if reason else None,
        contacts=_contacts(owner_id, lead),
        notes=notes.items,
        tasks=_entity_tasks(owner_id, "leads", lead_id),
        pending=pending,
        conflicts=conflicts,
        failed=failed,
        older_notes=notes.older,
    )


def contact_card(
    owner_id: int,
    contact_id: int,
    *,
    notes_limit: int = NOTES_PAGE,
    notes_before: int | None = None,
    notes_down_to: int | None = None,
) -> ContactView | None:
    """The contact card: fields, its deals, notes, tasks and edits not yet in amoCRM."""
    contact = db.session.get(Contact, (owner_id, contact_id))
    if contact is None:
        return None
    deals = list(
        db.session.scalars(
            select(Lead)
            .where(Lead.owner_id == owner_id, Lead.main_contact_id == contact_id)
            .order_by(Lead.updated_at.desc().nulls_last(), Lead.id.desc())
            .limit(100)
        )
    )
    pending, conflicts, failed = _split(outbox_items(owner_id, "contacts", contact_id))
    users = _users(owner_id)
    notes = note_page(
        owner_id,
        "contacts",
        contact_id,
        before=notes_before,
        down_to=notes_down_to,
        limit=notes_limit,
    )
    return ContactView(
        id=contact.id,
        name=contact.name or "",
        first_name=contact.first_name,
        last_name=contact.last_name,
        phones=list(contact.phones or []),
        emails=list(contact.emails or []),
        responsible_user_id=contact.responsible_user_id,
        responsible_name=users.get(contact.responsible_user_id or 0),
        updated_at=contact.updated_at,
        deals=_cards(owner_id, deals),
        notes=notes.items,
        tasks=_entity_tasks(owner_id, "contacts", contact_id),
        pending=pending,
        conflicts=conflicts,
        failed=failed,
        older_notes=notes.older,
    )


def task_list(
    owner_id: int,
    *,
    responsible_user_id: int | None = None,
    include_completed: bool = False,
    page: int = 1,
    per_page: int = 50,
) -> TaskPage:
    """Tasks, overdue first then by due time (open ones only unless ``include_completed``);
    ``responsible_user_id`` gives "my tasks"."""
    stmt = select(Task).where(Task.owner_id == owner_id)
    if responsible_user_id is not None:
        stmt = stmt.where(Task.responsible_user_id == responsible_user_id)
    if not include_completed:
        stmt = stmt.where(Task.is_completed.is_(False))
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    now = int(time.time())
    overdue = (
        db.session.scalar(
            select(func.count()).select_from(
                stmt.where(Task.is_completed.is_(False), Task.complete_till < now).subquery()
            )
        )
        or 0
    )
    per_page = max(1, min(per_page, 200))
    page = max(1, page)
    # Overdue ones have the earliest due times, so due time ascending lists them first.
    rows = list(
        db.session.scalars(
            stmt.order_by(Task.is_completed, Task.complete_till.asc().nulls_last(), Task.id)
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
    )
    return TaskPage(_task_items(owner_id, rows), int(total), int(overdue), page, per_page)


def choices(owner_id: int) -> Choices:
    users = db.session.execute(
        select(AmoUser.id, AmoUser.name)
        .where(AmoUser.owner_id == owner_id, AmoUser.is_active.is_(True))
        .order_by(AmoUser.name)
    ).all()
    reasons = db.session.execute(
        select(LossReason.id, LossReason.name)
        .where(LossReason.owner_id == owner_id)
        .order_by(LossReason.sort, LossReason.id)
    ).all()
    types = db.session.execute(
        select(TaskType.id, TaskType.name)
        .where(TaskType.owner_id == owner_id)
        .order_by(TaskType.id)
    ).all()
    return Choices(
        pipelines(owner_id),
        [Choice(i, n or str(i)) for i, n in users],
        [Choice(i, n) for i, n in reasons],
        [Choice(i, n) for i, n in types],
    )


# -- what to do with a conflict ------------------------------------------------------------------


def dismiss(owner_id: int, outbox_id: int) -> bool:
    """Drop my side of a conflict (or a refused edit): theirs stays. False if not found."""
    row = db.session.get(OutboxWrite, outbox_id)
    if (
        row is None
        or row.owner_id != owner_id
        or row.status not in (OutboxStatus.CONFLICT, OutboxStatus.FAILED)
    ):
        return False
    row.status = OutboxStatus.DISMISSED
    db.session.commit()
    return True


def reapply(owner_id: int, outbox_id: int, *, user_id: int | None = None) -> Outcome:
    """Send my edit on top of their version (the mirror's current one): a fresh write with the
    usual rules; the conflict row is closed whatever the answer."""
    from crm_app.services.workspace import writes

    row = db.session.get(OutboxWrite, outbox_id)
    if row is None or row.owner_id != owner_id or row.status != OutboxStatus.CONFLICT:
        return NotFound("outbox", outbox_id)
    entity_type, entity_id, payload = row.entity_type, int(row.entity_id or 0), dict(row.payload)
    row.status = OutboxStatus.DISMISSED
    db.session.commit()
    model = writes.MODELS[entity_type]
    current = db.session.get(model, (owner_id, entity_id))
    version = current.updated_at if current is not None else None
    if entity_type == "leads":
        return writes.update_lead(owner_id, entity_id, payload, version, user_id=user_id)
    if entity_type == "tasks":
        changes = dict(payload)
        if isinstance(changes.get("result"), dict):
            changes["result"] = changes["result"].get("text")
        return writes.update_task(owner_id, entity_id, changes, version, user_id=user_id)
    return writes.contact_payload_update(owner_id, entity_id, payload, version, user_id=user_id)


def pending_count(owner_id: int) -> int:
    return (
        db.session.scalar(
            select(func.count())
            .select_from(OutboxWrite)
            .where(OutboxWrite.owner_id == owner_id, OutboxWrite.status == OutboxStatus.PENDING)
        )
        or 0
    )
