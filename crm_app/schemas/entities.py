"""amoCRM-shaped views of the local mirror: contacts, leads, tasks, pipelines with statuses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from crm_app.models import Contact, Lead, Pipeline, PipelineStatus, Task


class _Out(BaseModel):
    """Response models: `_embedded` is spelled as amoCRM spells it; unknown keys pass."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)


class CustomFieldValue(_Out):
    value: Any = None
    enum_id: int | str | None = None
    enum_code: str | None = None


class CustomField(_Out):
    """One entry of `custom_fields_values`; PHONE and EMAIL carry `field_code`."""

    # Lenient on purpose: webhooks deliver ids as strings and the mirror keeps what came.
    field_id: int | str | None = None
    field_name: str | None = None
    field_code: str | None = None
    field_type: str | None = None
    values: list[CustomFieldValue] | None = None


class TagRef(_Out):
    id: int | None = None
    name: str | None = None


class ContactEmbedded(_Out):
    tags: list[TagRef] = Field(default_factory=list)
    companies: list[dict[str, Any]] = Field(default_factory=list)


class ContactOut(_Out):
    id: int
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    responsible_user_id: int | None = None
    created_at: int | None = Field(default=None, description="Unix seconds, as amoCRM sends.")
    updated_at: int | None = None
    custom_fields_values: list[CustomField] | None = None
    embedded: ContactEmbedded = Field(alias="_embedded")


class LeadContactRef(_Out):
    id: int
    is_main: bool = False


class LeadEmbedded(_Out):
    contacts: list[LeadContactRef] = Field(default_factory=list)
    tags: list[TagRef] = Field(default_factory=list)


class LeadOut(_Out):
    id: int
    name: str | None = None
    price: int | None = None
    status_id: int | None = None
    pipeline_id: int | None = None
    responsible_user_id: int | None = None
    closed_at: int | None = None
    created_at: int | None = None
    updated_at: int | None = None
    custom_fields_values: list[CustomField] | None = None
    embedded: LeadEmbedded = Field(alias="_embedded")


class TaskResult(_Out):
    text: str | None = None


class TaskOut(_Out):
    id: int
    text: str | None = None
    task_type_id: int | None = None
    entity_type: str | None = None
    entity_id: int | None = None
    responsible_user_id: int | None = None
    is_completed: bool = False
    complete_till: int | None = None
    result: TaskResult = Field(default_factory=TaskResult)
    created_at: int | None = None
    updated_at: int | None = None


class PipelineStatusOut(_Out):
    id: int
    pipeline_id: int
    name: str
    sort: int = 0
    color: str | None = None
    type: int = Field(default=0, description="0 a regular stage, 1 the unsorted stage.")


class PipelineStatuses(_Out):
    statuses: list[PipelineStatusOut] = Field(default_factory=list)


class PipelineOut(_Out):
    id: int
    name: str
    sort: int = 0
    is_main: bool = False
    is_archive: bool = False
    embedded: PipelineStatuses = Field(alias="_embedded")


class _Page(_Out):
    total: int = Field(description="Matching records in the local mirror.")
    limit: int
    offset: int


class ContactsEmbedded(_Out):
    contacts: list[ContactOut]


class ContactsPage(_Page):
    embedded: ContactsEmbedded = Field(alias="_embedded")


class LeadsEmbedded(_Out):
    leads: list[LeadOut]


class LeadsPage(_Page):
    embedded: LeadsEmbedded = Field(alias="_embedded")


class TasksEmbedded(_Out):
    tasks: list[TaskOut]


class TasksPage(_Page):
    embedded: TasksEmbedded = Field(alias="_embedded")


class PipelinesEmbedded(_Out):
    pipelines: list[PipelineOut]


class PipelinesPage(_Out):
    total: int
    embedded: PipelinesEmbedded = Field(alias="_embedded")


# -- rows → amoCRM-shaped dicts -----------------------------------------------------------------


def _raw_embedded(raw: Any, key: str) -> list[dict[str, Any]]:
    embedded = raw.get("_embedded") if isinstance(raw, dict) else None
    items = embedded.get(key) if isinstance(embedded, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _fields(row: Contact | Lead) -> list[dict[str, Any]] | None:
    # The column is what sync stored; the raw entity is the fallback for older rows.
    value = row.custom_fields_values
    if value is None and isinstance(row.raw, dict):
        value = row.raw.get("custom_fields_values")
    return value if isinstance(value, list) else None


def contact_out(row: Contact) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "first_name": row.first_name,
        "last_name": row.last_name,
        "responsible_user_id": row.responsible_user_id,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "custom_fields_values": _fields(row),
        "_embedded": {
            "tags": _raw_embedded(row.raw, "tags"),
            "companies": _raw_embedded(row.raw, "companies"),
        },
    }


def lead_out(row: Lead) -> dict[str, Any]:
    ids = [int(i) for i in (row.contact_ids or []) if str(i).isdigit()]
    if row.main_contact_id is not None and row.main_contact_id not in ids:
        ids.insert(0, row.main_contact_id)
    return {
        "id": row.id,
        "name": row.name,
        "price": row.price,
        "status_id": row.status_id,
        "pipeline_id": row.pipeline_id,
        "responsible_user_id": row.responsible_user_id,
        "closed_at": row.closed_at,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "custom_fields_values": _fields(row),
        "_embedded": {
            "contacts": [{"id": i, "is_main": i == row.main_contact_id} for i in ids],
            "tags": _raw_embedded(row.raw, "tags"),
        },
    }


def task_out(row: Task) -> dict[str, Any]:
    return {
        "id": row.id,
        "text": row.text,
        "task_type_id": row.task_type_id,
        "entity_type": row.entity_type,
        "entity_id": row.entity_id,
        "responsible_user_id": row.responsible_user_id,
        "is_completed": bool(row.is_completed),
        "complete_till": row.complete_till,
        "result": {"text": row.result_text} if row.result_text else {},
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def pipeline_out(row: Pipeline, statuses: list[PipelineStatus]) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "sort": row.sort,
        "is_main": bool(row.is_main),
        "is_archive": bool(row.is_archive),
        "_embedded": {
            "statuses": [
                {
                    "id": s.id,
                    "pipeline_id": s.pipeline_id,
                    "name": s.name,
                    "sort": s.sort,
                    "color": s.color,
                    "type": s.type,
                }
                for s in statuses
            ]
        },
    }
