"""What a workspace write comes to: applied, pending in the outbox, a conflict, or refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Applied:
    """amoCRM accepted the write; ``entity`` is the row as now mirrored (API shape)."""

    entity_type: str
    entity_id: int
    entity: dict[str, Any]


@dataclass(frozen=True)
class Pending:
    """amoCRM could not be reached (429, 5xx, no answer) or an earlier edit of the same entity
    is still waiting: the write is in the outbox and a worker sends it."""

    entity_type: str
    entity_id: int | None
    outbox_id: int
    payload: dict[str, Any]
    reason: str
    entity: dict[str, Any] | None = None


@dataclass(frozen=True)
class Conflict:
    """The mirror holds a newer version than the one the edit was made on; nothing was sent."""

    entity_type: str
    entity_id: int
    theirs: dict[str, Any]
    yours: dict[str, Any]


@dataclass(frozen=True)
class Invalid:
    """amoCRM (or our own check of the mirror) refused a field: field name → message."""

    fields: dict[str, str]
    detail: str = "amoCRM rejected the values"


@dataclass(frozen=True)
class NotFound:
    """The entity is not in the owner's mirror."""

    entity_type: str
    entity_id: int


Outcome = Applied | Pending | Conflict | Invalid | NotFound


@dataclass
class Sent:
    """One operation's answer from amoCRM, as the mirror needs it."""

    entity_id: int | None
    updated_at: int | None
    extra: dict[str, Any] = field(default_factory=dict)
