"""The typed shape of a sync run's checkpoint (stored as JSON in ``sync_runs.checkpoint``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, cast

from crm_app.services.sync.upsert import ENTITIES

Mode = Literal["full", "incremental", "reconcile"]
MODES: tuple[Mode, ...] = ("full", "incremental", "reconcile")
REFERENCE_KEY = "_reference"  # pipelines and users, synced once per run before the entities


@dataclass
class EntityProgress:
    """How far one entity's pass got: the page to read next and what was seen so far."""

    mode: Mode
    started: float  # unix time the pass began; the next cursor never passes it
    page: int = 1
    done: bool = False
    cursor_from: int | None = None  # incremental: filter[updated_at][from]
    previous_cursor: int | None = None  # the cursor before this pass
    max_updated_at: int | None = None  # newest updated_at stored by this pass
    records: int = 0
    created: int = 0  # records the mirror did not have
    changed: int = 0  # records the mirror held in another version
    pages: int = 0
    older: int = 0  # items older than the cursor (amoCRM ignoring the filter)
    deleted: int = 0
    filter_ignored: bool = False
    order_ignored: bool = False
    duration: float = 0.0  # seconds, summed over every run that worked on the pass

    @classmethod
    def from_json(cls, raw: object) -> EntityProgress | None:
        """The stored progress, or None when ``raw`` is not a usable entry (start afresh)."""
        if not isinstance(raw, dict) or raw.get("mode") not in MODES:
            return None
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError:  # a required field is missing
            return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def next_cursor(self, overlap: int) -> int | None:
        """The next incremental starting point once this pass is done.

        Not simply the newest ``updated_at`` seen: a record edited while we paged may sit on a
        page already read, with a stamp below the newest one we saw later. Anything edited
        after the pass began has a stamp at or after its start, so the cursor never passes the
        start (less ``overlap`` seconds for clock skew). ``from`` is inclusive: re-reading a
        record is harmless. The cursor never moves back.
        """
        if self.max_updated_at is None:
            return self.previous_cursor
        candidate = min(self.max_updated_at, int(self.started) - overlap)
        if self.previous_cursor is None:
            return candidate
        return max(candidate, self.previous_cursor)


@dataclass
class Checkpoint:
    """Everything a run needs to go on where it (or a failed run before it) stopped."""

    entities: dict[str, EntityProgress] = field(default_factory=dict)
    reference: dict[str, Any] | None = None  # the reference-data summary, once it is done

    @classmethod
    def from_json(cls, raw: object) -> Checkpoint:
        data = raw if isinstance(raw, dict) else {}
        entities = {}
        for entity in ENTITIES:
            progress = EntityProgress.from_json(data.get(entity))
            if progress is not None:
                entities[entity] = progress
        reference = data.get(REFERENCE_KEY)
        done = isinstance(reference, dict) and bool(reference.get("done"))
        return cls(entities, cast(dict[str, Any], reference) if done else None)

    def to_json(self) -> dict[str, Any]:
        """A fresh JSON-ready dict: safe to hand to another thread while this one goes on."""
        out: dict[str, Any] = {e: p.to_json() for e, p in self.entities.items()}
        if self.reference is not None:
            out[REFERENCE_KEY] = {**self.reference, "done": True}
        return out

    def only(self, entities: list[str]) -> Checkpoint:
        """The entity progress a new run over ``entities`` inherits (reference data is redone)."""
        return Checkpoint({e: p for e, p in self.entities.items() if e in entities})
