"""In-memory accounts: metadata, entity tables (leads, contacts, companies, tasks, notes), links."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]

# Per-account id blocks keep every entity type in its own range, so a client that mixes up
# a contact id and a lead id gets 204 instead of a wrong entity.
ID_BLOCK = 10_000_000
FIRST_IDS = {
    "contacts": 1_000_001,
    "companies": 3_000_001,
    "leads": 5_000_001,
    "tasks": 7_000_001,
    "notes": 8_000_001,
    "webhooks": 9_000_001,
    "tags": 9_500_001,
}
ACCOUNT_ID_BASE = 32_000_000
WON_STATUS = 142
LOST_STATUS = 143


@dataclass
class Enum:
    id: int
    value: str
    sort: int
    code: str | None = None


@dataclass
class CustomField:
    id: int
    name: str
    type: str
    entity_type: str
    sort: int
    code: str | None = None
    is_predefined: bool = False
    is_deletable: bool = True
    is_api_only: bool = False
    enums: list[Enum] | None = None

    def enum_by_id(self, enum_id: Any) -> Enum | None:
        for item in self.enums or ():
            if item.id == enum_id:
                return item
        return None

    def enum_by_code(self, code: Any) -> Enum | None:
        for item in self.enums or ():
            if item.code is not None and item.code == code:
                return item
        return None

    def enum_by_value(self, value: Any) -> Enum | None:
        for item in self.enums or ():
            if item.value == value:
                return item
        return None


@dataclass
class Status:
    id: int
    name: str
    sort: int
    color: str
    type: int = 0
    is_editable: bool = True


@dataclass
class Pipeline:
    id: int
    name: str
    sort: int
    is_main: bool
    statuses: list[Status]
    is_unsorted_on: bool = True
    is_archive: bool = False

    def status(self, status_id: int) -> Status | None:
        for item in self.statuses:
            if item.id == status_id:
                return item
        return None

    def first_status(self) -> Status:
        """The first working stage: amoCRM puts new leads there unless told otherwise."""
        return next(s for s in self.statuses if s.type == 0)

    def unsorted_status(self) -> Status:
        return next(s for s in self.statuses if s.type == 1)


@dataclass
class User:
    id: int
    name: str
    email: str
    is_admin: bool
    phone: str = ""
    lang: str = "ru"
    uuid: str = ""


class EntityTable:
    """Records of one entity type, newest id last; records are replaced, never mutated."""

    def __init__(self, kind: str, first_id: int) -> None:
        self.kind = kind
        self.records: dict[int, Record] = {}
        self.trash: dict[int, Record] = {}
        self.next_id = first_id
        self.version = 0
        self.cache: OrderedDict[Any, tuple[int, list[Record]]] = OrderedDict()
        self.search_text: dict[int, tuple[Record, str]] = {}

    def new_id(self) -> int:
        value = self.next_id
        self.next_id += 1
        return value

    def get(self, rid: int) -> Record | None:
        return self.records.get(rid)

    def put(self, record: Record) -> None:
        self.records[record["id"]] = record
        self.version += 1

    def delete(self, rid: int) -> Record | None:
        record = self.records.pop(rid, None)
        if record is not None:
            self.trash[rid] = record
            self.version += 1
        return record

    def cached(self, key: Any, build: Callable[[], list[Record]]) -> list[Record]:
        """A query result for this table version; 32 recent queries are kept."""
        hit = self.cache.get(key)
        if hit is not None and hit[0] == self.version:
            self.cache.move_to_end(key)
            return hit[1]
        result = build()
        self.cache[key] = (self.version, result)
        self.cache.move_to_end(key)
        while len(self.cache) > 32:
            self.cache.popitem(last=False)
        return result


@dataclass
class Account:
    """One amoCRM account with its users, settings and data."""

    number: int
    id: int
    subdomain: str
    name: str
    users: list[User]
    pipelines: list[Pipeline]
    fields: dict[str, list[CustomField]]
    created_at: int
    tables: dict[str, EntityTable] = field(default_factory=dict)
    contact_leads: dict[int, set[int]] = field(default_factory=dict)
    tags: dict[str, dict[str, int]] = field(default_factory=dict)  # entity -> name -> id
    tag_names: dict[int, str] = field(default_factory=dict)
    catalog_links: dict[tuple[str, int], list[Record]] = field(default_factory=dict)
    webhooks: dict[int, Record] = field(default_factory=dict)
    events: list[Record] = field(default_factory=list)
    loss_reasons: dict[int, Record] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        block = self.number * ID_BLOCK
        for kind in ("contacts", "companies", "leads", "tasks", "notes"):
            self.tables.setdefault(kind, EntityTable(kind, block + FIRST_IDS[kind]))
        self.next_webhook_id = block + FIRST_IDS["webhooks"]
        self.next_tag_id = block + FIRST_IDS["tags"]
        self.next_event_no = 1
        if not self.loss_reasons:
            for sort, name in enumerate(("Дорого", "Выбрали конкурента", "Не дозвонились"), 1):
                rid = block + 9_000 + sort
                self.loss_reasons[rid] = {
                    "id": rid, "name": name, "sort": sort * 10,
                    "created_at": self.created_at, "updated_at": self.created_at,
                }  # fmt: skip

    # --- metadata lookups -------------------------------------------------------------
    @property
    def admin(self) -> User:
        return next(u for u in self.users if u.is_admin)

    def user(self, uid: Any) -> User | None:
        return next((u for u in self.users if u.id == uid), None)

    def pipeline(self, pid: Any) -> Pipeline | None:
        return next((p for p in self.pipelines if p.id == pid), None)

    @property
    def main_pipeline(self) -> Pipeline:
        return next(p for p in self.pipelines if p.is_main)

    def field_by_id(self, entity: str, fid: Any) -> CustomField | None:
        return next((f for f in self.fields.get(entity, ()) if f.id == fid), None)

    def field_by_code(self, entity: str, code: Any) -> CustomField | None:
        return next((f for f in self.fields.get(entity, ()) if f.code and f.code == code), None)

    def field_map(self, entity: str) -> dict[int, CustomField]:
        return {f.id: f for f in self.fields.get(entity, ())}

    # --- tags -------------------------------------------------------------------------
    def tag_id(self, entity: str, name: str) -> int:
        """The id of a tag by name, creating it on first use, as amoCRM does."""
        names = self.tags.setdefault(entity, {})
        if name not in names:
            names[name] = self.next_tag_id
            self.tag_names[self.next_tag_id] = name
            self.next_tag_id += 1
        return names[name]

    # --- links ------------------------------------------------------------------------
    def link_contact(self, lead_id: int, contact_id: int) -> None:
        self.contact_leads.setdefault(contact_id, set()).add(lead_id)

    def unlink_contact(self, lead_id: int, contact_id: int) -> None:
        leads = self.contact_leads.get(contact_id)
        if leads:
            leads.discard(lead_id)

    def leads_of_contact(self, contact_id: int) -> list[int]:
        return sorted(self.contact_leads.get(contact_id, ()))

    def leads_of_company(self, company_id: int) -> list[int]:
        return [
            r["id"] for r in self.tables["leads"].records.values() if r["company_id"] == company_id
        ]

    def contacts_of_company(self, company_id: int) -> list[int]:
        return [
            r["id"]
            for r in self.tables["contacts"].records.values()
            if r["company_id"] == company_id
        ]


def replace(record: Record, changes: dict[str, Any]) -> Record:
    """A new record with the changes applied: readers holding the old one never see a mix."""
    new = dict(record)
    new.update(changes)
    return new


def unique(items: Iterable[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out
