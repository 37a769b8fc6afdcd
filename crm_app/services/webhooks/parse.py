"""amoCRM webhook bodies: PHP-style form keys to nested data, then to a flat list of events."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

logger = logging.getLogger(__name__)

MAX_DEPTH = 16  # the unsorted body nests 11 levels; PHP allows 64
MAX_FIELDS = 20_000

# Top-level body keys → the entity name we use everywhere else (tasks arrive as `task`).
ENTITY_KEYS = {
    "leads": "leads",
    "contacts": "contacts",
    "task": "tasks",
    "tasks": "tasks",
    "unsorted": "unsorted",
}
# Keys amoCRM documents but the mirror has no use for: kept in the raw body, counted, ignored.
KNOWN_IGNORED = {"catalogs", "customers", "talk", "message", "companies"}
ACTIONS = {"add", "update", "delete", "restore", "status", "responsible", "note"}
DELETE_ACTIONS = {"delete"}
_KEY_RE = re.compile(r"\[([^\[\]]*)\]")
_HIGH_ESCAPES = re.compile(rb"(?:%[89a-fA-F][0-9a-fA-F])+")


class MalformedBody(ValueError):
    """The body is not a form-encoded amoCRM delivery we can read (→ 400)."""


@dataclass(frozen=True)
class Event:
    """One change a delivery announces: a hint to re-read `entity_id`, never the truth itself."""

    entity: str  # leads | contacts | companies | tasks | unsorted
    action: str  # add | update | delete | restore | status | responsible | note
    entity_id: int | None
    modified: str | None  # last_modified / updated_at as sent, for dedup
    data: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.entity}:{self.action}"

    @property
    def is_delete(self) -> bool:
        return self.action in DELETE_ACTIONS

    @property
    def note_id(self) -> int | None:
        """The note a `note` event announces (its entity_id is the lead or contact)."""
        if self.action != "note":
            return None
        note = self.data.get("note")
        return to_int(note.get("id")) if isinstance(note, dict) else None


@dataclass
class Delivery:
    """A parsed body: the nested form, the account block and the events found in it."""

    form: dict[str, Any]
    account_id: str | None
    subdomain: str | None
    events: list[Event]
    unknown: list[str]


# -- form decoding ------------------------------------------------------------------------------


def split_key(key: str) -> list[str]:
    """`leads[status][0][id]` → ["leads", "status", "0", "id"]; `a[]` → ["a", ""].

    Like PHP, a key whose brackets do not parse cleanly is kept whole as a plain name.
    """
    head, bracket, _ = key.partition("[")
    if not bracket:
        return [key]
    rest = key[len(head) :]
    parts = _KEY_RE.findall(rest)
    if not head or "".join(f"[{p}]" for p in parts) != rest:
        return [key]
    return [head, *parts]


def _container(node: dict[str, Any], name: str) -> dict[str, Any]:
    child = node.get(name)
    if not isinstance(child, dict):
        if child is not None:
            logger.info("webhook key %r holds both a value and nested keys; nested kept", name)
        child = {}
        node[name] = child
    return child


def _assign(root: dict[str, Any], path: list[str], value: str) -> None:
    node = root
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if part == "":
            # PHP `[]`: append with the next free integer index.
            part = str(sum(1 for k in node if k.isdigit()))
        if last:
            node[part] = value
        else:
            node = _container(node, part)


def _listify(value: Any) -> Any:
    """Dicts whose keys are exactly "0".."n-1" become lists (PHP arrays are both at once)."""
    if not isinstance(value, dict):
        return value
    items = {k: _listify(v) for k, v in value.items()}
    if items and all(k.isdigit() for k in items):
        numbers = sorted(int(k) for k in items)
        if numbers == list(range(len(numbers))) and all(str(n) in items for n in numbers):
            return [items[str(n)] for n in numbers]
    return items


def _split_pairs(body: bytes, max_depth: int, max_fields: int) -> list[tuple[bytes, bytes]]:
    """Check the shape of a form body and split it into raw (key, value) pairs.

    Strict like ``parse_qsl(strict_parsing=True)``: every pair has an ``=``. A form body is
    ASCII; its escaped non-ASCII bytes must be UTF-8. Checking each run of such escapes is the
    same as decoding everything (ASCII around them cannot complete or break a character) and
    costs a fraction of it on the acknowledgement path.
    """
    text = body.strip()
    if not text:
        raise MalformedBody("empty body")
    if not text.isascii():
        raise MalformedBody("raw non-ASCII bytes: form bodies are percent-encoded")
    if text.count(b"&") + 1 > max_fields:
        raise MalformedBody("too many fields")
    for run in _HIGH_ESCAPES.findall(text):
        try:
            bytes.fromhex(run.replace(b"%", b"").decode("ascii")).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedBody("percent-encoded bytes are not UTF-8") from exc
    pairs: list[tuple[bytes, bytes]] = []
    for pair in text.split(b"&"):
        key, eq, value = pair.partition(b"=")
        if not eq:
            raise MalformedBody("not a form-encoded body")
        # A bracket is one level: `[` or its encodings, counted without decoding the key.
        brackets = key.count(b"[") + key.count(b"%5B") + key.count(b"%5b")
        if brackets >= max_depth and len(split_key(_text(key))) > max_depth:
            raise MalformedBody(f"keys nested deeper than {max_depth} levels")
        pairs.append((key, value))
    return pairs


def _text(raw: bytes) -> str:
    # `+` is a space in forms; the bytes were checked to be UTF-8 above.
    return unquote(raw.replace(b"+", b" ").decode("utf-8"), errors="strict")


def decode_form(
    body: bytes, *, max_depth: int = MAX_DEPTH, max_fields: int = MAX_FIELDS
) -> dict[str, Any]:
    """Decode an `application/x-www-form-urlencoded` body into nested dicts and lists.

    Values stay strings, as amoCRM sends them. Raises MalformedBody for bytes that are not a
    form (bad UTF-8, pairs without `=`), too many fields, or keys nested deeper than `max_depth`.
    """
    root: dict[str, Any] = {}
    for key, value in _split_pairs(body, max_depth, max_fields):
        _assign(root, split_key(_text(key)), _text(value))
    return {k: _listify(v) for k, v in root.items()}


@dataclass(frozen=True)
class Envelope:
    """What the endpoint needs before storing a body: whose account, and whether it says anything."""

    account_id: str | None
    subdomain: str | None
    has_payload: bool


def inspect_envelope(
    body: bytes, *, max_depth: int = MAX_DEPTH, max_fields: int = MAX_FIELDS
) -> Envelope:
    """The same checks as decode_form at a fraction of the cost, for the acknowledgement path.

    Only the `account[...]` pairs are decoded; the worker parses the rest later.
    """
    account: dict[str, str] = {}
    payload = False
    for key, value in _split_pairs(body, max_depth, max_fields):
        if key[:7].lower() != b"account":
            payload = True
            continue
        name = _text(key)
        if name in ("account[id]", "account[subdomain]"):
            account[name[8:-1]] = _text(value)
        elif name != "account" and not name.startswith("account["):
            payload = True
    return Envelope(account.get("id"), account.get("subdomain"), payload)


# -- events ---------------------------------------------------------------------------------------


def _items(value: Any) -> list[Any]:
    """The entries of one action: a list, a {"0": {...}} object, or a bare id (RU delete)."""
    if isinstance(value, list):
        raw = value
    elif isinstance(value, dict):
        # One entry sent as an object ({"id": ...}) vs entries keyed by index ({"0": {...}}).
        raw = [value] if "id" in value or not value else list(value.values())
    else:
        raw = [value]
    items: list[Any] = []
    for item in raw:
        # The RU task example nests one more level: [{"0": {...}}].
        if isinstance(item, dict) and "id" not in item and item:
            inner = list(item.values())
            if all(isinstance(i, dict) for i in inner) and all(k.isdigit() for k in item):
                items.extend(inner)
                continue
        if isinstance(item, list):
            items.extend(item)
            continue
        items.append(item)
    return items


def to_int(value: Any) -> int | None:
    """amoCRM ids arrive as strings; anything that is not a positive integer is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
        return number if number > 0 else None
    return None


