"""Workspace writes: edit and create deals, contacts, tasks and notes (JSON API bodies)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from crm_app.schemas.common import AmoId, PlainStr, Strict

Name = Annotated[PlainStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Text = Annotated[PlainStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=20000)]
Phone = Annotated[PlainStr, StringConstraints(strip_whitespace=True, min_length=3, max_length=64)]
Email = Annotated[PlainStr, StringConstraints(strip_whitespace=True, min_length=3, max_length=255)]
Price = Annotated[int, Field(ge=0, le=2**53)]
Version = Annotated[
    int,
    Field(
        ge=0,
        le=2**40,
        description="The version seen: the entity's `updated_at` (unix seconds) as listed.",
    ),
]
UnixTime = Annotated[int, Field(ge=0, le=2**40, description="Unix seconds.")]


class LeadPatch(Strict):
    """PATCH /admin/crm/leads/{id}: any of the fields, plus the version seen."""

    name: Name | None = None
    price: Price | None = None
    status_id: AmoId | None = None
    pipeline_id: AmoId | None = None
    responsible_user_id: AmoId | None = None
    loss_reason_id: AmoId | None = None
    updated_at: Version


class NewContact(Strict):
    name: Name | None = None
    phone: Phone | None = None
    email: Email | None = None


class LeadCreate(Strict):
    """POST /admin/crm/leads: a deal with an existing contact (`contact_id`) or a new one."""

    name: Name
    price: Price | None = None
    pipeline_id: AmoId | None = None
    status_id: AmoId | None = None
    responsible_user_id: AmoId | None = None
    contact_id: AmoId | None = None
    contact: NewContact | None = None


class NoteCreate(Strict):
    """POST /admin/crm/leads/{id}/notes and /admin/crm/contacts/{id}/notes: a text note."""

    text: Text


class TaskCreate(Strict):
    """POST /admin/crm/tasks: amoCRM requires a text and a due time."""

    text: Text
    complete_till: UnixTime
    entity_type: Literal["leads", "contacts"] | None = None
    entity_id: AmoId | None = None
    task_type_id: AmoId | None = None
    responsible_user_id: AmoId | None = None


class TaskPatch(Strict):
    """PATCH /admin/crm/tasks/{id}: complete it (`is_completed`, `result`) or edit it."""

    is_completed: bool | None = None
    result: Text | None = None
    text: Text | None = None
    complete_till: UnixTime | None = None
    responsible_user_id: AmoId | None = None
    updated_at: Version | None = None


class ContactPatch(Strict):
    """PATCH /admin/crm/contacts/{id}: names, responsible user, phones, e-mails (each list
    replaces the field's values, as amoCRM does)."""

    name: Name | None = None
    first_name: Name | None = None
    last_name: Name | None = None
    responsible_user_id: AmoId | None = None
    phones: list[Phone] | None = Field(default=None, max_length=20)
    emails: list[Email] | None = Field(default=None, max_length=20)
    updated_at: Version


class PendingOut(BaseModel):
    """202: amoCRM did not take the write yet; it waits in the outbox (sent in order)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["pending"]
    outbox_id: int
    entity_type: str
    entity_id: int | None = None
    pending: dict[str, Any] = Field(description="What will be sent to amoCRM.")
    reason: str = ""
    entity: dict[str, Any] | None = Field(default=None, description="The entity as mirrored now.")


class NoteOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    entity_type: str
    entity_id: int
    note_type: str | None = None
    text: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    created_at: int | None = None
    updated_at: int | None = None


class ConflictProblem(BaseModel):
    """409: the entity changed in amoCRM after the version seen; nothing was sent."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    theirs: dict[str, Any] | None = None
    yours: dict[str, Any] | None = None
