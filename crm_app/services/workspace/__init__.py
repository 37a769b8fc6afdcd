"""Workspace writes to amoCRM (version check, one request, outbox) and the screens' read models."""

from crm_app.services.workspace.results import (
    Applied,
    Conflict,
    Invalid,
    NotFound,
    Outcome,
    Pending,
)
from crm_app.services.workspace.writes import (
    add_note,
    create_lead,
    create_task,
    update_contact,
    update_lead,
    update_task,
)

__all__ = [
    "Applied",
    "Conflict",
    "Invalid",
    "NotFound",
    "Outcome",
    "Pending",
    "add_note",
    "create_lead",
    "create_task",
    "update_contact",
    "update_lead",
    "update_task",
]
