"""Reading and writing custom_fields_values; phone normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crm_app.amocrm.fields import (
    contact_fields,
    email_field,
    enum_field,
    field_value,
    field_values,
    find_field,
    first_email,
    first_phone,
    get_emails,
    get_phones,
    normalize_email,
    normalize_phone,
    phone_field,
    phone_search_query,
    text_field,
    value_enum_code,
)

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "amocrm"

CONTACT = {
    "id": 3,
    "custom_fields_values": [
        {
            "field_id": 3,
            "field_name": "Телефон",
            "field_code": "PHONE",
            "field_type": "multitext",
            "values": [
                {"value": "+7 (999) 555-11-22", "enum_id": 1, "enum": "WORK"},
                {"value": "89995553344", "enum_id": 2, "enum_code": "MOB"},
            ],
        },
        {
            "field_id": 5,
            "field_code": "EMAIL",
            "values": [{"value": "Ivan@Example.com", "enum_code": "WORK"}],
        },
        {
            "field_id": 700,
            "field_name": "Источник",
            "field_code": None,
            "values": [{"value": "tg"}],
        },
    ],
}


def test_read_phones_and_emails() -> None:
    assert get_phones(CONTACT) == ["+7 (999) 555-11-22", "89995553344"]
    assert first_phone(CONTACT) == "+7 (999) 555-11-22"
    assert get_emails(CONTACT) == ["Ivan@Example.com"]
    assert first_email(CONTACT) == "Ivan@Example.com"


def test_enum_code_or_enum() -> None:
    values = field_values(CONTACT, code="phone")
    assert [value_enum_code(v) for v in values] == ["WORK", "MOB"]
    assert value_enum_code({"value": "x", "enum": "311321"}) is None  # a webhook enum id


def test_field_by_id_and_code() -> None:
    assert field_value(CONTACT, field_id=700) == "tg"
    assert field_value(CONTACT, field_id="700") == "tg"
    assert find_field(CONTACT, code="EMAIL")["field_id"] == 5
    assert field_value(CONTACT, field_id=999, default="none") == "none"
    with pytest.raises(ValueError):
        find_field(CONTACT)


def test_empty_and_null_fields() -> None:
    assert get_phones({"custom_fields_values": None}) == []
    assert get_phones({}) == []
    assert first_email({"custom_fields_values": []}) is None


def test_webhook_shapes() -> None:
    hook = {
        "custom_fields": [
            {
                "id": "575809",
                "name": "Телефон",
                "code": "PHONE",
                "values": [{"value": "+76665554433", "enum": "311321"}],
            },
            {"id": "427183", "name": "Checkbox", "values": ["1"]},
            {"id": "99", "name": "Radio", "values": {"value": "2", "enum": "566642"}},
        ]
    }
    assert get_phones(hook) == ["+76665554433"]
    assert field_value(hook, field_id=427183) == "1"
    assert field_values(hook, field_id=99) == [{"value": "2", "enum": "566642"}]


def test_documented_sample_contact() -> None:
    contact = json.loads((SAMPLES / "contact_get_by_id.json").read_text())
    assert get_phones(contact) == ["+79123"]
    assert value_enum_code(field_values(contact, code="PHONE")[0]) == "WORK"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+7 (999) 555-11-22", "+79995551122"),
        ("8 999 555 11 22", "+79995551122"),
        ("89995551122", "+79995551122"),
        ("9995551122", "+79995551122"),
        ("+1 650 253 0000", "+16502530000"),
        ("+44 20 7031 3000", "+442070313000"),
        ("", None),
        ("   ", None),
        ("not a phone", None),
        ("123", None),
        (None, None),
        (79995551122, None),
    ],
)
def test_normalize_phone(raw: object, expected: str | None) -> None:
    assert normalize_phone(raw) == expected


def test_phone_search_query_uses_national_digits() -> None:
    assert phone_search_query("+7 999 555-11-22") == "9995551122"
    assert phone_search_query("8 (999) 555-11-22") == "9995551122"
    assert phone_search_query("junk") is None


def test_normalize_email() -> None:
    assert normalize_email("  Ivan@Example.COM ") == "ivan@example.com"
    assert normalize_email("nope") is None
    assert normalize_email(None) is None


def test_builders() -> None:
    assert phone_field("+79995551122", "MOB") == {
        "field_code": "PHONE",
        "values": [{"value": "+79995551122", "enum_code": "MOB"}],
    }
    assert email_field(["a@b.c", " "]) == {
        "field_code": "EMAIL",
        "values": [{"value": "a@b.c", "enum_code": "WORK"}],
    }
    assert text_field("utm_source=tg", field_id=700) == {
        "field_id": 700,
        "values": [{"value": "utm_source=tg"}],
    }
    assert enum_field(field_id=9, enum_id=3) == {"field_id": 9, "values": [{"enum_id": 3}]}
    assert enum_field(code="SRC", enum_code="TG") == {
        "field_code": "SRC",
        "values": [{"enum_code": "TG"}],
    }
    assert contact_fields(phone=None, email="") == []
    assert [f["field_code"] for f in contact_fields("+7999", "a@b.c")] == ["PHONE", "EMAIL"]
    with pytest.raises(ValueError):
        phone_field("1", "PRIV")
    with pytest.raises(ValueError):
        email_field("a@b.c", "MOB")
    with pytest.raises(ValueError):
        enum_field(field_id=1)
    with pytest.raises(ValueError):
        text_field("x")
