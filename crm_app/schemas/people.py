"""The bot's view of a person and full-text search: request and response models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crm_app.schemas.common import PlainStr

Text = Annotated[PlainStr, Field(min_length=1, max_length=200)]


class PeopleQuery(BaseModel):
    """Exactly one way to name the person."""

    model_config = ConfigDict(extra="ignore")

    telegram_id: Annotated[str, Field(pattern=r"^[0-9]{1,20}$")] | None = Field(
        default=None, description="Telegram user id."
    )
    phone: Annotated[PlainStr, Field(min_length=3, max_length=40)] | None = Field(
        default=None, description="Any common format; compared in E.164."
    )
    email: Annotated[PlainStr, Field(min_length=3, max_length=254)] | None = None
    external_id: Annotated[PlainStr, Field(min_length=1, max_length=128)] | None = Field(
        default=None, description="The channel's id of the person, with `channel`."
    )
    channel: Literal["telegram", "widget"] | None = None

    @model_validator(mode="after")
    def _one_key(self) -> PeopleQuery:
        given = [k for k in ("telegram_id", "phone", "email", "external_id") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of telegram_id, phone, email, external_id")
        if self.external_id and not self.channel:
            raise ValueError("external_id needs channel")
        return self


class UserRef(BaseModel):
    id: int
    name: str | None = None


class Stage(BaseModel):
    id: int | None = None
    name: str | None = None


class DealOut(BaseModel):
    id: int
    name: str | None = None
    price: int | None = None
    pipeline: Stage
    status: Stage
    is_closed: bool
    responsible_user: UserRef | None = None
    created_at: int | None = None
    updated_at: int | None = None
    closed_at: int | None = None


class TaskOut(BaseModel):
    id: int
    text: str | None = None
    task_type_id: int | None = None
    complete_till: int | None = None
    entity_type: str | None = None
    entity_id: int | None = None
    responsible_user: UserRef | None = None


class NoteOut(BaseModel):
    id: int
    entity_type: str
    entity_id: int
    note_type: str | None = None
    text: str | None = None
    created_at: int | None = None


class PersonContact(BaseModel):
    id: int
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phones: list[str]
    emails: list[str]
    telegram_id: str | None = None
    responsible_user: UserRef | None = None
    updated_at: int | None = None


class Freshness(BaseModel):
    """How current the mirror is: the answer is the mirror's, no amoCRM request was made."""

    as_of: str = Field(description="When this answer was built (ISO 8601, UTC).")
    contact_synced_at: str | None = Field(
        default=None, description="When this contact's row was last written from amoCRM."
    )
    contacts_synced_at: str | None = Field(default=None, description="Last successful sync.")
    leads_synced_at: str | None = None
    tasks_synced_at: str | None = None
    notes_synced_at: str | None = None
    last_webhook_at: str | None = Field(
        default=None, description="Last amoCRM webhook applied to the mirror."
    )


class PersonOut(BaseModel):
    contact: PersonContact
    open_deals: list[DealOut]
    last_closed_deal: DealOut | None = None
    open_tasks: list[TaskOut]
    last_notes: list[NoteOut]
    freshness: Freshness


class SearchQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    q: Text = Field(description="Words to look for (Russian and English word forms match).")
    types: Annotated[PlainStr, Field(max_length=40)] | None = Field(
        default=None,
        description="Comma-separated subset of contacts,leads,notes (default: all).",
    )
    limit: int = Field(default=20, ge=1, le=100)


class SearchHit(BaseModel):
    type: Literal["contacts", "leads", "notes"]
    id: int
    title: str | None = None
    rank: float = Field(description="Higher is better; comparable within one answer.")
    entity_type: str | None = Field(default=None, description="Notes: what the note is on.")
    entity_id: int | None = None
    updated_at: int | None = None


class SearchOut(BaseModel):
    query: str
    items: list[SearchHit]
    freshness: Freshness


# -- OpenAPI ------------------------------------------------------------------------------------
# SpecTree leaves every route under its own `/api` prefix out of the generated document, so the
# two operations are described here from the same models that validate them.

_REF = "#/components/schemas/{model}"


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)
    return {"$ref": _REF.format(model=model.__name__)}


def _parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema["properties"].items():
        options = prop.get("anyOf")
        if isinstance(options, list):  # `X | None`: on the wire the parameter is absent or X
            rest = [o for o in options if o != {"type": "null"}]
            prop = {**{k: v for k, v in prop.items() if k not in ("anyOf", "default")}, **rest[0]}
        if prop.get("default", ...) is None:
            del prop["default"]
        description = prop.pop("description", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                 "schema": prop}  # fmt: skip
        if description:
            param["description"] = description
        out.append(param)
    return out


def _operation(
    operation_id: str,
    summary: str,
    description: str,
    query: type[BaseModel],
    answer: type[BaseModel],
    components: dict[str, Any],
) -> dict[str, Any]:
    from crm_app.schemas.common import Problem

    problem = {"application/problem+json": {"schema": _schema(Problem, components)}}
    return {
        "tags": ["bot"],
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "security": [{"apiKey": []}],
        "parameters": _parameters(query),
        "responses": {
            "200": {
                "description": "From the local mirror; no amoCRM request is made.",
                "content": {"application/json": {"schema": _schema(answer, components)}},
            },
            "400": {"description": "A query with nothing to look for.", "content": problem},
            "401": {"description": "No API key, or an unknown or revoked one.", "content": problem},
            "404": {"description": "No such person in the key owner's mirror.", "content": problem},
            "422": {"description": "Invalid query parameters.", "content": problem},
            "429": {"description": "Too many calls with this key.", "content": problem},
        },
    }


def bot_paths(components: dict[str, Any]) -> dict[str, Any]:
    """The path items of the bot's read API; adds the schemas they use to `components`."""
    return {
        "/api/crm/people": {
            "get": _operation(
                "crm_people",
                "A person from the mirror",
                "Exactly one of `telegram_id`, `phone`, `email`, `external_id` (with `channel`). "
                "The contact, open deals and the last closed one (pipeline, stage, price, "
                "responsible user), open tasks, the latest notes, and `freshness`. Only the API "
                "key owner's data is ever seen.",
                PeopleQuery,
                PersonOut,
                components,
            )
        },
        "/api/crm/search": {
            "get": _operation(
                "crm_search",
                "Full-text search over contacts, deals and notes",
                "Any of the words of `q`, Russian and English word forms alike, ranked; the "
                "key owner's data only.",
                SearchQuery,
                SearchOut,
                components,
            )
        },
    }
