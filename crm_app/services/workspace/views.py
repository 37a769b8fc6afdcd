"""Mirror rows in the JSON API's shapes (the write answers and the conflict's "theirs")."""

from __future__ import annotations

from typing import Any

from crm_app.schemas.entities import contact_out, lead_out, task_out


def entity_view(entity_type: str, row: Any) -> dict[str, Any]:
    if entity_type == "leads":
        return lead_out(row)
    if entity_type == "contacts":
        return contact_out(row)
    return task_out(row)
