"""Was a create already carried out? Asked before re-sending one whose answer never came."""

from __future__ import annotations

import logging
from typing import Any

from crm_app.amocrm.client import AmoCRMClient
from crm_app.models import OutboxWrite
from crm_app.services.workspace import apply

logger = logging.getLogger(__name__)

SLACK = 120  # seconds of clock difference tolerated between us and amoCRM


def find_created(client: AmoCRMClient, row: OutboxWrite) -> dict[str, Any] | None:
    """The entity the row created, if amoCRM has it (matched on what we sent); else None.

    The match is on the content sent and on the creation time (not before the row was made):
    amoCRM keeps no idempotency key (``request_id`` is only echoed).
    """
    since = int(row.created_at.timestamp()) - SLACK
    payload = row.payload
    if row.op == "note" and row.entity_id is not None:
        page = client.get_notes(
            row.entity_type,
            filter_={"entity_id": [row.entity_id], "updated_at": {"from": since}},
        )
        text = (payload.get("params") or {}).get("text")
        for note in page.items:
            if (
                note.get("entity_id") == row.entity_id
                and (note.get("params") or {}).get("text") == text
            ):
                note_id = int(note["id"])
                apply.insert_note(row.owner_id, row.entity_type, row.entity_id, note_id, payload)
                return {"note_id": note_id, "found": True}
        return None
    if row.op == "create" and row.entity_type == "tasks":
        filter_: dict[str, Any] = {"updated_at": {"from": since}}
        if payload.get("entity_id"):
            filter_.update(entity_id=[payload["entity_id"]], entity_type=payload.get("entity_type"))
        for task in client.get_tasks(filter_=filter_).items:
            same = task.get("text") == payload.get("text") and task.get(
                "complete_till"
            ) == payload.get("complete_till")
            if same and int(task.get("created_at") or 0) >= since:
                apply.insert_task(row.owner_id, int(task["id"]), payload)
                return {"id": int(task["id"]), "found": True}
        return None
    if row.op == "create" and row.entity_type == "leads" and payload.get("name"):
        page = client.get_leads(query=str(payload["name"]), filter_=None)
        for lead in page.items:
            if (
                lead.get("name") == payload.get("name")
                and lead.get("price") == payload.get("price", lead.get("price"))
                and int(lead.get("created_at") or 0) >= since
            ):
                contacts = ((lead.get("_embedded") or {}).get("contacts") or [{}])[0]
                answer = {"id": lead["id"], "contact_id": contacts.get("id")}
                apply.insert_created_lead(row.owner_id, payload, answer)
                return {"id": int(lead["id"]), "found": True}
    return None
