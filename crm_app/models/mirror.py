"""The local mirror of amoCRM entities, keyed by (owner_id, amoCRM id)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DDL, BigInteger, ForeignKey, Index, String, Text, event
from sqlalchemy.orm import Mapped, mapped_column

from crm_app.extensions import Model
from crm_app.models.base import JSONType, UTCDateTime, utcnow


class _Mirrored:
    """Columns every mirrored entity has."""

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    created_at: Mapped[int | None] = mapped_column()  # amoCRM unix seconds
    # Indexed together with owner_id per table (see __table_args__): the API lists each owner's
    # rows newest first.
    updated_at: Mapped[int | None] = mapped_column()
    raw: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Contact(_Mirrored, Model):
    __tablename__ = "crm_contacts"
    __table_args__ = (
        Index("ix_crm_contacts_telegram", "owner_id", "telegram_id"),
        Index("ix_crm_contacts_phone", "owner_id", "phone"),
        Index("ix_crm_contacts_email", "owner_id", "email"),
        Index("ix_crm_contacts_owner_updated", "owner_id", "updated_at"),
    )

    name: Mapped[str | None] = mapped_column(String(255))
    first_name: Mapped[str | None] = mapped_column(String(255))
    last_name: Mapped[str | None] = mapped_column(String(255))
    responsible_user_id: Mapped[int | None] = mapped_column(BigInteger)
    # First normalised (E.164) phone and lower-cased email, for dedup lookups.
    phone: Mapped[str | None] = mapped_column(String(32))
    email: Mapped[str | None] = mapped_column(String(255))
    phones: Mapped[list[str]] = mapped_column(JSONType, default=list)
    emails: Mapped[list[str]] = mapped_column(JSONType, default=list)
    telegram_id: Mapped[str | None] = mapped_column(String(64))
    custom_fields_values: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)


class Lead(_Mirrored, Model):
    __tablename__ = "crm_leads"
    __table_args__ = (
        # A board column, newest change first, keyset-paged: (owner, pipeline, stage) equal,
        # then (updated_at, id) descending straight off the index.
        Index("ix_crm_leads_status", "owner_id", "pipeline_id", "status_id", "updated_at", "id"),
        Index("ix_crm_leads_owner_updated", "owner_id", "updated_at"),
        # The deals table's search inside names and tags (trigrams; a plain index on SQLite).
        Index(
            "ix_crm_leads_name_trgm",
            "name",
            postgresql_using="gin",
            postgresql_ops={"name": "gin_trgm_ops"},
        ),
        Index(
            "ix_crm_leads_tags_trgm",
            "tag_names",
            postgresql_using="gin",
            postgresql_ops={"tag_names": "gin_trgm_ops"},
        ),
    )

    name: Mapped[str | None] = mapped_column(String(255))
    # The names of the deal's tags, space-separated: what the table's search looks in.
    tag_names: Mapped[str | None] = mapped_column(Text)
    price: Mapped[int | None] = mapped_column(BigInteger)
    pipeline_id: Mapped[int | None] = mapped_column(BigInteger)
    status_id: Mapped[int | None] = mapped_column(BigInteger)
    responsible_user_id: Mapped[int | None] = mapped_column(BigInteger)
    closed_at: Mapped[int | None] = mapped_column()
    contact_ids: Mapped[list[int]] = mapped_column(JSONType, default=list)
    main_contact_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    custom_fields_values: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)


class Task(_Mirrored, Model):
    __tablename__ = "crm_tasks"
    __table_args__ = (
        Index("ix_crm_tasks_owner_updated", "owner_id", "updated_at"),
        # A deal's or contact's tasks; the task lists (open first, by due time).
        Index("ix_crm_tasks_entity", "owner_id", "entity_type", "entity_id"),
        Index("ix_crm_tasks_due", "owner_id", "is_completed", "complete_till"),
    )

    text: Mapped[str | None] = mapped_column(Text)
    task_type_id: Mapped[int | None] = mapped_column(BigInteger)
    entity_type: Mapped[str | None] = mapped_column(String(32))
    entity_id: Mapped[int | None] = mapped_column(BigInteger)
    responsible_user_id: Mapped[int | None] = mapped_column(BigInteger)
    is_completed: Mapped[bool] = mapped_column(default=False)
    complete_till: Mapped[int | None] = mapped_column()
    result_text: Mapped[str | None] = mapped_column(Text)


class Note(Model):
    """A note of a lead or contact. Note ids are unique per account across entity types."""

    __tablename__ = "crm_notes"
    __table_args__ = (
        # The card timeline: one entity's notes, newest first.
        Index("ix_crm_notes_entity", "owner_id", "entity_type", "entity_id", "created_at"),
        Index("ix_crm_notes_owner_updated", "owner_id", "updated_at"),
    )

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entity_type: Mapped[str] = mapped_column(String(16))  # leads | contacts
    entity_id: Mapped[int] = mapped_column(BigInteger)
    note_type: Mapped[str | None] = mapped_column(String(64))
    # params.text when the type has one (common, sms, service messages), for search and lists.
    text: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    responsible_user_id: Mapped[int | None] = mapped_column(BigInteger)
    created_by: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int | None] = mapped_column()  # amoCRM unix seconds
    updated_at: Mapped[int | None] = mapped_column()
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Pipeline(Model):
    __tablename__ = "crm_pipelines"

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(255))
    sort: Mapped[int] = mapped_column(default=0)
    is_main: Mapped[bool] = mapped_column(default=False)
    is_archive: Mapped[bool] = mapped_column(default=False)
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PipelineStatus(Model):
    """Statuses 142/143 share ids across pipelines, hence the pipeline in the key."""

    __tablename__ = "crm_statuses"

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True
    )
    pipeline_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(255))
    sort: Mapped[int] = mapped_column(default=0)
    color: Mapped[str | None] = mapped_column(String(16))
    type: Mapped[int] = mapped_column(default=0)


class AmoUser(Model):
    __tablename__ = "crm_users"

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(default=False)
    is_active: Mapped[bool] = mapped_column(default=True)
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# The trigram indexes above need PostgreSQL's pg_trgm extension (shipped with PostgreSQL).
event.listen(
    Lead.__table__,
    "before_create",
    DDL("CREATE EXTENSION IF NOT EXISTS pg_trgm").execute_if(dialect="postgresql"),
)
