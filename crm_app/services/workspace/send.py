"""One workspace operation as exactly one amoCRM request, and its answer applied to the mirror."""

from __future__ import annotations

import logging
from typing import Any

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import (
    AmoCRMAPIError,
    AmoCRMNotFound,
    AmoCRMPaymentRequired,
    AmoCRMUnavailable,
    AmoCRMValidationError,
)
from crm_app.amocrm.retry import RetryPolicy
from crm_app.extensions import db
from crm_app.models import Contact, Lead, Task
from crm_app.services.workspace import apply
from crm_app.services.workspace.results import Sent

logger = logging.getLogger(__name__)

UPDATE_MODELS: dict[str, Any] = {"leads": Lead, "contacts": Contact, "tasks": Task}
# Workspace writes are never retried inside the call: a failure goes to the outbox, whose own
# backoff decides when to try again (a person never waits on amoCRM's pauses).
NO_RETRY = RetryPolicy(rate_limit_retries=0, failure_retries=0)
# amoCRM paths (dot notation into the request item) → the field a form or the API names.
FIELD_ALIASES = {"result.text": "result", "params.text": "text"}


class Refused(Exception):
    """amoCRM refused the write for good (validation, entity gone, not paid)."""

    def __init__(self, fields: dict[str, str], detail: str) -> None:
        super().__init__(detail)
        self.fields = fields
        self.detail = detail


def is_temporary(exc: AmoCRMAPIError) -> bool:
    """Worth trying again later: rate limits, 5xx, no answer, token or block trouble."""
    return not isinstance(exc, AmoCRMValidationError | AmoCRMNotFound | AmoCRMPaymentRequired)


def no_answer(exc: AmoCRMAPIError) -> bool:
    """The request may have reached amoCRM and been carried out (timeout, cut connection)."""
    return isinstance(exc, AmoCRMUnavailable) and (exc.status is None or exc.status >= 500)


def field_errors(exc: AmoCRMValidationError, index: int | None = None) -> dict[str, str]:
    """``validation-errors`` → {field: message}; with ``index`` only that batch item's errors."""
    out: dict[str, str] = {}
    for position, item in enumerate(exc.errors):
        if index is not None and str(item.get("request_id")) not in (str(index), str(position)):
            continue
        for error in item.get("errors") or []:
            path = str(error.get("path") or "")
            name = FIELD_ALIASES.get(path, path.split(".", 1)[0] or "_")
            code = error.get("code") or "invalid"
            out.setdefault(name, f"{error.get('detail') or code} ({code})")
    return out


def refused(exc: AmoCRMAPIError) -> Refused:
    if isinstance(exc, AmoCRMValidationError):
        return Refused(field_errors(exc) or {"_": exc.message}, "amoCRM rejected the values")
    if isinstance(exc, AmoCRMNotFound):
        return Refused({}, "amoCRM no longer has this entity")
    return Refused({}, exc.message)


def send(
    client: AmoCRMClient,
    owner_id: int,
    entity_type: str,
    entity_id: int | None,
    op: str,
    payload: dict[str, Any],
) -> Sent:
    """Send one operation and put amoCRM's answer into the mirror (caller commits)."""
    if op == "update":
        updaters = {
            "leads": client.update_lead,
            "contacts": client.update_contact,
            "tasks": client.update_task,
        }
        answer = updaters[entity_type](int(entity_id or 0), payload)
        stamp = answer.get("updated_at") if isinstance(answer.get("updated_at"), int) else None
        apply_update(owner_id, entity_type, int(entity_id or 0), payload, stamp)
        return Sent(entity_id, stamp)
    if op == "note":
        assert entity_id is not None
        body = dict(payload, entity_id=int(entity_id))
        created = client.add_notes(entity_type, [body])
        note_id = int(created[0]["id"]) if created else 0
        apply.insert_note(owner_id, entity_type, int(entity_id), note_id, payload)
        return Sent(entity_id, None, {"note_id": note_id})
    if op == "create" and entity_type == "tasks":
        created_task = client.create_tasks([payload])
        task_id = int(created_task[0]["id"])
        apply.insert_task(owner_id, task_id, payload)
        return Sent(task_id, None)
    if op == "create" and entity_type == "leads":
        answer_items = client.create_lead_complex([payload])
        lead = apply.insert_created_lead(owner_id, payload, answer_items[0])
        return Sent(lead.id, lead.updated_at, {"contact_id": answer_items[0].get("contact_id")})
    raise ValueError(f"unknown operation {op} on {entity_type}")


def send_update_batch(
    client: AmoCRMClient, owner_id: int, entity_type: str, items: list[tuple[int, dict[str, Any]]]
) -> list[int | None]:
    """Several entities' edits in one ``PATCH /api/v4/{entity_type}``; returns new updated_at."""
    body = [
        dict(payload, id=entity_id, request_id=str(n))
        for n, (entity_id, payload) in enumerate(items)
    ]
    answered: dict[int, int | None] = {}
    for item in client.update_many(entity_type, body):
        if isinstance(item, dict) and isinstance(item.get("id"), int):
            stamp = item.get("updated_at")
            answered[item["id"]] = stamp if isinstance(stamp, int) else None
    stamps = []
    for entity_id, payload in items:
        stamp = answered.get(entity_id)
        apply_update(owner_id, entity_type, entity_id, payload, stamp)
        stamps.append(stamp)
    return stamps


def apply_update(
    owner_id: int, entity_type: str, entity_id: int, payload: dict[str, Any], stamp: int | None
) -> None:
    model = UPDATE_MODELS[entity_type]
    row = db.session.get(model, (owner_id, entity_id))
    if row is None:
        return
    if entity_type == "leads":
        apply.apply_lead_update(row, payload, stamp)
    elif entity_type == "contacts":
        apply.apply_contact_update(row, payload, stamp)
    else:
        apply.apply_task_update(row, payload, stamp)
