"""Reading: HAL pages, 204s, query, filters (and the add-on switch), ordering, entity shapes."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from crm_app.sandbox import SandboxServer
from tests.sandbox.helpers import Api, Factory, api_for, exchange


def all_pages(api: Api, url: str, kind: str) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        reply = api.get(next_url)
        if reply.status_code == 204:
            break
        body = reply.json()
        pages += 1
        items.extend(body["_embedded"][kind])
        next_url = body["_links"].get("next", {}).get("href")
    return items, pages


def test_thousand_contacts_in_four_pages_then_204(make_sandbox: Factory) -> None:
    server = make_sandbox(contacts=1000, rate_limit=0)
    api = api_for(server)
    first = api.get("/api/v4/contacts?limit=250&page=1")
    assert first.status_code == 200
    assert first.headers["Content-Type"] == "application/hal+json"
    body = first.json()
    assert body["_page"] == 1
    assert body["_links"]["self"]["href"] == f"{server.url}/api/v4/contacts?limit=250&page=1"
    assert body["_links"]["next"]["href"] == f"{server.url}/api/v4/contacts?limit=250&page=2"
    assert "prev" not in body["_links"] and "first" not in body["_links"]
    items, pages = all_pages(api, "/api/v4/contacts?limit=250", "contacts")
    assert pages == 4
    assert len(items) == 1000 == len({c["id"] for c in items})
    last = api.get("/api/v4/contacts?limit=250&page=4").json()
    assert "next" not in last["_links"]
    assert last["_links"]["prev"]["href"].endswith("limit=250&page=3")
    assert last["_links"]["first"]["href"].endswith("limit=250&page=1")
    beyond = api.get("/api/v4/contacts?limit=250&page=5")
    assert beyond.status_code == 204 and beyond.content == b""


def test_full_page_next_link_mode_ends_with_a_204(make_sandbox: Factory) -> None:
    server = make_sandbox(contacts=500, rate_limit=0, next_link="full-page")
    api = api_for(server)
    last = api.get("/api/v4/contacts?limit=250&page=2").json()
    assert "next" in last["_links"]  # the page was full, so a next link is offered
    assert api.get(last["_links"]["next"]["href"]).status_code == 204


def test_unknown_ids_and_query_misses_are_204(api: Api) -> None:
    for path in ("/api/v4/contacts/1", "/api/v4/leads/1", "/api/v4/tasks/1", "/api/v4/users/1"):
        reply = api.get(path)
        assert reply.status_code == 204, path
        assert reply.content == b""
    miss = api.get("/api/v4/contacts", params={"query": "никого-такого-нет"})
    assert miss.status_code == 204 and miss.content == b""


def test_get_by_id_matches_the_list_item(api: Api) -> None:
    listed = api.get("/api/v4/leads?limit=1").json()["_embedded"]["leads"][0]
    single = api.get(f"/api/v4/leads/{listed['id']}").json()
    assert single == listed


def test_unknown_route_404_and_wrong_method_405(api: Api, sandbox: SandboxServer) -> None:
    missing = api.get("/api/v4/example")
    assert missing.status_code == 404
    assert missing.json() == {
        "title": "Not Found",
        "type": "https://httpstatus.es/404",
        "status": 404,
        "detail": f"Cannot GET {sandbox.url}/api/v4/example",
    }
    wrong = api.delete("/api/v4/leads")
    assert wrong.status_code == 405
    assert wrong.json()["title"] == "Method Not Allowed"


def test_limits_default_50_and_cap_250(make_sandbox: Factory) -> None:
    server = make_sandbox(contacts=400, rate_limit=0)
    api = api_for(server)
    assert len(api.get("/api/v4/contacts").json()["_embedded"]["contacts"]) == 50
    capped = api.get("/api/v4/contacts?limit=400").json()
    assert len(capped["_embedded"]["contacts"]) == 250
    assert "limit=250" in capped["_links"]["self"]["href"]


def test_over_limit_fallback_switch(make_sandbox: Factory) -> None:
    server = make_sandbox(contacts=400, rate_limit=0, over_limit="default")
    api = api_for(server)
    assert len(api.get("/api/v4/contacts?limit=400").json()["_embedded"]["contacts"]) == 50


def test_contact_shape_matches_the_sample(api: Api, sandbox: SandboxServer) -> None:
    contacts = api.get("/api/v4/contacts?limit=250").json()["_embedded"]["contacts"]
    first = contacts[0]
    assert list(first) == [
        "id", "name", "first_name", "last_name", "responsible_user_id", "group_id",
        "created_by", "updated_by", "created_at", "updated_at", "closest_task_at",
        "custom_fields_values", "account_id", "_links", "_embedded",
    ]  # fmt: skip
    assert first["_links"]["self"]["href"] == f"{sandbox.url}/api/v4/contacts/{first['id']}"
    assert {"tags", "companies"} <= set(first["_embedded"])
    assert isinstance(first["updated_at"], int)
    phones = [
        value
        for contact in contacts
        for cf in contact["custom_fields_values"] or []
        if cf["field_code"] == "PHONE"
        for value in cf["values"]
    ]
    assert phones, "seeded contacts have phones"
    assert all(v["value"].startswith("+79") and len(v["value"]) == 12 for v in phones)
    assert all(set(v) == {"value", "enum_id", "enum_code", "enum"} for v in phones)
    assert {v["enum_code"] for v in phones} <= {"WORK", "MOB"}
    telegram = [
        cf
        for c in contacts
        for cf in c["custom_fields_values"] or []
        if cf["field_code"] == "TELEGRAM_ID"
    ]
    assert (
        telegram
        and telegram[0]["field_type"] == "text"
        and telegram[0]["field_name"] == "Telegram ID"
    )


@pytest.mark.parametrize(("mode", "keys"), [("code", {"enum_code"}), ("enum", {"enum"})])
def test_multitext_enum_key_switch(make_sandbox: Factory, mode: str, keys: set[str]) -> None:
    server = make_sandbox(rate_limit=0, multitext_enum_keys=mode)
    contacts = api_for(server).get("/api/v4/contacts?limit=250").json()["_embedded"]["contacts"]
    value = next(
        cf["values"][0]
        for c in contacts
        for cf in c["custom_fields_values"] or []
        if cf["field_code"] == "PHONE"
    )
    assert set(value) == {"value", "enum_id"} | keys


def test_lead_shape_and_with_contacts(api: Api) -> None:
    plain = api.get("/api/v4/leads?limit=250").json()["_embedded"]["leads"]
    assert all("contacts" not in lead["_embedded"] for lead in plain)
    assert list(plain[0])[:5] == ["id", "name", "price", "responsible_user_id", "group_id"]
    assert {"status_id", "pipeline_id", "is_deleted", "score", "account_id"} <= set(plain[0])
    withc = api.get("/api/v4/leads?limit=250&with=contacts").json()["_embedded"]["leads"]
    linked = [lead for lead in withc if lead["_embedded"]["contacts"]]
    assert linked, "most seeded leads have a contact"
    ref = linked[0]["_embedded"]["contacts"][0]
    assert set(ref) == {"id", "is_main", "_links"} and ref["is_main"] is True
    assert api.get(f"/api/v4/contacts/{ref['id']}").status_code == 200


def test_task_shape(api: Api) -> None:
    tasks = api.get("/api/v4/tasks?limit=250").json()["_embedded"]["tasks"]
    task = tasks[0]
    assert {"entity_type", "entity_id", "task_type_id", "complete_till", "is_completed", "result",
            "duration", "text", "account_id"} <= set(task)  # fmt: skip
    assert {t["task_type_id"] for t in tasks} <= {1, 2}
    assert {t["entity_type"] for t in tasks} <= {"leads", "contacts"}
    assert any(t["result"] == [] for t in tasks)


def test_query_matches_phone_substrings_and_names(api: Api) -> None:
    contacts = api.get("/api/v4/contacts?limit=250").json()["_embedded"]["contacts"]
    phone = next(
        cf["values"][0]["value"]
        for c in contacts
        for cf in c["custom_fields_values"] or []
        if cf["field_code"] == "PHONE"
    )
    found = api.get("/api/v4/contacts", params={"query": phone[2:]}).json()["_embedded"]["contacts"]
    assert any(
        phone == v["value"]
        for c in found
        for cf in c["custom_fields_values"] or []
        for v in cf["values"]
    )
    wanted = contacts[0]["last_name"].lower()
    by_name = api.get("/api/v4/contacts", params={"query": wanted, "limit": 250}).json()
    hits = by_name["_embedded"]["contacts"]
    assert contacts[0]["id"] in {c["id"] for c in hits}
    for contact in hits:
        text = " ".join(
            [contact["name"]]
            + [
                str(v["value"])
                for cf in contact["custom_fields_values"] or []
                for v in cf["values"]
            ]
        ).lower()
        assert wanted in text


def test_filter_by_id_scalar_and_array(api: Api) -> None:
    ids = [c["id"] for c in api.get("/api/v4/contacts?limit=5").json()["_embedded"]["contacts"]]
    one = api.get(f"/api/v4/contacts?filter[id]={ids[2]}").json()["_embedded"]["contacts"]
    assert [c["id"] for c in one] == [ids[2]]
    many = api.get(
        "/api/v4/contacts", params=[("filter[id][]", str(ids[0])), ("filter[id][]", str(ids[4]))]
    ).json()["_embedded"]["contacts"]
    assert sorted(c["id"] for c in many) == sorted([ids[0], ids[4]])


def test_filter_updated_at_range_and_ordering(api: Api) -> None:
    leads = api.get("/api/v4/leads?limit=250").json()["_embedded"]["leads"]
    stamps = sorted(lead["updated_at"] for lead in leads)
    low, high = stamps[5], stamps[20]
    reply = api.get(f"/api/v4/leads?filter[updated_at][from]={low}&filter[updated_at][to]={high}")
    got = reply.json()["_embedded"]["leads"]
    assert len(got) == len([s for s in stamps if low <= s <= high])
    assert all(low <= lead["updated_at"] <= high for lead in got)
    asc = api.get(f"/api/v4/leads?filter[updated_at][from]={low}&order[updated_at]=asc").json()
    values = [lead["updated_at"] for lead in asc["_embedded"]["leads"]]
    assert values == sorted(values) and values[0] >= low
    desc = api.get("/api/v4/leads?order[id]=desc&limit=3").json()["_embedded"]["leads"]
    assert [lead["id"] for lead in desc] == sorted((lead["id"] for lead in leads), reverse=True)[:3]
    self_link = asc["_links"]["self"]["href"]
    assert "filter[updated_at][from]=" in self_link and "order[updated_at]=asc" in self_link


def test_tasks_filter_updated_at_scalar(api: Api) -> None:
    tasks = api.get("/api/v4/tasks?limit=250").json()["_embedded"]["tasks"]
    pivot = sorted(t["updated_at"] for t in tasks)[len(tasks) // 2]
    got = api.get(f"/api/v4/tasks?filter[updated_at]={pivot}").json()["_embedded"]["tasks"]
    assert got and all(t["updated_at"] >= pivot for t in got)
    assert len(got) == len([t for t in tasks if t["updated_at"] >= pivot])


def test_without_the_filter_add_on_filters_are_silently_ignored(make_sandbox: Factory) -> None:
    server = make_sandbox(rate_limit=0, api_filter=False)
    api = api_for(server)
    account = api.get("/api/v4/account?with=is_api_filter_enabled").json()
    assert account["is_api_filter_enabled"] is False
    everything = api.get("/api/v4/contacts?limit=250").json()["_embedded"]["contacts"]
    target = everything[3]["id"]
    ignored = api.get(f"/api/v4/contacts?limit=250&filter[id]={target}").json()
    assert len(ignored["_embedded"]["contacts"]) == len(everything)
    ordered = api.get("/api/v4/contacts?limit=250&order[updated_at]=desc").json()
    stamps = [c["updated_at"] for c in ordered["_embedded"]["contacts"]]
    assert stamps == sorted(stamps, reverse=True)


def test_filter_add_on_enabled_is_reported(api: Api) -> None:
    assert api.get("/api/v4/account?with=is_api_filter_enabled").json()["is_api_filter_enabled"]
    assert "is_api_filter_enabled" not in api.get("/api/v4/account").json()


def test_pipelines_have_won_lost_and_unsorted(api: Api) -> None:
    body = api.get("/api/v4/leads/pipelines").json()
    pipelines = body["_embedded"]["pipelines"]
    assert body["_total_items"] == len(pipelines) == 2
    assert sum(p["is_main"] for p in pipelines) == 1
    for pipeline in pipelines:
        statuses = pipeline["_embedded"]["statuses"]
        ids = {s["id"] for s in statuses}
        assert {142, 143} <= ids
        assert [s["type"] for s in statuses].count(1) == 1
        assert all(s["pipeline_id"] == pipeline["id"] for s in statuses)
    one = api.get(f"/api/v4/leads/pipelines/{pipelines[0]['id']}").json()
    assert one["id"] == pipelines[0]["id"]
    missing = api.get("/api/v4/leads/pipelines/1")
    assert missing.status_code == 404 and missing.json()["detail"] == "Pipeline not found"


def test_custom_fields_lists(api: Api) -> None:
    body = api.get("/api/v4/contacts/custom_fields").json()
    fields = {f["code"]: f for f in body["_embedded"]["custom_fields"]}
    assert body["_total_items"] == len(fields)
    assert fields["PHONE"]["type"] == fields["EMAIL"]["type"] == "multitext"
    assert {e["value"] for e in fields["PHONE"]["enums"]} >= {"WORK", "MOB", "HOME"}
    assert (
        fields["TELEGRAM_ID"]["name"] == "Telegram ID" and fields["TELEGRAM_ID"]["type"] == "text"
    )
    leads = api.get("/api/v4/leads/custom_fields").json()["_embedded"]["custom_fields"]
    assert any(f["type"] == "select" and f["enums"] for f in leads)


def test_account_with_values(api: Api, sandbox: SandboxServer) -> None:
    body = api.get("/api/v4/account?with=task_types,users_groups,datetime_settings").json()
    assert body["id"] == sandbox.account.id and body["subdomain"] == "demo"
    assert body["current_user_id"] == sandbox.account.admin.id
    codes = {t["id"]: t["code"] for t in body["_embedded"]["task_types"]}
    assert codes == {1: "FOLLOW_UP", 2: "MEETING"}
    assert body["_embedded"]["datetime_settings"]["timezone"] == "Europe/Moscow"


def test_users_are_admin_only(sandbox: SandboxServer, api: Api) -> None:
    users = api.get("/api/v4/users").json()["_embedded"]["users"]
    admin = next(u for u in users if u["rights"]["is_admin"])
    assert admin["name"] and "@" in admin["email"]
    assert api.get(f"/api/v4/users/{admin['id']}").json()["email"] == admin["email"]
    manager = next(u for u in sandbox.account.users if not u.is_admin)
    code = requests.post(
        f"{sandbox.url}/_sandbox/auth-code",
        json={"client_id": sandbox.config.client_id, "user_id": manager.id},
        timeout=5,
    ).json()["code"]
    token = exchange(sandbox, code).json()["access_token"]
    denied = Api(sandbox.url, token).get("/api/v4/users")
    assert denied.status_code == 403


def test_seed_is_deterministic(make_sandbox: Factory) -> None:
    one = make_sandbox(rate_limit=0, seed_anchor=1_700_000_000)
    two = make_sandbox(rate_limit=0, seed_anchor=1_700_000_000)
    first = api_for(one).get("/api/v4/contacts?limit=250").text.replace(one.url, "")
    second = api_for(two).get("/api/v4/contacts?limit=250").text.replace(two.url, "")
    assert first == second
