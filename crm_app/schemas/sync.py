"""Sync runs, the sync log and the statistics panel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crm_app.schemas.common import OwnerQuery, PlainStr, Strict

Entity = Literal["contacts", "leads", "tasks", "notes"]


class SyncRequest(Strict):
    """POST /admin/crm/sync: which entities (default: those enabled in the settings)."""

    entities: list[Entity] | None = Field(default=None, min_length=1, max_length=4)
    full: bool = Field(default=False, description="Re-read everything instead of the changes.")


class SyncRunOut(BaseModel):
    """A sync run: the 202 answer of POST /admin/crm/sync and what polling it returns."""

    model_config = ConfigDict(extra="allow")

    run_id: int
    status: Literal["queued", "running", "success", "error", "cancelled"]
    entities: list[str]
    full: bool
    trigger: str
    current_entity: str | None = None
    pages: int = 0
    records: int = 0
    counts: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class SyncLogQuery(OwnerQuery):
    limit: int = Field(default=50, ge=1, le=200)
    offset: int = Field(default=0, ge=0, le=1_000_000)
    operation: Annotated[PlainStr, Field(max_length=32)] | None = Field(
        default=None, description="Only this operation, e.g. sync_contacts or create_lead."
    )
    status: Literal["success", "error"] | None = None


class SyncLogItem(BaseModel):
    timestamp: datetime
    operation: str
    status: str
    details: dict[str, Any] | list[Any] | str | None
    run_id: int | None = None


class SyncLogPage(BaseModel):
    items: list[SyncLogItem] = Field(description="Newest first.")
    total: int
    limit: int
    offset: int


class StatsOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    contacts_count: int
    leads_count: int
    tasks_count: int
    last_sync_at: datetime | None