def _modified(item: dict[str, Any]) -> str | None:
    # Tasks send last_modified as "YYYY-MM-DD HH:MM:SS" and updated_at as unix; prefer unix.
    for key in ("updated_at", "last_modified"):
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:32]
    return None


def _entity_events(entity: str, action: str, value: Any) -> list[Event]:
    events: list[Event] = []
    for item in _items(value):
        if isinstance(item, str):
            # RU wording of a delete: {entity: {delete: "id"}}.
            events.append(Event(entity, action, to_int(item), None))
            continue
        if not isinstance(item, dict):
            continue
        kind = entity
        if entity == "contacts" and str(item.get("type", "")).lower() == "company":
            kind = "companies"
        if action == "note":
            raw_note = item.get("note")
            note = raw_note if isinstance(raw_note, dict) else {}
            entity_id = to_int(note.get("element_id")) or to_int(item.get("element_id"))
            # Two notes on one entity can share a second: the note id keeps their keys apart.
            note_id = to_int(note.get("id"))
            stamp = _modified(note)
            modified = f"{note_id}:{stamp}" if note_id and stamp else (stamp or note.get("id"))
            events.append(Event(kind, action, entity_id, modified, item))
            continue
        events.append(Event(kind, action, to_int(item.get("id")), _modified(item), item))
    return events


