"""The PHP-style form parser and event extraction, on every documented body shape."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import pytest

from crm_app.services.webhooks.parse import (
    MalformedBody,
    custom_field_values,
    decode_form,
    parse_delivery,
    split_key,
)
from tests.webhooks.conftest import SAMPLES, form

URLENCODED = sorted(p.name for p in SAMPLES.glob("webhook_*.urlencoded.txt"))


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        items = {k: _listify(v) for k, v in value.items()}
        if items and sorted(items) == [str(i) for i in range(len(items))]:
            return [items[str(i)] for i in range(len(items))]
        return items
    if isinstance(value, list):
        return [_listify(v) for v in value]
    return value


def _stringify(value: Any) -> Any:
    """The DP samples document numbers; on the wire every value is a string."""
    if isinstance(value, dict):
        return {k: _stringify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify(v) for v in value]
    return str(value)


def _jsonc(name: str) -> Any:
    text = (SAMPLES / name).read_text()
    return json.loads(re.sub(r"//[^\n]*", "", text))


def test_every_derived_sample_exists() -> None:
    assert len(URLENCODED) >= 5, URLENCODED


@pytest.mark.parametrize("name", URLENCODED)
def test_urlencoded_samples_decode_to_the_documented_structure(name: str) -> None:
    decoded = decode_form((SAMPLES / name).read_bytes())
    expected = json.loads((SAMPLES / name.replace(".urlencoded.txt", ".json")).read_text())
    assert decoded == _stringify(_listify(expected))


@pytest.mark.parametrize("name", URLENCODED)
def test_urlencoded_samples_match_their_key_listing(name: str) -> None:
    from urllib.parse import parse_qsl

    pairs = parse_qsl((SAMPLES / name).read_text().strip(), keep_blank_values=True)
    listed = [
        tuple(line.split("=", 1))
        for line in (SAMPLES / name.replace(".urlencoded.txt", ".keys.txt"))
        .read_text()
        .splitlines()
        if line.strip()
    ]
    assert pairs == listed


def test_lead_status_sample_events_and_cyrillic() -> None:
    delivery = parse_delivery((SAMPLES / "webhook_leads_status_amocrm.urlencoded.txt").read_bytes())
    [event] = delivery.events
    assert (event.entity, event.action, event.entity_id, event.modified) == (
        "leads",
        "status",
        25399013,
        "1413554372",
    )
    assert event.data["old_status_id"] == "7039101"
    fields = {f["id"]: custom_field_values(f) for f in event.data["custom_fields"]}
    assert fields["427661"] == [{"value": "Валера"}]
    assert fields["427183"] == [{"value": "1"}]


def test_contact_and_company_arrive_under_contacts() -> None:
    contact = parse_delivery((SAMPLES / "webhook_contacts_add_amocrm.urlencoded.txt").read_bytes())
    company = parse_delivery((SAMPLES / "webhook_company_add_amocrm.urlencoded.txt").read_bytes())
    assert [(e.entity, e.action, e.entity_id) for e in contact.events] == [
        ("contacts", "add", 10952709)
    ]
    assert [(e.entity, e.action, e.entity_id) for e in company.events] == [
        ("companies", "add", 10959143)
    ]
    [cf] = contact.events[0].data["custom_fields"]
    assert custom_field_values(cf) == [{"value": "+76665554433", "enum": "311321"}]
    assert contact.events[0].data["name"] == "Контакт"
    assert contact.events[0].data["linked_leads_id"] == {"7551167": {"ID": "7551167"}}


def test_task_update_with_the_docs_extra_nesting() -> None:
    structure = _jsonc("webhook_task_update_amocrm.jsonc")
    delivery = parse_delivery(form(structure))
    assert delivery.subdomain == "test"
    [event] = delivery.events
    assert (event.entity, event.action, event.entity_id) == ("tasks", "update", 11122233)
    # Tasks send dates as strings; without updated_at the string is the modification mark.
    assert event.modified == "2017-07-21 19:00:00"
    assert event.data["result"] == {"id": "155155155", "text": "Success"}


def test_task_add_raw_sample_parses() -> None:
    raw = (SAMPLES / "webhook_task_add_kommo.form.txt").read_text().strip()
    [event] = parse_delivery(raw.encode()).events
    assert (event.entity, event.action, event.entity_id, event.modified) == (
        "tasks",
        "add",
        1564671,
        "1726578449",
    )
    assert event.data["complete_till"] == "2025-10-02 20:59:00"


def test_unsorted_add_and_decline() -> None:
    added = parse_delivery(
        form(json.loads((SAMPLES / "webhook_unsorted_add_amocrm.json").read_text()))
    )
    assert [(e.entity, e.action, e.entity_id) for e in added.events] == [("unsorted", "add", None)]
    assert added.account_id == "1312313"
    declined = parse_delivery(
        form(json.loads((SAMPLES / "webhook_unsorted_delete_decline_amocrm.json").read_text()))
    )
    assert [(e.entity, e.action, e.entity_id) for e in declined.events] == [
        ("unsorted", "delete", None),
        ("leads", "delete", 2132111),
    ]
    accepted = parse_delivery(
        (SAMPLES / "webhook_unsorted_delete_accept_amocrm.urlencoded.txt").read_bytes()
    )
    assert [(e.entity, e.action, e.entity_id) for e in accepted.events][1:] == [
        ("leads", "update", 2132111),
        ("contacts", "update", 3454532),
    ]


# Shapes the webhook documentation describes, built as amoCRM sends them:
# https://www.amocrm.ru/developers/content/crm_platform/webhooks-format and
# https://developers.kommo.com/docs/webhooks-general
DOCUMENTED = [
    ({"leads": {"add": [{"id": "1", "name": "A", "last_modified": "10"}]}}, "leads", "add", 1),
    ({"leads": {"update": [{"id": "2", "updated_at": "11"}]}}, "leads", "update", 2),
    (
        {"leads": {"delete": [{"id": "3", "status_id": "142", "pipeline_id": "7"}]}},
        "leads",
        "delete",
        3,
    ),
    ({"leads": {"restore": [{"id": "4", "last_modified": "12"}]}}, "leads", "restore", 4),
    (
        {"leads": {"status": [{"id": "5", "old_status_id": "1", "status_id": "2"}]}},
        "leads",
        "status",
        5,
    ),
    (
        {"leads": {"responsible": [{"id": "6", "old_responsible_user_id": "1"}]}},
        "leads",
        "responsible",
        6,
    ),
    (
        {
            "leads": {
                "note": [
                    {"note": {"id": "90", "element_id": "7", "text": "Привет"}, "type": "lead"}
                ]
            }
        },
        "leads",
        "note",
        7,
    ),
    ({"contacts": {"update": [{"id": "8", "type": "contact"}]}}, "contacts", "update", 8),
    ({"contacts": {"delete": [{"id": "9", "type": "contact"}]}}, "contacts", "delete", 9),
    ({"contacts": {"restore": [{"id": "10", "type": "contact"}]}}, "contacts", "restore", 10),
    (
        {"contacts": {"responsible": [{"id": "11", "old_responsible_user_id": "3"}]}},
        "contacts",
        "responsible",
        11,
    ),
    ({"contacts": {"delete": [{"id": "12", "type": "company"}]}}, "companies", "delete", 12),
    ({"task": {"add": [{"id": "13", "element_id": "1", "element_type": "2"}]}}, "tasks", "add", 13),
    (
        {"task": {"update": [{"id": "14", "status": "1", "action_close": "1"}]}},
        "tasks",
        "update",
        14,
    ),
    ({"task": {"delete": [{"id": "15", "element_id": "1"}]}}, "tasks", "delete", 15),
    ({"leads": {"delete": "16"}}, "leads", "delete", 16),
    ({"leads": {"delete": ["17"]}}, "leads", "delete", 17),
    ({"leads": {"status": {"0": {"id": "18"}}}}, "leads", "status", 18),
]


@pytest.mark.parametrize(("payload", "entity", "action", "entity_id"), DOCUMENTED)
def test_documented_event_shapes(payload: dict, entity: str, action: str, entity_id: int) -> None:
    body = form({"account": {"subdomain": "demo", "id": "42"}, **payload})
    delivery = parse_delivery(body)
    assert (delivery.account_id, delivery.subdomain) == ("42", "demo")
    assert [(e.entity, e.action, e.entity_id) for e in delivery.events] == [
        (entity, action, entity_id)
    ]


def test_several_events_in_one_body() -> None:
    body = form(
        {
            "leads": {"update": [{"id": "1"}, {"id": "2"}], "status": [{"id": "1"}]},
            "task": {"add": [{"id": "3"}]},
        }
    )
    events = parse_delivery(body).events
    assert [(e.entity, e.action, e.entity_id) for e in events] == [
        ("leads", "update", 1),
        ("leads", "update", 2),
        ("leads", "status", 1),
        ("tasks", "add", 3),
    ]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1412380800"], [{"value": "1412380800"}]),
        ([{"value": "x", "enum": "5"}], [{"value": "x", "enum": "5"}]),
        ({"value": "2", "enum": "566642"}, [{"value": "2", "enum": "566642"}]),
        ({"0": {"value": "a"}, "1": {"value": "b"}}, [{"value": "a"}, {"value": "b"}]),
        ("solo", [{"value": "solo"}]),
        (None, []),
    ],
)
def test_custom_field_value_shapes(values: Any, expected: list) -> None:
    assert custom_field_values({"id": "1", "values": values}) == expected


def test_bare_object_values_survive_the_form_round_trip() -> None:
    body = form(
        {
            "leads": {
                "update": [
                    {
                        "id": "1",
                        "custom_fields": [{"id": "9", "values": {"value": "2", "enum": "566642"}}],
                    }
                ]
            }
        }
    )
    [event] = parse_delivery(body).events
    assert custom_field_values(event.data["custom_fields"][0]) == [{"value": "2", "enum": "566642"}]


def test_spaces_as_plus_or_percent_20_and_cyrillic() -> None:
    name = "Сделка №1"
    plus = f"leads%5Badd%5D%5B0%5D%5Bid%5D=1&leads%5Badd%5D%5B0%5D%5Bname%5D={quote(name).replace('%20', '+')}"
    pct = f"leads[add][0][id]=1&leads[add][0][name]={quote(name)}"
    for raw in (plus, pct):
        assert parse_delivery(raw.encode()).events[0].data["name"] == name


def test_unknown_keys_are_kept_and_reported_not_fatal() -> None:
    body = form(
        {
            "catalogs": {"add": [{"id": "1"}]},
            "mystery": "x",
            "leads": {"teleport": [{"id": "5"}], "add": [{"id": "6"}]},
        }
    )
    delivery = parse_delivery(body)
    assert [(e.entity, e.action, e.entity_id) for e in delivery.events] == [("leads", "add", 6)]
    assert set(delivery.unknown) == {"catalogs", "mystery", "leads[teleport]"}
    assert delivery.form["mystery"] == "x"


def test_php_key_forms() -> None:
    assert split_key("leads[status][0][id]") == ["leads", "status", "0", "id"]
    assert split_key("a[]") == ["a", ""]
    assert split_key("plain") == ["plain"]
    assert split_key("broken[key") == ["broken[key"]
    assert split_key("[nohead]") == ["[nohead]"]
    assert decode_form(b"a[]=1&a[]=2") == {"a": ["1", "2"]}
    # A value and nested keys under one name: the nested keys win, as in PHP.
    assert decode_form(b"a=1&a[b]=2") == {"a": {"b": "2"}}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"\xff\xfe",
        b"leads%5Badd%5D=%FF%FE",
        b'{"leads": {"add": []}}',
        b"no-equals-sign",
        b"a" + b"[x]" * 20 + b"=1",
        "&".join(f"k{i}=v" for i in range(20_001)).encode(),
    ],
    ids=["empty", "blank", "bad-utf8", "bad-percent-utf8", "json", "no-pairs", "deep", "many"],
)
def test_malformed_bodies_raise(body: bytes) -> None:
    with pytest.raises(MalformedBody):
        parse_delivery(body)


def _outcome(body: bytes) -> tuple:
    """decode_form's verdict on a body, in the shape inspect_envelope reports."""
    try:
        delivery = parse_delivery(body)
    except MalformedBody:
        return ("malformed",)
    payload = bool(delivery.events or delivery.unknown)
    return (delivery.account_id, delivery.subdomain, payload)


