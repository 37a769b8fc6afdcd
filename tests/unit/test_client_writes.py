"""Request bodies of the write methods: contacts, leads, complex leads, tasks, notes, links, hooks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import AmoCRMUnavailable
from crm_app.amocrm.hosts import AmoHosts
from crm_app.amocrm.throttle import NullThrottle
from crm_app.amocrm.tokens import StaticTokenSource

BASE = "https://demo.amocrm.ru/api/v4"


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def client() -> AmoCRMClient:
    return AmoCRMClient(
        AmoHosts("demo"), StaticTokenSource("t"), throttle=NullThrottle(), sleep=lambda s: None
    )


def sent(mocked: responses.RequestsMock, index: int = -1) -> Any:
    body = mocked.calls[index].request.body
    assert isinstance(body, str | bytes)
    return json.loads(body)


def created(entity: str, *ids: int) -> dict[str, Any]:
    return {
        "_links": {"self": {"href": f"{BASE}/{entity}"}},
        "_embedded": {
            entity: [
                {
                    "id": i,
                    "request_id": str(n),
                    "_links": {"self": {"href": f"{BASE}/{entity}/{i}"}},
                }
                for n, i in enumerate(ids)
            ]
        },
    }


def test_create_lead_seed_signature(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    mocked.post(f"{BASE}/leads", json=created("leads", 15))
    result = client.create_lead("Заявка из Telegram", 1500, 10, 20, 30)
    assert result["id"] == 15
    assert sent(mocked) == [
        {
            "name": "Заявка из Telegram",
            "price": 1500,
            "pipeline_id": 10,
            "status_id": 20,
            "_embedded": {"contacts": [{"id": 30, "is_main": True}]},
        }
    ]


def test_create_lead_keywords(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    mocked.post(f"{BASE}/leads", json=created("leads", 1))
    client.create_lead(
        name="X",
        contact_id=5,
        tags=["telegram"],
        request_id="inbound-7",
        custom_fields_values=[{"field_id": 9, "values": [{"value": "utm"}]}],
    )
    body = sent(mocked)[0]
    assert body["tags_to_add"] == [{"name": "telegram"}]
    assert body["request_id"] == "inbound-7"
    assert body["custom_fields_values"] == [{"field_id": 9, "values": [{"value": "utm"}]}]
    assert "price" not in body and "pipeline_id" not in body


def test_create_contact_with_phone_and_email(
    mocked: responses.RequestsMock, client: AmoCRMClient
) -> None:
    mocked.post(f"{BASE}/contacts", json=created("contacts", 40401635))
    result = client.create_contact("Иван", phone="+79995551122", email="ivan@example.com")
    assert result["id"] == 40401635
    assert sent(mocked) == [
        {
            "name": "Иван",
            "custom_fields_values": [
                {"field_code": "PHONE", "values": [{"value": "+79995551122", "enum_code": "WORK"}]},
                {
                    "field_code": "EMAIL",
                    "values": [{"value": "ivan@example.com", "enum_code": "WORK"}],
                },
            ],
        }
    ]


def test_create_contacts_batch(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    mocked.post(f"{BASE}/contacts", json=created("contacts", 1, 2))
    result = client.create_contacts([{"name": "a"}, {"name": "b"}])
    assert [r["id"] for r in result] == [1, 2]
    with pytest.raises(ValueError):
        client.create_contacts([])
    with pytest.raises(ValueError):
        client.create_contacts([{"name": str(i)} for i in range(251)])


def test_create_lead_complex(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    answer = [
        {"id": 1, "contact_id": 2, "company_id": None, "request_id": ["a"], "merged": False},
        {"id": 3, "contact_id": 4, "company_id": None, "request_id": ["b", "c"], "merged": True},
    ]
    mocked.post(f"{BASE}/leads/complex", json=answer)
    items = [
        {"name": "L", "request_id": "a", "_embedded": {"contacts": [{"first_name": "Иван"}]}},
        {"name": "M", "request_id": "b", "_embedded": {"contacts": [{"id": 4}]}},
    ]
    assert client.create_lead_complex(items) == answer
    assert sent(mocked) == items


@pytest.mark.parametrize("count", [0, 51])
def test_create_lead_complex_limits(client: AmoCRMClient, count: int) -> None:
    with pytest.raises(ValueError):
        client.create_lead_complex([{"name": str(i)} for i in range(count)])


def test_create_lead_complex_accepts_fifty(
    mocked: responses.RequestsMock, client: AmoCRMClient
) -> None:
    mocked.post(f"{BASE}/leads/complex", json=[])
    assert client.create_lead_complex([{"name": str(i)} for i in range(50)]) == []


def test_create_task(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    mocked.post(f"{BASE}/tasks", json=created("tasks", 9))
    client.create_task("Перезвонить", 1588885140, entity_type="leads", entity_id=7, task_type_id=1)
    assert sent(mocked) == [
        {
            "text": "Перезвонить",
            "complete_till": 1588885140,
            "entity_type": "leads",
            "entity_id": 7,
            "task_type_id": 1,
        }
    ]


@pytest.mark.parametrize("entity", ["leads", "contacts", "tasks"])
def test_updates_patch_one_entity(
    mocked: responses.RequestsMock, client: AmoCRMClient, entity: str
) -> None:
    mocked.patch(f"{BASE}/{entity}/12", json={"id": 12, "updated_at": 1700000000})
    method = getattr(client, f"update_{entity[:-1]}")
    assert method(12, {"name": "New"}) == {"id": 12, "updated_at": 1700000000}
    assert sent(mocked) == {"name": "New"}
    with pytest.raises(ValueError):
        method(12, {})


def test_patch_is_not_retried_after_a_timeout(
    mocked: responses.RequestsMock, client: AmoCRMClient
) -> None:
    mocked.patch(f"{BASE}/leads/12", body=requests.ReadTimeout("slow"))
    with pytest.raises(AmoCRMUnavailable):
        client.update_lead(12, {"price": 1})
    assert len(mocked.calls) == 1


def test_add_note(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    answer = {"_embedded": {"notes": [{"id": 77, "entity_id": 5, "request_id": "0"}]}}
    mocked.post(f"{BASE}/leads/notes", json=answer)
    assert client.add_note("leads", 5, "Пришёл из Telegram")["id"] == 77
    assert sent(mocked) == [
        {"entity_id": 5, "note_type": "common", "params": {"text": "Пришёл из Telegram"}}
    ]
    with pytest.raises(ValueError):
        client.add_note("tasks", 5, "x")


def test_link_and_get_links(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    link = {"to_entity_id": 457282, "to_entity_type": "contacts", "metadata": {"is_main": True}}
    answer = {"_embedded": {"links": [{"entity_id": 14, "entity_type": "leads", **link}]}}
    mocked.post(f"{BASE}/leads/14/link", json=answer)
    mocked.get(f"{BASE}/leads/14/links", json=answer)
    assert client.link_entities("leads", 14, [link])[0]["entity_id"] == 14
    assert sent(mocked, 0) == [link]
    assert (
        client.get_links("leads", 14, filter_={"to_entity_type": "contacts"})[0]["to_entity_id"]
        == 457282
    )
    assert "filter%5Bto_entity_type%5D=contacts" in mocked.calls[1].request.url


def test_webhooks(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    hook = {
        "id": 1056949,
        "destination": "https://app.example/webhooks/amocrm/tok",
        "settings": ["add_lead", "update_contact"],
        "disabled": False,
    }
    mocked.post(f"{BASE}/webhooks", status=201, json=hook)
    mocked.get(f"{BASE}/webhooks", json={"_total_items": 1, "_embedded": {"webhooks": [hook]}})
    mocked.delete(f"{BASE}/webhooks", status=204)
    destination = str(hook["destination"])
    assert client.subscribe_webhook(destination, ["add_lead", "update_contact"], sort=10) == hook
    assert sent(mocked, 0) == {
        "destination": destination,
        "settings": ["add_lead", "update_contact"],
        "sort": 10,
    }
    assert client.list_webhooks(destination) == [hook]
    assert "filter%5Bdestination%5D=" in mocked.calls[1].request.url
    assert client.unsubscribe_webhook(destination) is True
    assert sent(mocked, 2) == {"destination": destination}


def test_unsubscribe_unknown_hook(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    mocked.delete(f"{BASE}/webhooks", status=404, json={"title": "Not Found", "status": 404})
    assert client.unsubscribe_webhook("https://app.example/h") is False


def test_subscribe_is_retried_after_a_timeout(
    mocked: responses.RequestsMock, client: AmoCRMClient
) -> None:
    # amoCRM upserts hooks by destination, so a resend cannot create a duplicate.
    mocked.post(f"{BASE}/webhooks", body=requests.ReadTimeout("slow"))
    mocked.post(f"{BASE}/webhooks", status=201, json={"id": 1})
    assert client.subscribe_webhook("https://app.example/h", ["add_lead"]) == {"id": 1}
    assert len(mocked.calls) == 2


@pytest.mark.parametrize("destination", ["", "ftp://x/y", "/relative", "app.example/h"])
def test_subscribe_rejects_bad_destinations(client: AmoCRMClient, destination: str) -> None:
    with pytest.raises(ValueError):
        client.subscribe_webhook(destination, ["add_lead"])


def test_subscribe_needs_events(client: AmoCRMClient) -> None:
    with pytest.raises(ValueError):
        client.subscribe_webhook("https://app.example/h", [])
