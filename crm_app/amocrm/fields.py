"""Reading and writing amoCRM ``custom_fields_values`` (phones, e-mails, custom fields)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import phonenumbers

PHONE = "PHONE"
EMAIL = "EMAIL"
PHONE_ENUM_CODES: tuple[str, ...] = ("WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER")
EMAIL_ENUM_CODES: tuple[str, ...] = ("WORK", "PRIV", "OTHER")


# -- reading ------------------------------------------------------------------------------------


def _fields(entity: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    # API v4 uses custom_fields_values (null when empty); webhooks use custom_fields.
    raw = entity.get("custom_fields_values")
    if raw is None:
        raw = entity.get("custom_fields")
    if isinstance(raw, Mapping):  # PHP-style {"0": {...}} from a decoded form body
        raw = list(raw.values())
    if not isinstance(raw, list):
        return []
    return [f for f in raw if isinstance(f, Mapping)]


def find_field(
    entity: Mapping[str, Any], *, code: str | None = None, field_id: int | str | None = None
) -> Mapping[str, Any] | None:
    """The first custom field of ``entity`` with this ``code`` (e.g. PHONE) or ``field_id``."""
    if code is None and field_id is None:
        raise ValueError("give code or field_id")
    for field in _fields(entity):
        if code is not None:
            field_code = field.get("field_code", field.get("code"))
            if isinstance(field_code, str) and field_code.upper() == code.upper():
                return field
        if field_id is not None:
            fid = field.get("field_id", field.get("id"))
            if fid is not None and str(fid) == str(field_id):
                return field
    return None


def field_values(
    entity: Mapping[str, Any], *, code: str | None = None, field_id: int | str | None = None
) -> list[dict[str, Any]]:
    """The field's values as dicts (``{"value": ..., "enum_code"/"enum"/"enum_id": ...}``).

    Webhooks send values as a list of strings, a list of objects or a bare object; all three
    come back as a list of dicts.
    """
    field = find_field(entity, code=code, field_id=field_id)
    if field is None:
        return []
    raw = field.get("values")
    if isinstance(raw, Mapping):
        raw = list(raw.values()) if all(isinstance(v, Mapping) for v in raw.values()) else [raw]
    if not isinstance(raw, list):
        return []
    out: list[dict[str, Any]] = []
    for item in raw:
        if isinstance(item, Mapping):
            out.append(dict(item))
        elif item is not None:
            out.append({"value": item})
    return out


def field_value(
    entity: Mapping[str, Any],
    *,
    code: str | None = None,
    field_id: int | str | None = None,
    default: Any = None,
) -> Any:
    """The first value of a custom field, or ``default``."""
    values = field_values(entity, code=code, field_id=field_id)
    return values[0].get("value", default) if values else default


def value_enum_code(value: Mapping[str, Any]) -> str | None:
    """A value's enum code (WORK, MOB, ...): ``enum_code``, or ``enum`` when it is not an id."""
    code = value.get("enum_code")
    if isinstance(code, str) and code:
        return code
    # The RU docs show "enum": "WORK"; webhooks put the numeric enum id in "enum".
    enum = value.get("enum")
    if isinstance(enum, str) and enum and not enum.isdigit():
        return enum
    return None


def _strings(values: list[dict[str, Any]]) -> list[str]:
    out = []
    for v in values:
        text = v.get("value")
        if text is not None and str(text).strip():
            out.append(str(text).strip())
    return out


def get_phones(entity: Mapping[str, Any]) -> list[str]:
    """All PHONE values of a contact (or company) as stored, in order."""
    return _strings(field_values(entity, code=PHONE))


def get_emails(entity: Mapping[str, Any]) -> list[str]:
    """All EMAIL values of a contact (or company) as stored, in order."""
    return _strings(field_values(entity, code=EMAIL))


def first_phone(entity: Mapping[str, Any]) -> str | None:
    """The first PHONE value, or None."""
    phones = get_phones(entity)
    return phones[0] if phones else None


def first_email(entity: Mapping[str, Any]) -> str | None:
    """The first EMAIL value, or None."""
    emails = get_emails(entity)
    return emails[0] if emails else None


# -- phones and e-mails ---------------------------------------------------------------------------


