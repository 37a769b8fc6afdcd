"""amoCRM API v4 entities (decoded JSON) → rows of the mirror tables."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from crm_app.amocrm.fields import EMAIL, PHONE, normalize_email, normalize_phone

Row = dict[str, Any]

# Note sync entities → the amoCRM entity type whose notes they list (one table, told apart by
# entity_type).
NOTE_SCOPES: dict[str, str] = {"lead_notes": "leads", "contact_notes": "contacts"}

# The Telegram ID lives in a user-made text field; accounts name it differently. Its code is
# set only when an integration created the field (ours and the sandbox use TELEGRAM_ID).
TELEGRAM_CODES = ("TELEGRAM_ID", "TELEGRAMID", "TG_ID")
TELEGRAM_NAMES = ("telegram id", "telegram_id", "telegramid", "tg id", "id telegram", "телеграм id")


def as_int(value: Any) -> int | None:
    """An int from amoCRM's ints, numeric strings (webhooks) or None/""/garbage → None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _text(value: Any, limit: int = 255) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text[:limit] if text else None


_NOT_RAW = frozenset({"_links", "custom_fields_values"})


def _raw(item: Mapping[str, Any]) -> dict[str, Any]:
    # _links (here and on embedded references) only repeat the account origin and the id, and
    # custom_fields_values has its own column: storing them doubled the bytes written per
    # contact. Everything else is kept.
    raw = {k: v for k, v in item.items() if k not in _NOT_RAW}
    embedded = raw.get("_embedded")
    if isinstance(embedded, Mapping):
        raw["_embedded"] = {
            key: [
                {k: v for k, v in ref.items() if k != "_links"} if isinstance(ref, Mapping) else ref
                for ref in refs
            ]
            if isinstance(refs, list)
            else refs
            for key, refs in embedded.items()
        }
    return raw


def _entity_row(owner_id: int, item: Mapping[str, Any], synced_at: datetime) -> Row:
    """The columns every mirrored contact, lead and task row starts with."""
    return {
        "owner_id": owner_id,
        "id": as_int(item.get("id")),
        "created_at": as_int(item.get("created_at")),
        "updated_at": as_int(item.get("updated_at")),
        "raw": _raw(item),
        "synced_at": synced_at,
    }


def _embedded(item: Mapping[str, Any]) -> Mapping[str, Any]:
    emb = item.get("_embedded")
    return emb if isinstance(emb, Mapping) else {}