def _fast(body: bytes) -> tuple:
    from crm_app.services.webhooks.parse import inspect_envelope

    try:
        env = inspect_envelope(body)
    except MalformedBody:
        return ("malformed",)
    return (env.account_id, env.subdomain, env.has_payload)


def test_fast_envelope_check_agrees_with_the_full_parser() -> None:
    import random

    rng = random.Random(11)
    corpus = [p.read_bytes() for p in SAMPLES.glob("webhook_*.urlencoded.txt")]
    corpus += [
        b"account%5bid%5d=5&leads%5Badd%5D%5B0%5D%5Bid%5D=1",
        b"account[id]=5&account[subdomain]=%D0%B4%D0%B5%D0%BC%D0%BE",
        b"account+x=1",
        b"account=1",
        b"accounts%5Bid%5D=1",
        b"a=%zz&account%5Bid%5D=%2B7",
        b"a=1&&b=2",
        b"a=1&",
    ]
    alphabet = [
        b"%5B",
        b"%5D",
        b"[",
        b"]",
        b"=",
        b"&",
        b"+",
        b"%D0",
        b"%9F",
        b"%FF",
        b"account",
        b"id",
        b"x",
        b"0",
    ]
    for _ in range(3000):
        corpus.append(b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))))
    for body in corpus:
        assert _fast(body) == _outcome(body), body


def test_validation_matches_the_standard_library_for_ascii_bodies() -> None:
    import random
    from urllib.parse import parse_qsl

    rng = random.Random(3)
    alphabet = [
        b"%5B",
        b"%5D",
        b"=",
        b"&",
        b"+",
        b"%D0",
        b"%9F",
        b"%d0",
        b"%9f",
        b"%FF",
        b"%E2%84",
        b"%96",
        b"a",
        b"%",
        b"%2",
        b"x",
    ]
    corpus = [b"a=%5B%D0%9F", b"a=%D0x%9F", b"a=%d0%9f", b"a=%E2%84%96", b"a=%E2%84"]
    corpus += [
        b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(4000)
    ]
    for body in corpus:
        try:
            parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True, errors="strict")
            expected = True
        except (ValueError, UnicodeDecodeError):
            expected = False
        try:
            decode_form(body)
            got = True
        except MalformedBody:
            got = False
        assert got == expected, body
    with pytest.raises(MalformedBody):
        decode_form("a=Привет".encode())  # raw UTF-8 is not form encoding
