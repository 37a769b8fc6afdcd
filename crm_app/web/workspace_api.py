"""Workspace writes in the JSON API: deals, contacts, tasks and notes, with the version check.

Answers: 200 (201 for a create) with the entity as now mirrored; 202 when the write waits in
the outbox; 409 with both versions when the entity changed after the version seen; 422 with
the field amoCRM named when it refused a value.
"""

from __future__ import annotations

import logging
from typing import Any

from werkzeug.exceptions import HTTPException, NotFound

from crm_app.schemas.common import AmoId, OwnerQuery, Problem
from crm_app.schemas.entities import ContactOut, LeadOut, TaskOut
from crm_app.schemas.workspace import (
    ConflictProblem,
    ContactPatch,
    LeadCreate,
    LeadPatch,
    NoteCreate,
    NoteOut,
    PendingOut,
    TaskCreate,
    TaskPatch,
)
from crm_app.services import workspace
from crm_app.services.workspace import Applied, Conflict, Invalid, Outcome, Pending
from crm_app.web.api import bp, operation
from crm_app.web.context import request_context

logger = logging.getLogger(__name__)

TAGS = ("workspace",)
_ = AmoId  # ids in paths are checked by the URL converters below


class _Problem(HTTPException):
    """An HTTP error whose problem document carries extra members."""

    def __init__(self, code: int, detail: str, extra: dict[str, Any]) -> None:
        super().__init__(description=detail)
        self.code = code
        self.extra = extra


def _user_id() -> int | None:
    return request_context().actor.id


def _answer(outcome: Outcome, created: bool = False) -> tuple[dict[str, Any], int]:
    if isinstance(outcome, Applied):
        return outcome.entity, 201 if created else 200
    if isinstance(outcome, Pending):
        body = {
            "status": "pending",
            "outbox_id": outcome.outbox_id,
            "entity_type": outcome.entity_type,
            "entity_id": outcome.entity_id,
            "pending": outcome.payload,
            "reason": outcome.reason,
            "entity": outcome.entity,
        }
        return body, 202
    if isinstance(outcome, Conflict):
        raise _Problem(
            409,
            "The entity changed in amoCRM after the version you saw; nothing was sent. "
            "Compare the versions, then send again with the current updated_at.",
            {"theirs": outcome.theirs, "yours": outcome.yours},
        )
    if isinstance(outcome, Invalid):
        errors = [
            {"in": "body", "loc": [] if f == "_" else [f], "msg": msg, "type": "amocrm"}
            for f, msg in outcome.fields.items()
        ]
        raise _Problem(422, outcome.detail, {"errors": errors})
    raise NotFound(f"{outcome.entity_type} {outcome.entity_id} is not in the mirror")


ANSWERS: dict[int, type] = {202: PendingOut, 409: ConflictProblem, 422: Problem}


def _changes(json: Any) -> dict[str, Any]:
    return json.model_dump(exclude_unset=True, exclude={"updated_at"})


@bp.patch("/admin/crm/leads/<int(min=1, max=9223372036854775807):lead_id>")
@operation(LeadOut, also=ANSWERS, tags=TAGS, write=True, body=True, amo=True)
def update_lead(lead_id: int, query: OwnerQuery, json: LeadPatch) -> tuple[dict[str, Any], int]:
    """Change a deal (name, price, stage, pipeline, responsible user, loss reason) in amoCRM.

    `updated_at` is the version you saw; a newer one in the mirror gives **409** with both.
    """
    outcome = workspace.update_lead(
        request_context().owner_id, lead_id, _changes(json), json.updated_at, user_id=_user_id()
    )
    return _answer(outcome)


@bp.post("/admin/crm/leads")
@operation(LeadOut, status=201, also=ANSWERS, tags=TAGS, write=True, body=True, amo=True)
def create_lead(query: OwnerQuery, json: LeadCreate) -> tuple[dict[str, Any], int]:
    """Create a deal with an existing contact (`contact_id`) or a new one (`contact`)."""
    outcome = workspace.create_lead(
        request_context().owner_id,
        **json.model_dump(exclude={"contact"}),
        contact=json.contact.model_dump(exclude_none=True) if json.contact else None,
        user_id=_user_id(),
    )
    return _answer(outcome, created=True)


@bp.post("/admin/crm/leads/<int(min=1, max=9223372036854775807):lead_id>/notes")
@operation(NoteOut, status=201, also=ANSWERS, tags=TAGS, write=True, body=True, amo=True)
def add_lead_note(lead_id: int, query: OwnerQuery, json: NoteCreate) -> tuple[dict[str, Any], int]:
    """Add a text note to a deal."""
    outcome = workspace.add_note(
        request_context().owner_id, "leads", lead_id, json.text, user_id=_user_id()
    )
    return _answer(outcome, created=True)


@bp.patch("/admin/crm/contacts/<int(min=1, max=9223372036854775807):contact_id>")
@operation(ContactOut, also=ANSWERS, tags=TAGS, write=True, body=True, amo=True)
def update_contact(
    contact_id: int, query: OwnerQuery, json: ContactPatch
) -> tuple[dict[str, Any], int]:
    """Change a contact's names, responsible user, phones or e-mails (with the version seen)."""
    outcome = workspace.update_contact(
        request_context().owner_id, contact_id, _changes(json), json.updated_at, user_id=_user_id()
    )
    return _answer(outcome)


@bp.post("/admin/crm/contacts/<int(min=1, max=9223372036854775807):contact_id>/notes")
@operation(NoteOut, status=201, also=ANSWERS, tags=TAGS, write=True, body=True, amo=True)
def add_contact_note(
    contact_id: int, query: OwnerQuery, json: NoteCreate
) -> tuple[dict[str, Any], int]:
    """Add a text note to a contact."""
    outcome = workspace.add_note(
        request_context().owner_id, "contacts", contact_id, json.text, user_id=_user_id()
    )
    return _answer(outcome, created=True)


@bp.post("/admin/crm/tasks")
@operation(TaskOut, status=201, also=ANSWERS, tags=TAGS, write=True, body=True, amo=True)
def create_task(query: OwnerQuery, json: TaskCreate) -> tuple[dict[str, Any], int]:
    """Create a task, on a deal or contact when `entity_type` and `entity_id` are given."""
    # The body's fields are the service's keyword arguments, one for one.
    outcome = workspace.create_task(
        request_context().owner_id, **json.model_dump(), user_id=_user_id()
    )
    return _answer(outcome, created=True)


@bp.patch("/admin/crm/tasks/<int(min=1, max=9223372036854775807):task_id>")
@operation(TaskOut, also=ANSWERS, tags=TAGS, write=True, body=True, amo=True)
def update_task(task_id: int, query: OwnerQuery, json: TaskPatch) -> tuple[dict[str, Any], int]:
    """Complete a task (`is_completed`, `result`) or change its text, due time, responsible."""
    outcome = workspace.update_task(
        request_context().owner_id, task_id, _changes(json), json.updated_at, user_id=_user_id()
    )
    return _answer(outcome)
