"""Fingerprints of what an open card or task list shows: ETags for the pages' polls."""

from __future__ import annotations

from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.models import Contact, Lead, Note, OutboxWrite, Task


def _outbox(owner_id: int, entity_type: str, entity_id: int) -> str:
    # Rows are added, tried and settled (finished_at, status): each step changes one of these.
    row = db.session.execute(
        select(
            func.count(),
            func.max(OutboxWrite.id),
            func.sum(OutboxWrite.attempts),
            func.count(OutboxWrite.finished_at),
            func.count().filter(OutboxWrite.status == "pending"),
        ).where(
            OutboxWrite.owner_id == owner_id,
            OutboxWrite.entity_type == entity_type,
            OutboxWrite.entity_id == entity_id,
        )
    ).one()
    return ":".join(str(v or 0) for v in row)


def _children(owner_id: int, entity_type: str, entity_id: int) -> str:
    notes = db.session.execute(
        select(func.count(), func.max(Note.id)).where(
            Note.owner_id == owner_id, Note.entity_type == entity_type, Note.entity_id == entity_id
        )
    ).one()
    tasks = db.session.execute(
        select(func.count(), func.max(Task.updated_at)).where(
            Task.owner_id == owner_id, Task.entity_type == entity_type, Task.entity_id == entity_id
        )
    ).one()
    return f"{notes[0]}:{notes[1] or 0}-{tasks[0]}:{tasks[1] or 0}"


def entity_version(owner_id: int, entity_type: str, entity_id: int) -> str:
    """Changes whenever the card of the deal or contact would: the entity, its notes, tasks and
    edits waiting in the outbox."""
    model = Lead if entity_type == "leads" else Contact
    stamp = db.session.scalar(
        select(model.updated_at).where(model.owner_id == owner_id, model.id == entity_id)
    )
    return (
        f"{entity_type}-{entity_id}-{stamp or 0}-"
        f"{_children(owner_id, entity_type, entity_id)}-{_outbox(owner_id, entity_type, entity_id)}"
    )


def tasks_version(owner_id: int) -> str:
    count, newest = db.session.execute(
        select(func.count(), func.max(Task.updated_at)).where(Task.owner_id == owner_id)
    ).one()
    return f"tasks-{count}-{newest or 0}"