def _custom_fields(item: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    values = item.get("custom_fields_values")
    return values if isinstance(values, list) else None


def _is_telegram(field: Mapping[str, Any]) -> bool:
    code = str(field.get("field_code") or field.get("code") or "").upper()
    if code in TELEGRAM_CODES:
        return True
    name = str(field.get("field_name") or field.get("name") or "").strip().lower()
    return name in TELEGRAM_NAMES


# "+7 (999) 555-11-22" / "8 999 555 11 22": the shapes almost every Russian number takes.
# They skip the phonenumbers parser (about 30 µs a number, the slowest step of a sync); a unit
# test checks the shortcut against normalize_phone. Everything else takes the full parser.
_PHONE_JUNK = re.compile(r"[\s()\-]")
_RU_PHONE = re.compile(r"(?:\+7|8)([3-9]\d{9})")


def fast_normalize_phone(raw: str, region: str = "RU") -> str | None:
    """normalize_phone with a shortcut for the common Russian formats."""
    if region == "RU":
        match = _RU_PHONE.fullmatch(_PHONE_JUNK.sub("", raw))
        if match:
            return "+7" + match.group(1)
    return normalize_phone(raw, region)


def _field_strings(field: Mapping[str, Any]) -> list[str]:
    raw = field.get("values")
    if isinstance(raw, Mapping):
        raw = list(raw.values()) if all(isinstance(v, Mapping) for v in raw.values()) else [raw]
    if not isinstance(raw, list):
        return []
    out = []
    for value in raw:
        text = value.get("value") if isinstance(value, Mapping) else value
        if text is not None:
            text = str(text).strip()
            if text:
                out.append(text)
    return out


def contact_details(
    item: Mapping[str, Any], region: str = "RU"
) -> tuple[list[str], list[str], str | None]:
    """(E.164 phones, lower-cased e-mails, Telegram ID) in one pass over the custom fields.

    Only the first PHONE and the first EMAIL field count, as in ``get_phones``/``get_emails``.
    """
    fields = item.get("custom_fields_values")
    if fields is None:
        fields = item.get("custom_fields")
    if isinstance(fields, Mapping):  # PHP-style {"0": {...}} from a decoded webhook
        fields = list(fields.values())
    phones: list[str] = []
    emails: list[str] = []
    telegram: str | None = None
    if not isinstance(fields, list):
        return phones, emails, telegram
    seen_phone = seen_email = False
    for field in fields:
        if not isinstance(field, Mapping):
            continue
        code = field.get("field_code", field.get("code"))
        code = code.upper() if isinstance(code, str) else ""
        if code == PHONE and not seen_phone:
            seen_phone = True
            for raw in _field_strings(field):
                # Unparseable numbers are kept as typed: dropping them would hide data.
                value = fast_normalize_phone(raw, region) or raw[:32]
                if value not in phones:
                    phones.append(value)
        elif code == EMAIL and not seen_email:
            seen_email = True
            for raw in _field_strings(field):
                email = normalize_email(raw)
                if email and email[:255] not in emails:
                    emails.append(email[:255])
        elif telegram is None and code not in (PHONE, EMAIL) and _is_telegram(field):
            values = _field_strings(field)
            telegram = values[0][:64] if values else None
    return phones, emails, telegram


def telegram_id(item: Mapping[str, Any]) -> str | None:
    """The contact's Telegram user id from its custom fields, if it has one."""
    return contact_details(item)[2]


def map_contact(
    owner_id: int, item: Mapping[str, Any], synced_at: datetime, region: str = "RU"
) -> Row:
    """A crm_contacts row: names, E.164 phones, lower-cased e-mails, Telegram ID, raw JSON."""
    phones, emails, telegram = contact_details(item, region)
    first_phone = next((p for p in phones if p.startswith("+")), None)
    return {
        **_entity_row(owner_id, item, synced_at),
        "name": _text(item.get("name")),
        "first_name": _text(item.get("first_name")),
        "last_name": _text(item.get("last_name")),
        "responsible_user_id": as_int(item.get("responsible_user_id")),
        "phone": first_phone,
        "email": emails[0] if emails else None,
        "phones": phones,
        "emails": emails,
        "telegram_id": telegram,
        "custom_fields_values": _custom_fields(item),
    }


def lead_contacts(item: Mapping[str, Any]) -> tuple[list[int], int | None] | None:
    """(contact ids, main contact id) from ``_embedded.contacts``; None when not embedded.

    amoCRM embeds contacts only for ``with=contacts``; a lead fetched without it must not wipe
    the links we already know.
    """
    contacts = _embedded(item).get("contacts")
    if not isinstance(contacts, list):
        return None
    ids: list[int] = []
    main: int | None = None
    for ref in contacts:
        if not isinstance(ref, Mapping):
            continue
        cid = as_int(ref.get("id"))
        if cid is None or cid in ids:
            continue
        ids.append(cid)
        if main is None and ref.get("is_main") in (True, 1, "1", "true"):
            main = cid
    if main is None and ids:
        main = ids[0]
    return ids, main


def map_lead(
    owner_id: int, item: Mapping[str, Any], synced_at: datetime, region: str = "RU"
) -> Row:
    """A crm_leads row: pipeline, status, price, responsible user, linked contacts, raw JSON."""
    row: Row = {
        **_entity_row(owner_id, item, synced_at),
        "name": _text(item.get("name")),
        "price": as_int(item.get("price")),
        "pipeline_id": as_int(item.get("pipeline_id")),
        "status_id": as_int(item.get("status_id")),
        "responsible_user_id": as_int(item.get("responsible_user_id")),
        "closed_at": as_int(item.get("closed_at")),
        "custom_fields_values": _custom_fields(item),
    }
    tags = _embedded(item).get("tags")
    if isinstance(tags, list):
        names = [str(t.get("name")) for t in tags if isinstance(t, Mapping) and t.get("name")]
        row["tag_names"] = " ".join(names) or None
    links = lead_contacts(item)
    if links is not None:
        row["contact_ids"], row["main_contact_id"] = links
    return row


def _result_text(value: Any) -> str | None:
    # amoCRM sends [] when a task has no result, {"text": ...} when it has one.
    if isinstance(value, Mapping):
        text = value.get("text")
        return str(text) if text not in (None, "") else None
    return None


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def map_task(
    owner_id: int, item: Mapping[str, Any], synced_at: datetime, region: str = "RU"
) -> Row:
    """A crm_tasks row: text, type, the entity it hangs on, due time, completion, raw JSON."""
    return {
        **_entity_row(owner_id, item, synced_at),
        "text": str(item["text"]) if item.get("text") is not None else None,
        "task_type_id": as_int(item.get("task_type_id")),
        "entity_type": _text(item.get("entity_type"), 32),
        "entity_id": as_int(item.get("entity_id")),
        "responsible_user_id": as_int(item.get("responsible_user_id")),
        "is_completed": _bool(item.get("is_completed")),
        "complete_till": as_int(item.get("complete_till")),
        "result_text": _result_text(item.get("result")),
    }


def map_note(entity_type: str, owner_id: int, item: Mapping[str, Any], synced_at: datetime) -> Row:
    """A crm_notes row of a lead's or contact's note (``entity_type`` = leads | contacts)."""
    params = item.get("params")
    params = dict(params) if isinstance(params, Mapping) else {}
    text = params.get("text")
    return {
        "owner_id": owner_id,
        "id": as_int(item.get("id")),
        "entity_type": entity_type,
        "entity_id": as_int(item.get("entity_id")),
        "note_type": _text(item.get("note_type"), 64),
        "text": str(text) if text not in (None, "") else None,
        "params": params,
        "responsible_user_id": as_int(item.get("responsible_user_id")),
        "created_by": as_int(item.get("created_by")),
        "created_at": as_int(item.get("created_at")),
        "updated_at": as_int(item.get("updated_at")),
        "synced_at": synced_at,
    }


def map_lead_note(
    owner_id: int, item: Mapping[str, Any], synced_at: datetime, region: str = "RU"
) -> Row:
    return map_note("leads", owner_id, item, synced_at)


def map_contact_note(
    owner_id: int, item: Mapping[str, Any], synced_at: datetime, region: str = "RU"
) -> Row:
    return map_note("contacts", owner_id, item, synced_at)


Mapper = Callable[[int, Mapping[str, Any], datetime, str], Row]
MAPPERS: dict[str, Mapper] = {
    "contacts": map_contact,
    "leads": map_lead,
    "tasks": map_task,
    "lead_notes": map_lead_note,
    "contact_notes": map_contact_note,
}


def map_items(
    entity: str, owner_id: int, items: list[dict[str, Any]], synced_at: datetime, region: str = "RU"
) -> list[Row]:
    """Map a page of items, dropping anything without a usable id."""
    mapper = MAPPERS[entity]
    rows = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        row = mapper(owner_id, item, synced_at, region)
        if row["id"] is not None and row["id"] > 0:
            rows.append(row)
    return rows


def map_pipeline(owner_id: int, item: Mapping[str, Any], synced_at: datetime) -> Row:
    return {
        "owner_id": owner_id,
        "id": as_int(item.get("id")),
        "name": _text(item.get("name")) or "",
        "sort": as_int(item.get("sort")) or 0,
        "is_main": _bool(item.get("is_main")),
        "is_archive": _bool(item.get("is_archive")),
        "synced_at": synced_at,
    }


def map_status(owner_id: int, pipeline_id: int, item: Mapping[str, Any]) -> Row:
    return {
        "owner_id": owner_id,
        "pipeline_id": pipeline_id,
        "id": as_int(item.get("id")),
        "name": _text(item.get("name")) or "",
        "sort": as_int(item.get("sort")) or 0,
        "color": _text(item.get("color"), 16),
        "type": as_int(item.get("type")) or 0,
    }


def map_user(owner_id: int, item: Mapping[str, Any], synced_at: datetime) -> Row:
    raw_rights = item.get("rights")
    rights = raw_rights if isinstance(raw_rights, Mapping) else {}
    active = rights.get("is_active")
    return {
        "owner_id": owner_id,
        "id": as_int(item.get("id")),
        "name": _text(item.get("name")),
        "email": _text(item.get("email")),
        "is_admin": _bool(rights.get("is_admin")),
        "is_active": True if active is None else _bool(active),
        "synced_at": synced_at,
    }
