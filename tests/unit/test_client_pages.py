"""Lists, pagination, next links and PHP-style filter parameters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses
from responses import matchers

from crm_app.amocrm.client import AmoCRMClient, list_params, php_params
from crm_app.amocrm.hosts import AmoHosts
from crm_app.amocrm.throttle import NullThrottle
from crm_app.amocrm.tokens import StaticTokenSource

BASE = "https://demo.amocrm.ru"
CONTACTS = f"{BASE}/api/v4/contacts"


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def client() -> AmoCRMClient:
    return AmoCRMClient(
        AmoHosts("demo"), StaticTokenSource("t"), throttle=NullThrottle(), sleep=lambda s: None
    )


def page_body(entity: str, ids: list[int], page: int, next_href: str | None) -> dict[str, Any]:
    links: dict[str, Any] = {"self": {"href": f"{BASE}/api/v4/{entity}?page={page}"}}
    if next_href:
        links["next"] = {"href": next_href}
    return {
        "_page": page,
        "_links": links,
        "_embedded": {entity: [{"id": i} for i in ids]},
    }


def query_of(call: Any) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(call.request.url).query, keep_blank_values=True)


def on_page(n: int) -> Any:
    return matchers.query_param_matcher({"page": str(n)}, strict_match=False)


def test_iter_pages_follows_same_origin_next_links(
    mocked: responses.RequestsMock, client: AmoCRMClient
) -> None:
    mocked.get(
        CONTACTS,
        json=page_body("contacts", [1, 2], 1, f"{CONTACTS}?limit=2&page=2"),
        match=[on_page(1)],
    )
    mocked.get(
        CONTACTS,
        json=page_body("contacts", [3, 4], 2, f"{CONTACTS}?limit=2&page=3"),
        match=[on_page(2)],
    )
    mocked.get(CONTACTS, json=page_body("contacts", [5], 3, None), match=[on_page(3)])
    pages = list(client.iter_pages("contacts", limit=2))
    assert [p.page for p in pages] == [1, 2, 3]
    assert [i["id"] for p in pages for i in p.items] == [1, 2, 3, 4, 5]
    assert pages[-1].next_url is None and not pages[-1].has_next
    assert dict(query_of(mocked.calls[0])) == {"limit": "2", "page": "1"}
    assert mocked.calls[1].request.url == f"{CONTACTS}?limit=2&page=2"


def test_iter_pages_stops_on_204(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    mocked.get(
        CONTACTS, json=page_body("contacts", [1], 1, f"{CONTACTS}?page=2"), match=[on_page(1)]
    )
    mocked.get(CONTACTS, status=204, match=[on_page(2)])
    pages = list(client.iter_pages("contacts"))
    assert len(pages) == 1
    assert len(mocked.calls) == 2


def test_foreign_next_link_is_not_followed(
    mocked: responses.RequestsMock, client: AmoCRMClient
) -> None:
    evil = "https://evil.example/api/v4/contacts?page=2"
    mocked.get(CONTACTS, json=page_body("contacts", [1], 1, evil), match=[on_page(1)])
    mocked.get(CONTACTS, json=page_body("contacts", [2], 2, None), match=[on_page(2)])
    pages = list(client.iter_pages("contacts", limit=1))
    assert [i["id"] for p in pages for i in p.items] == [1, 2]
    # Page 2 came from our own origin, with our own parameters.
    assert all(urlsplit(c.request.url).netloc == "demo.amocrm.ru" for c in mocked.calls)
    assert dict(query_of(mocked.calls[1])) == {"limit": "1", "page": "2"}


@pytest.mark.parametrize(
    "link",
    [
        "http://demo.amocrm.ru/api/v4/contacts?page=2",  # downgraded scheme
        "https://demo.amocrm.ru.evil.example/api/v4/contacts?page=2",
        "https://user@demo.amocrm.ru/api/v4/contacts?page=2",
        "https://shard151.amocrm.ru/api/v4/contacts?page=2",
        "https://demo.amocrm.ru/oauth2/access_token?page=2",  # same origin, not the API
        "//evil.example/api/v4/contacts?page=2",
        "javascript:alert(1)",
    ],
)
def test_next_links_elsewhere_are_never_requested(
    mocked: responses.RequestsMock, client: AmoCRMClient, link: str
) -> None:
    mocked.get(CONTACTS, json=page_body("contacts", [1], 1, link), match=[on_page(1)])
    mocked.get(CONTACTS, status=204, match=[on_page(2)])
    assert len(list(client.iter_pages("contacts"))) == 1
    assert [urlsplit(c.request.url).path for c in mocked.calls] == ["/api/v4/contacts"] * 2
    assert all(c.request.url.startswith(CONTACTS) for c in mocked.calls)


def test_repeated_next_link_stops(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    loop = f"{CONTACTS}?page=2"
    mocked.get(CONTACTS, json=page_body("contacts", [1], 1, loop), match=[on_page(1)])
    mocked.get(CONTACTS, json=page_body("contacts", [2], 2, loop), match=[on_page(2)])
    pages = list(client.iter_pages("contacts"))
    assert len(pages) == 2
    assert len(mocked.calls) == 2


def test_base_url_next_links_are_followed() -> None:
    base = "http://127.0.0.1:8100"
    client = AmoCRMClient(
        AmoHosts("demo", base_url=base), StaticTokenSource("t"), throttle=NullThrottle()
    )
    with responses.RequestsMock() as mocked:
        url = f"{base}/api/v4/leads"
        mocked.get(url, json=page_body("leads", [1], 1, f"{url}?page=2"), match=[on_page(1)])
        mocked.get(url, json=page_body("leads", [2], 2, None), match=[on_page(2)])
        assert [p.page for p in client.iter_pages("leads")] == [1, 2]


def test_get_contacts_builds_php_style_query(
    mocked: responses.RequestsMock, client: AmoCRMClient
) -> None:
    mocked.get(CONTACTS, status=204)
    client.get_contacts(
        limit=100,
        page=3,
        query="Иван",
        filter_={"updated_at": {"from": 10, "to": 20}, "id": [1, 2, 3]},
        order={"updated_at": "DESC"},
        with_=["leads", "customers"],
    )
    assert query_of(mocked.calls[0]) == [
        ("with", "leads,customers"),
        ("limit", "100"),
        ("page", "3"),
        ("query", "Иван"),
        ("filter[updated_at][from]", "10"),
        ("filter[updated_at][to]", "20"),
        ("filter[id][]", "1"),
        ("filter[id][]", "2"),
        ("filter[id][]", "3"),
        ("order[updated_at]", "desc"),
    ]


def test_php_params_shapes() -> None:
    assert php_params("filter", {"statuses": [{"pipeline_id": 1, "status_id": 142}]}) == [
        ("filter[statuses][0][pipeline_id]", "1"),
        ("filter[statuses][0][status_id]", "142"),
    ]
    assert php_params("filter", {"is_completed": False, "skip": None}) == [
        ("filter[is_completed]", "0")
    ]
    assert php_params("filter", {"updated_at": 1700000000}) == [
        ("filter[updated_at]", "1700000000")
    ]
    with pytest.raises(ValueError):
        list_params(order={"id": "sideways"})


def test_get_leads_defaults_to_with_contacts(
    mocked: responses.RequestsMock, client: AmoCRMClient
) -> None:
    body = page_body("leads", [7], 1, None)
    body["_embedded"]["leads"][0]["_embedded"] = {"contacts": [{"id": 3, "is_main": True}]}
    mocked.get(f"{BASE}/api/v4/leads", json=body)
    page = client.get_leads(filter_={"updated_at": {"from": 5}})
    assert page.items[0]["_embedded"]["contacts"][0]["id"] == 3
    assert ("with", "contacts") in query_of(mocked.calls[0])
    assert ("filter[updated_at][from]", "5") in query_of(mocked.calls[0])


def test_get_tasks(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    mocked.get(f"{BASE}/api/v4/tasks", json=page_body("tasks", [1, 2], 1, None))
    page = client.get_tasks(filter_={"is_completed": 0}, order={"id": "asc"})
    assert [t["id"] for t in page.items] == [1, 2]
    assert ("filter[is_completed]", "0") in query_of(mocked.calls[0])


def test_limit_is_capped(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    mocked.get(CONTACTS, status=204)
    mocked.get(f"{BASE}/api/v4/events", status=204)
    client.get_contacts(limit=1000)
    list(client.iter_pages("events", limit=250))
    assert ("limit", "250") in query_of(mocked.calls[0])
    assert ("limit", "100") in query_of(mocked.calls[1])


def test_iter_pages_extra_params_and_start_page(
    mocked: responses.RequestsMock, client: AmoCRMClient
) -> None:
    mocked.get(CONTACTS, status=204)
    list(client.iter_pages("contacts", 50, 4, {"filter": {"id": [9]}, "with": "leads"}))
    assert query_of(mocked.calls[0]) == [
        ("limit", "50"),
        ("filter[id][]", "9"),
        ("with", "leads"),
        ("page", "4"),
    ]


@pytest.mark.parametrize("entity", ["../account", "contacts?x=1", "https://evil", "", "Contacts"])
def test_iter_pages_rejects_odd_entities(client: AmoCRMClient, entity: str) -> None:
    with pytest.raises(ValueError):
        list(client.iter_pages(entity))


@pytest.mark.parametrize("bad", ["1/../webhooks", "-1", 0, "abc", True, 1.5, None])
def test_entity_ids_must_be_positive_integers(client: AmoCRMClient, bad: object) -> None:
    with pytest.raises(ValueError):
        client.get_contact(bad)  # type: ignore[arg-type]  # wrong types on purpose


def test_get_by_id(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    mocked.get(f"{CONTACTS}/3", json={"id": 3, "name": "Иван Иванов"})
    mocked.get(f"{BASE}/api/v4/leads/4", json={"id": 4})
    assert client.get_contact(3)["name"] == "Иван Иванов"
    assert client.get_lead("4") == {"id": 4}  # type: ignore[arg-type]  # a string id is accepted
    assert ("with", "contacts") in query_of(mocked.calls[1])


def test_get_users_collects_all_pages(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    users = f"{BASE}/api/v4/users"
    mocked.get(users, json=page_body("users", [1], 1, f"{users}?page=2"), match=[on_page(1)])
    mocked.get(users, json=page_body("users", [2], 2, None), match=[on_page(2)])
    assert [u["id"] for u in client.get_users()] == [1, 2]


def test_get_pipelines_and_custom_fields(
    mocked: responses.RequestsMock, client: AmoCRMClient
) -> None:
    pipelines = {
        "_total_items": 1,
        "_embedded": {"pipelines": [{"id": 5, "_embedded": {"statuses": [{"id": 142}]}}]},
    }
    mocked.get(f"{BASE}/api/v4/leads/pipelines", json=pipelines)
    fields = {
        "_page": 1,
        "_links": {},
        "_embedded": {"custom_fields": [{"id": 1, "code": "PHONE"}]},
    }
    mocked.get(f"{BASE}/api/v4/contacts/custom_fields", json=fields)
    assert client.get_pipelines()[0]["_embedded"]["statuses"][0]["id"] == 142
    assert client.get_custom_fields("contacts") == [{"id": 1, "code": "PHONE"}]
    with pytest.raises(ValueError):
        client.get_custom_fields("webhooks")


def test_get_account_with(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    mocked.get(f"{BASE}/api/v4/account", json={"id": 1, "subdomain": "demo"})
    assert client.get_account(with_=("users_groups", "task_types"))["subdomain"] == "demo"
    assert query_of(mocked.calls[0]) == [("with", "users_groups,task_types")]


def test_search_contacts(mocked: responses.RequestsMock, client: AmoCRMClient) -> None:
    mocked.get(CONTACTS, json=page_body("contacts", [1, 2], 1, None))
    assert [c["id"] for c in client.search_contacts("  Иван ")] == [1, 2]
    assert ("query", "Иван") in query_of(mocked.calls[0])
    with pytest.raises(ValueError):
        client.search_contacts("   ")


def test_find_contacts_by_phone_checks_the_field(
    mocked: responses.RequestsMock, client: AmoCRMClient
) -> None:
    def contact(cid: int, phone: str) -> dict[str, Any]:
        return {
            "id": cid,
            "custom_fields_values": [{"field_code": "PHONE", "values": [{"value": phone}]}],
        }

    body = {
        "_page": 1,
        "_links": {},
        "_embedded": {
            "contacts": [
                contact(1, "8 (999) 555-11-22"),
                contact(2, "+7 999 555 11 223"),  # a longer number containing the digits
                {"id": 3, "name": "9995551122 in the name"},
            ]
        },
    }
    mocked.get(CONTACTS, json=body)
    found = client.find_contacts_by_phone("+7 999 555-11-22")
    assert [c["id"] for c in found] == [1]
    assert ("query", "9995551122") in query_of(mocked.calls[0])
    assert client.find_contacts_by_phone("not a phone") == []