def _parse_phone(raw: object, default_region: str) -> phonenumbers.PhoneNumber | None:
    if not isinstance(raw, str) or not raw.strip():
        return None
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        return None
    # "Possible" (length-based) rather than "valid": amoCRM accounts hold numbers from ranges
    # newer than the metadata, and rejecting them would hide real duplicates.
    return number if phonenumbers.is_possible_number(number) else None


def normalize_phone(raw: object, default_region: str = "RU") -> str | None:
    """E.164 form of a phone (``8 (999) 555-11-22`` → ``+79995551122``), or None."""
    number = _parse_phone(raw, default_region)
    if number is None:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_search_query(raw: object, default_region: str = "RU") -> str | None:
    """The digits to send as ``query`` when searching a phone: the national number.

    amoCRM's ``query`` is a substring match over stored text, so ``+7999…`` misses ``8999…``;
    the national significant number matches both. The caller checks the PHONE field of each
    hit (https://www.amocrm.ru/developers/content/crm_platform/contacts-api, ``query``).
    """
    number = _parse_phone(raw, default_region)
    if number is None:
        return None
    return phonenumbers.national_significant_number(number)


def normalize_email(raw: object) -> str | None:
    """A trimmed, lower-cased e-mail for comparisons, or None if it has no ``@``."""
    if not isinstance(raw, str):
        return None
    email = raw.strip().lower()
    return email if "@" in email and " " not in email else None


# -- writing ------------------------------------------------------------------------------------


def _as_list(values: str | Iterable[str]) -> list[str]:
    items = [values] if isinstance(values, str) else list(values)
    return [v.strip() for v in items if isinstance(v, str) and v.strip()]


def phone_field(phones: str | Iterable[str], enum_code: str = "WORK") -> dict[str, Any]:
    """A ``custom_fields_values`` item writing PHONE values (``enum_code`` WORK, MOB, ...)."""
    if enum_code not in PHONE_ENUM_CODES:
        raise ValueError(f"phone enum_code must be one of {', '.join(PHONE_ENUM_CODES)}")
    return {
        "field_code": PHONE,
        "values": [{"value": p, "enum_code": enum_code} for p in _as_list(phones)],
    }


def email_field(emails: str | Iterable[str], enum_code: str = "WORK") -> dict[str, Any]:
    """A ``custom_fields_values`` item writing EMAIL values (``enum_code`` WORK, PRIV, OTHER)."""
    if enum_code not in EMAIL_ENUM_CODES:
        raise ValueError(f"email enum_code must be one of {', '.join(EMAIL_ENUM_CODES)}")
    return {
        "field_code": EMAIL,
        "values": [{"value": e, "enum_code": enum_code} for e in _as_list(emails)],
    }


def text_field(
    value: Any, *, field_id: int | None = None, code: str | None = None
) -> dict[str, Any]:
    """A ``custom_fields_values`` item with one plain value (text, numeric, checkbox, date)."""
    return {**_field_key(field_id, code), "values": [{"value": value}]}


def enum_field(
    *,
    field_id: int | None = None,
    code: str | None = None,
    enum_id: int | None = None,
    enum_code: str | None = None,
) -> dict[str, Any]:
    """A select/radiobutton item chosen by ``enum_id`` or ``enum_code``."""
    if (enum_id is None) == (enum_code is None):
        raise ValueError("give exactly one of enum_id or enum_code")
    value: dict[str, Any] = (
        {"enum_id": enum_id} if enum_id is not None else {"enum_code": enum_code}
    )
    return {**_field_key(field_id, code), "values": [value]}


def _field_key(field_id: int | None, code: str | None) -> dict[str, Any]:
    if (field_id is None) == (code is None):
        raise ValueError("give exactly one of field_id or code")
    return {"field_id": int(field_id)} if field_id is not None else {"field_code": code}


def contact_fields(
    phone: str | Iterable[str] | None = None,
    email: str | Iterable[str] | None = None,
    extra: Iterable[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """``custom_fields_values`` for a contact: phones, e-mails, then any extra items."""
    items: list[dict[str, Any]] = []
    if phone and _as_list(phone):
        items.append(phone_field(phone))
    if email and _as_list(email):
        items.append(email_field(email))
    items.extend(dict(e) for e in extra)
    return items