def _unsorted_events(action: str, value: Any) -> list[Event]:
    """Unsorted add/update name no lead id; an accepted or declined item names its leads."""
    events: list[Event] = []
    for item in _items(value):
        if not isinstance(item, dict):
            continue
        events.append(Event("unsorted", action, None, _modified(item), item))
        if action != "delete":
            continue
        outcome = str(item.get("action", "")).lower()
        result = item.get(f"{outcome}_result")
        if not isinstance(result, dict):
            continue
        # Accepted: the leads/contacts now exist for real; declined: the leads are gone.
        derived_action = "update" if outcome == "accept" else "delete"
        for entity in ("leads", "contacts"):
            for raw_id in _items(result.get(entity, [])):
                entity_id = to_int(raw_id)
                if entity_id is not None:
                    events.append(Event(entity, derived_action, entity_id, None))
    return events


def extract_events(form: dict[str, Any]) -> tuple[list[Event], list[str]]:
    """Every documented event in a decoded body, plus the top-level keys we do not handle."""
    events: list[Event] = []
    unknown: list[str] = []
    for key, actions in form.items():
        if key == "account":
            continue
        entity = ENTITY_KEYS.get(key)
        if entity is None:
            unknown.append(key)
            continue
        if not isinstance(actions, dict):
            unknown.append(key)
            continue
        for action, value in actions.items():
            if action not in ACTIONS:
                unknown.append(f"{key}[{action}]")
                continue
            if entity == "unsorted":
                events.extend(_unsorted_events(action, value))
            else:
                events.extend(_entity_events(entity, action, value))
    return events, unknown


def parse_delivery(body: bytes) -> Delivery:
    """Decode a raw body and list its events; unknown keys are reported, never fatal."""
    form = decode_form(body)
    raw_account = form.get("account")
    account = raw_account if isinstance(raw_account, dict) else {}
    account_id = account.get("id") if isinstance(account.get("id"), str) else None
    subdomain = account.get("subdomain") if isinstance(account.get("subdomain"), str) else None
    events, unknown = extract_events(form)
    if unknown:
        documented = [u for u in unknown if u.split("[", 1)[0] in KNOWN_IGNORED]
        undocumented = [u for u in unknown if u not in documented]
        if undocumented:
            logger.info("webhook body has keys we do not handle: %s", ", ".join(undocumented[:10]))
    return Delivery(form, account_id, subdomain, events, unknown)


def custom_field_values(field_: dict[str, Any]) -> list[dict[str, str]]:
    """`custom_fields[].values` in any documented shape → [{"value": ..., "enum": ...}].

    Shapes: ["1"], [{"value": "x", "enum": "1"}], a bare {"value": "2", "enum": "5"}, or
    {"0": {...}} before list conversion.
    """
    values = field_.get("values")
    if values is None:
        return []
    if isinstance(values, dict) and ("value" in values or "enum" in values):
        values = [values]
    elif isinstance(values, dict):
        values = list(values.values())
    elif not isinstance(values, list):
        values = [values]
    out: list[dict[str, str]] = []
    for value in values:
        if isinstance(value, dict):
            entry = {"value": str(value.get("value", ""))}
            if "enum" in value:
                entry["enum"] = str(value["enum"])
            out.append(entry)
        elif isinstance(value, str):
            out.append({"value": value})
    return out
