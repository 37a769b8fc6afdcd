"""Input checks for writes: typed scalars, custom field values, tags, with amoCRM error codes."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeGuard

from crm_app.sandbox.store import Account, CustomField

Errors = list[dict[str, str]]

NOT_CHOICE = "The value you selected is not a valid choice."
NOT_BLANK = "This value should not be blank."


def err(errs: Errors, code: str, path: str, detail: str) -> None:
    errs.append({"code": code, "path": path, "detail": detail})


def type_error(errs: Errors, path: str, kind: str) -> None:
    err(errs, "InvalidType", path, f"This value should be of type {kind}.")


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def get_int(
    item: dict[str, Any], key: str, errs: Errors, path: str = "", nullable: bool = False
) -> Any:
    """The value if it is an int (JSON numbers only, like amoCRM's strict validator)."""
    value = item.get(key)
    if value is None:
        if key in item and not nullable:
            type_error(errs, path + key, "int")
        return None
    if not is_int(value):
        type_error(errs, path + key, "int")
        return None
    return value


def get_str(item: dict[str, Any], key: str, errs: Errors, path: str = "") -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        type_error(errs, path + key, "string")
        return None
    return value


def get_user(account: Account, item: dict[str, Any], key: str, errs: Errors, path: str = "") -> Any:
    value = get_int(item, key, errs, path)
    if value is not None and account.user(value) is None:
        err(errs, "NotSupportedChoice", path + key, NOT_CHOICE)
        return None
    return value


def parse_custom_fields(
    account: Account, entity: str, raw: Any, errs: Errors, existing: Any, path: str = ""
) -> Any:
    """Merge `custom_fields_values` into the stored values; empty `values` clear a field."""
    base = f"{path}custom_fields_values"
    if not isinstance(raw, list):
        type_error(errs, base, "array")
        return existing
    current = dict(existing or ())
    for i, item in enumerate(raw):
        where = f"{base}.{i}"
        if not isinstance(item, dict):
            type_error(errs, where, "object")
            continue
        field = None
        if "field_id" in item:
            field = account.field_by_id(entity, item["field_id"])
            if field is None:
                err(errs, "NotSupportedChoice", f"{where}.field_id", NOT_CHOICE)
                continue
        elif "field_code" in item:
            field = account.field_by_code(entity, item["field_code"])
            if field is None:
                err(errs, "NotSupportedChoice", f"{where}.field_code", NOT_CHOICE)
                continue
        else:
            err(errs, "NotBlank", f"{where}.field_id", NOT_BLANK)
            continue
        values = item.get("values")
        if values is None or values == []:
            current.pop(field.id, None)
            continue
        if not isinstance(values, list):
            type_error(errs, f"{where}.values", "array")
            continue
        parsed = []
        for j, value in enumerate(values):
            one = _parse_value(field, value, errs, f"{where}.values.{j}")
            if one is not None:
                parsed.append(one)
        if parsed:
            current[field.id] = tuple(parsed)
        else:
            current.pop(field.id, None)
    return tuple(current.items()) or None


def _parse_value(
    field: CustomField, value: Any, errs: Errors, where: str
) -> tuple[Any, Any] | None:
    if not isinstance(value, dict):
        type_error(errs, where, "object")
        return None
    raw = value.get("value")
    if field.enums is not None:
        enum = None
        if "enum_id" in value and value["enum_id"] is not None:
            enum = field.enum_by_id(value["enum_id"])
            if enum is None:
                err(errs, "NotSupportedChoice", f"{where}.enum_id", NOT_CHOICE)
                return None
        elif value.get("enum_code") is not None:
            enum = field.enum_by_code(value["enum_code"])
            if enum is None:
                err(errs, "NotSupportedChoice", f"{where}.enum_code", NOT_CHOICE)
                return None
        if field.type == "multitext":
            if raw in (None, ""):
                err(errs, "NotBlank", f"{where}.value", NOT_BLANK)
                return None
            enum = enum or (field.enums[0] if field.enums else None)  # amoCRM defaults to WORK
            return str(raw), enum.id if enum else None
        if enum is None and raw is not None:
            enum = field.enum_by_value(raw)
        if enum is None:
            err(errs, "NotSupportedChoice", f"{where}.value", NOT_CHOICE)
            return None
        return enum.value, enum.id
    if field.type == "checkbox":
        if not isinstance(raw, bool):
            type_error(errs, f"{where}.value", "bool")
            return None
        return raw, None
    if field.type in ("date", "date_time", "birthday"):
        stamp = _timestamp(raw)
        if stamp is None:
            type_error(errs, f"{where}.value", "int")
            return None
        return stamp, None
    if raw is None or isinstance(raw, (dict, list)) or raw == "":
        err(errs, "NotBlank", f"{where}.value", NOT_BLANK)
        return None
    if field.type == "numeric" and not _numeric(raw):
        type_error(errs, f"{where}.value", "numeric")
        return None
    return (str(raw).lower() if isinstance(raw, bool) else str(raw)), None


def _numeric(raw: Any) -> bool:
    try:
        float(str(raw))
    except ValueError:
        return False
    return True


def _timestamp(raw: Any) -> int | None:
    """Unix time or RFC 3339, both accepted on input (https://www.amocrm.ru/developers/content/api/recommendations)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        if raw.isdigit():
            return int(raw)
        try:
            return int(dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return None
    return None


def apply_tags(
    account: Account, entity: str, current: Any, item: dict[str, Any], errs: Errors
) -> tuple[int, ...]:
    """`_embedded.tags` replaces (null clears), then `tags_to_add` / `tags_to_delete` apply."""
    tags = list(current or ())
    embedded = item.get("_embedded")
    if isinstance(embedded, dict) and "tags" in embedded:
        if embedded["tags"] is None:
            tags = []
        elif isinstance(embedded["tags"], list):
            tags = _resolve(account, entity, embedded["tags"], errs, "_embedded.tags")
        else:
            type_error(errs, "_embedded.tags", "array")
    if "tags_to_add" in item:
        for tag in _resolve(account, entity, item["tags_to_add"], errs, "tags_to_add"):
            if tag not in tags:
                tags.append(tag)
    if "tags_to_delete" in item:
        raw = item["tags_to_delete"]
        drop_ids = set()
        for k, tag in enumerate(raw if isinstance(raw, list) else []):
            if isinstance(tag, dict) and is_int(tag.get("id")):
                drop_ids.add(tag["id"])
            elif isinstance(tag, dict) and isinstance(tag.get("name"), str):
                found = account.tags.get(entity, {}).get(tag["name"])
                if found is not None:
                    drop_ids.add(found)
            else:
                err(errs, "NotBlank", f"tags_to_delete.{k}", NOT_BLANK)
        tags = [t for t in tags if t not in drop_ids]
    return tuple(tags)


def _resolve(account: Account, entity: str, raw: Any, errs: Errors, where: str) -> list[int]:
    if not isinstance(raw, list):
        type_error(errs, where, "array")
        return []
    out: list[int] = []
    for k, tag in enumerate(raw):
        if isinstance(tag, dict) and is_int(tag.get("id")):
            if tag["id"] not in account.tag_names:
                err(errs, "NotSupportedChoice", f"{where}.{k}.id", NOT_CHOICE)
                continue
            out.append(tag["id"])
        elif isinstance(tag, dict) and isinstance(tag.get("name"), str) and tag["name"].strip():
            out.append(account.tag_id(entity, tag["name"].strip()))
        else:
            err(errs, "NotBlank", f"{where}.{k}", NOT_BLANK)
    return out
