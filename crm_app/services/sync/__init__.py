"""The sync engine: mirrors contacts, leads and tasks (full or incremental) per owner."""

from crm_app.services.sync.engine import run_sync
from crm_app.services.sync.reference import sync_reference_data
from crm_app.services.sync.refetch import refetch_entities
from crm_app.services.sync.runs import SyncError, active_run, start_sync
from crm_app.services.sync.schedule import claim_beat_slot, owners_to_sync, schedule_all
from crm_app.services.sync.upsert import (
    ENTITIES,
    delete_entities,
    upsert_contacts,
    upsert_leads,
    upsert_tasks,
)

__all__ = [
    "ENTITIES",
    "SyncError",
    "active_run",
    "claim_beat_slot",
    "delete_entities",
    "owners_to_sync",
    "refetch_entities",
    "run_sync",
    "schedule_all",
    "start_sync",
    "sync_reference_data",
    "upsert_contacts",
    "upsert_leads",
    "upsert_tasks",
]
