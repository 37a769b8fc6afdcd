"""Writing: create/update shapes, validation errors, complex add, links, notes, webhook API, 402."""

from __future__ import annotations

import time
from typing import Any

import requests

from crm_app.sandbox import SandboxServer
from tests.sandbox.helpers import Api, Factory, api_for


def test_create_contacts_echoes_request_ids(api: Api, sandbox: SandboxServer) -> None:
    reply = api.post(
        "/api/v4/contacts",
        json=[
            {
                "first_name": "Пётр",
                "last_name": "Смирнов",
                "custom_fields_values": [
                    {
                        "field_code": "PHONE",
                        "values": [{"value": "+79991234567", "enum_code": "MOB"}],
                    }
                ],
            },
            {"name": "Владимир Смирнов", "request_id": "vs", "tags_to_add": [{"name": "Тег"}]},
        ],
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["_links"]["self"]["href"] == f"{sandbox.url}/api/v4/contacts"
    created = body["_embedded"]["contacts"]
    assert [c["request_id"] for c in created] == ["0", "vs"]
    assert all(set(c) == {"id", "request_id", "_links"} for c in created)
    first = api.get(f"/api/v4/contacts/{created[0]['id']}").json()
    assert first["name"] == "Пётр Смирнов"
    phone = first["custom_fields_values"][0]
    assert phone["field_code"] == "PHONE"
    assert phone["values"][0]["value"] == "+79991234567"
    assert phone["values"][0]["enum_code"] == "MOB"
    second = api.get(f"/api/v4/contacts/{created[1]['id']}").json()
    assert [t["name"] for t in second["_embedded"]["tags"]] == ["Тег"]
    found = api.get("/api/v4/contacts", params={"query": "9991234567"}).json()
    assert [c["id"] for c in found["_embedded"]["contacts"]] == [created[0]["id"]]


def test_update_shapes_per_entity(api: Api) -> None:
    before = int(time.time()) - 1
    lead_id = api.get("/api/v4/leads?limit=1").json()["_embedded"]["leads"][0]["id"]
    leads = api.patch("/api/v4/leads", json=[{"id": lead_id, "price": 12345}]).json()
    item = leads["_embedded"]["leads"][0]
    assert list(item) == ["id", "updated_at", "_links"] and item["updated_at"] >= before
    single = api.patch(f"/api/v4/leads/{lead_id}", json={"name": "Новое имя"}).json()
    assert list(single) == ["id", "updated_at", "_links"]
    lead = api.get(f"/api/v4/leads/{lead_id}").json()
    assert (lead["price"], lead["name"]) == (12345, "Новое имя")
    contact_id = api.get("/api/v4/contacts?limit=1").json()["_embedded"]["contacts"][0]["id"]
    contact = api.patch(f"/api/v4/contacts/{contact_id}", json={"first_name": "Иван"}).json()
    assert list(contact) == ["id", "name", "updated_at", "_links"]
    task_id = api.get("/api/v4/tasks?limit=1").json()["_embedded"]["tasks"][0]["id"]
    done = api.patch(
        f"/api/v4/tasks/{task_id}",
        json={"is_completed": True, "result": {"text": "Удалось связаться с клиентом"}},
    ).json()
    assert list(done) == ["id", "updated_at", "request_id", "_links"] and done["request_id"] == "0"
    task = api.get(f"/api/v4/tasks/{task_id}").json()
    assert task["is_completed"] is True
    assert task["result"] == {"text": "Удалось связаться с клиентом"}


def test_updated_lead_shows_up_in_incremental_sync(api: Api) -> None:
    newest = api.get("/api/v4/leads?order[updated_at]=desc&limit=1").json()["_embedded"]["leads"][0]
    target = api.get("/api/v4/leads?order[updated_at]=asc&limit=1").json()["_embedded"]["leads"][0]
    api.patch(f"/api/v4/leads/{target['id']}", json={"price": 1})
    since = newest["updated_at"] + 1
    changed = api.get(f"/api/v4/leads?filter[updated_at][from]={since}").json()
    assert [lead["id"] for lead in changed["_embedded"]["leads"]] == [target["id"]]


def test_task_without_text_or_due_date_is_a_validation_error(api: Api) -> None:
    reply = api.post("/api/v4/tasks", json=[{"task_type_id": 1, "request_id": "t1"}])
    assert reply.status_code == 400
    assert reply.headers["Content-Type"] == "application/problem+json"
    body = reply.json()
    assert list(body) == ["validation-errors", "title", "type", "status", "detail"]
    assert body["detail"] == "Request validation failed"
    (item,) = body["validation-errors"]
    assert item["request_id"] == "t1"
    assert {e["path"] for e in item["errors"]} == {"text", "complete_till"}
    assert all(e["code"] == "NotBlank" for e in item["errors"])


def test_invalid_items_fail_the_whole_batch(api: Api) -> None:
    before = api.get("/api/v4/contacts?limit=250").json()["_embedded"]["contacts"]
    reply = api.post(
        "/api/v4/contacts",
        json=[
            {"name": "Хороший"},
            {
                "name": "Плохой",
                "custom_fields_values": [{"field_id": 1, "values": [{"value": "x"}]}],
            },
        ],
    )
    assert reply.status_code == 400
    error = reply.json()["validation-errors"][0]
    assert error == {
        "request_id": "1",
        "errors": [
            {
                "code": "NotSupportedChoice",
                "path": "custom_fields_values.0.field_id",
                "detail": "The value you selected is not a valid choice.",
            }
        ],
    }
    after = api.get("/api/v4/contacts?limit=250").json()["_embedded"]["contacts"]
    assert len(after) == len(before)


def test_bad_status_and_wrong_types(api: Api) -> None:
    reply = api.post("/api/v4/leads", json=[{"name": "x", "price": "100", "status_id": 1}])
    errors = reply.json()["validation-errors"][0]["errors"]
    assert {(e["code"], e["path"]) for e in errors} == {
        ("InvalidType", "price"),
        ("NotSupportedChoice", "status_id"),
    }


def test_empty_bodies_and_too_many_items(api: Api) -> None:
    empty = api.post("/api/v4/leads", data=b"", headers={"Content-Type": "application/json"})
    assert empty.status_code == 400
    assert empty.json() == {
        "title": "Bad Request",
        "type": "https://httpstatus.es/400",
        "status": 400,
        "detail": "Request data can not be empty",
    }
    assert api.post("/api/v4/leads", json=[]).status_code == 400
    too_many = api.post("/api/v4/leads", json=[{"name": f"L{i}"} for i in range(251)])
    assert too_many.status_code == 422
    assert too_many.json()["detail"] == "Limit 250 per page"


def test_new_lead_defaults_to_first_stage_of_main_pipeline(api: Api) -> None:
    pipelines = api.get("/api/v4/leads/pipelines").json()["_embedded"]["pipelines"]
    main = next(p for p in pipelines if p["is_main"])
    first_stage = next(s for s in main["_embedded"]["statuses"] if s["type"] == 0)
    created = api.post("/api/v4/leads", json=[{"name": "Новая"}]).json()["_embedded"]["leads"][0]
    lead = api.get(f"/api/v4/leads/{created['id']}").json()
    assert (lead["pipeline_id"], lead["status_id"]) == (main["id"], first_stage["id"])
    won = api.patch(f"/api/v4/leads/{created['id']}", json={"status_id": 142})
    assert won.status_code == 200
    closed = api.get(f"/api/v4/leads/{created['id']}").json()
    assert closed["status_id"] == 142 and closed["closed_at"]


def complex_item(**extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": "Сделка из Telegram",
        "price": 3422,
        "_embedded": {
            "contacts": [
                {
                    "first_name": "Екатерина",
                    "custom_fields_values": [
                        {"field_code": "PHONE", "values": [{"value": "+79123456789"}]},
                        {"field_code": "EMAIL", "values": [{"value": "kate@example.com"}]},
                    ],
                }
            ],
            "companies": [{"name": "ООО «Рога и копыта»"}],
        },
    }
    item.update(extra)
    return item


def test_complex_add_creates_lead_contact_and_company(api: Api) -> None:
    reply = api.post("/api/v4/leads/complex", json=[complex_item(request_id="qweasd")])
    assert reply.status_code == 200
    (result,) = reply.json()
    assert list(result) == ["id", "contact_id", "company_id", "request_id", "merged"]
    assert result["request_id"] == ["qweasd"] and result["merged"] is False
    lead = api.get(f"/api/v4/leads/{result['id']}?with=contacts").json()
    assert lead["_embedded"]["contacts"][0]["id"] == result["contact_id"]
    assert lead["_embedded"]["companies"][0]["id"] == result["company_id"]
    contact = api.get(f"/api/v4/contacts/{result['contact_id']}").json()
    assert contact["_embedded"]["companies"][0]["id"] == result["company_id"]
    # Without duplicate control the same phone makes a second contact.
    again = api.post("/api/v4/leads/complex", json=[complex_item()]).json()[0]
    assert again["contact_id"] != result["contact_id"] and again["merged"] is False


def test_complex_add_limits(api: Api) -> None:
    assert api.post("/api/v4/leads/complex", json=[complex_item()] * 51).status_code == 422
    assert api.post("/api/v4/leads/complex", json=[]).status_code == 400


def test_complex_add_unsorted_metadata_lands_in_unsorted(api: Api) -> None:
    item = complex_item()
    item["_embedded"]["metadata"] = {"category": "forms", "form_id": 1, "form_name": "Сайт"}
    result = api.post("/api/v4/leads/complex", json=[item]).json()[0]
    lead = api.get(f"/api/v4/leads/{result['id']}").json()
    pipeline = api.get(f"/api/v4/leads/pipelines/{lead['pipeline_id']}").json()
    status = next(s for s in pipeline["_embedded"]["statuses"] if s["id"] == lead["status_id"])
    assert status["type"] == 1


def test_duplicate_control_merges_by_phone(make_sandbox: Factory) -> None:
    server = make_sandbox(rate_limit=0, duplicate_control=True)
    api = api_for(server)
    first = api.post("/api/v4/leads/complex", json=[complex_item()]).json()[0]
    item = complex_item()
    item["_embedded"]["contacts"][0]["custom_fields_values"] = [
        {"field_code": "PHONE", "values": [{"value": "8 (912) 345-67-89"}]}
    ]
    second = api.post("/api/v4/leads/complex", json=[item]).json()[0]
    assert second["merged"] is True
    assert second["contact_id"] == first["contact_id"]
    # Items inside one request are not compared with each other.
    pair = api.post(
        "/api/v4/leads/complex",
        json=[complex_item(request_id="a"), complex_item(request_id="b")],
    ).json()
    assert all(r["merged"] for r in pair)  # both match the contact that existed before


def test_links_and_notes(api: Api) -> None:
    lead_id = api.post("/api/v4/leads", json=[{"name": "Ссылки"}]).json()["_embedded"]["leads"][0][
        "id"
    ]
    contact_id = api.get("/api/v4/contacts?limit=1").json()["_embedded"]["contacts"][0]["id"]
    linked = api.post(
        f"/api/v4/leads/{lead_id}/link",
        json=[
            {
                "to_entity_id": contact_id,
                "to_entity_type": "contacts",
                "metadata": {"is_main": True},
            }
        ],
    )
    assert linked.status_code == 200
    assert linked.json()["_embedded"]["links"] == [
        {
            "entity_id": lead_id,
            "entity_type": "leads",
            "to_entity_id": contact_id,
            "to_entity_type": "contacts",
            "metadata": {"main_contact": True},
        }
    ]
    links = api.get(f"/api/v4/leads/{lead_id}/links").json()["_embedded"]["links"]
    assert {(x["to_entity_type"], x["to_entity_id"]) for x in links} == {("contacts", contact_id)}
    embedded = api.get(f"/api/v4/leads/{lead_id}?with=contacts").json()["_embedded"]["contacts"]
    assert embedded[0]["id"] == contact_id
    note = api.post(
        f"/api/v4/leads/{lead_id}/notes",
        json=[{"note_type": "common", "params": {"text": "Клиент написал в Telegram"}}],
    )
    assert note.status_code == 200
    created = note.json()["_embedded"]["notes"][0]
    assert created["entity_id"] == lead_id and created["request_id"] == "0"
    mass = api.post(
        "/api/v4/leads/notes",
        json=[{"entity_id": lead_id, "note_type": "common", "params": {"text": "Второе"}}],
    )
    assert mass.status_code == 200
    listed = api.get(f"/api/v4/leads/{lead_id}/notes").json()["_embedded"]["notes"]
    assert [n["params"]["text"] for n in listed] == ["Клиент написал в Telegram", "Второе"]
    assert all(n["note_type"] == "common" for n in listed)
    bad = api.post(f"/api/v4/leads/{lead_id}/notes", json=[{"note_type": "common", "params": {}}])
    assert bad.status_code == 400
    unlinked = api.post(
        f"/api/v4/leads/{lead_id}/unlink",
        json=[{"to_entity_id": contact_id, "to_entity_type": "contacts"}],
    )
    assert unlinked.status_code == 204
    assert api.get(f"/api/v4/leads/{lead_id}/links").status_code == 204


def test_mass_link(api: Api) -> None:
    leads = api.get("/api/v4/leads?limit=2").json()["_embedded"]["leads"]
    contact_id = api.get("/api/v4/contacts?limit=1").json()["_embedded"]["contacts"][0]["id"]
    body = [
        {"entity_id": lead["id"], "to_entity_id": contact_id, "to_entity_type": "contacts"}
        for lead in leads
    ]
    reply = api.post("/api/v4/leads/link", json=body)
    assert reply.status_code == 200 and reply.json()["_total_items"] == 2
    contact = api.get(f"/api/v4/contacts/{contact_id}?with=leads").json()
    assert {lead["id"] for lead in leads} <= {x["id"] for x in contact["_embedded"]["leads"]}


def test_webhook_subscriptions(api: Api, sandbox: SandboxServer) -> None:
    assert api.get("/api/v4/webhooks").status_code == 204
    created = api.post(
        "/api/v4/webhooks",
        json={"destination": "https://example.test/hook", "settings": ["add_lead"], "sort": 10},
    )
    assert created.status_code == 201
    hook = created.json()
    assert list(hook) == [
        "id", "destination", "created_at", "updated_at", "account_id", "created_by", "sort",
        "disabled", "settings",
    ]  # fmt: skip
    assert hook["settings"] == ["add_lead"] and hook["disabled"] is False
    again = api.post(
        "/api/v4/webhooks",
        json={"destination": "https://example.test/hook", "settings": ["status_lead", "add_task"]},
    )
    assert again.status_code == 201 and again.json()["id"] == hook["id"]
    listed = api.get("/api/v4/webhooks").json()
    assert listed["_total_items"] == 1
    assert listed["_embedded"]["webhooks"][0]["settings"] == ["status_lead", "add_task"]
    bad = api.post("/api/v4/webhooks", json={"destination": "https://x.test", "settings": ["nope"]})
    assert bad.status_code == 400
    gone = api.delete("/api/v4/webhooks", json={"destination": "https://example.test/hook"})
    assert gone.status_code == 204
    missing = api.delete("/api/v4/webhooks", json={"destination": "https://example.test/hook"})
    assert missing.status_code == 404


def test_payment_required_blocks_writes_only(make_sandbox: Factory) -> None:
    server = make_sandbox(rate_limit=0, payment_required="writes")
    api = api_for(server)
    assert api.get("/api/v4/leads").status_code == 200
    blocked = api.post("/api/v4/leads", json=[{"name": "x"}])
    assert blocked.status_code == 402
    assert blocked.json() == {
        "title": "Payment Required",
        "type": "https://httpstatus.es/402",
        "status": 402,
        "detail": "Payment required",
    }


def test_events_feed_records_changes(api: Api) -> None:
    lead_id = api.post("/api/v4/leads", json=[{"name": "Событие"}]).json()["_embedded"]["leads"][0][
        "id"
    ]
    api.patch(f"/api/v4/leads/{lead_id}", json={"status_id": 143})
    events = api.get("/api/v4/events?filter[entity][]=lead").json()["_embedded"]["events"]
    kinds = [(e["type"], e["entity_id"]) for e in events]
    assert ("lead_status_changed", lead_id) in kinds and ("lead_added", lead_id) in kinds
    assert all(isinstance(e["id"], str) for e in events)


def test_request_log_records_api_calls_not_admin_calls(api: Api, sandbox: SandboxServer) -> None:
    api.delete(f"{sandbox.url}/_sandbox/requests")
    api.get("/api/v4/leads?limit=2")
    api.post("/api/v4/leads", json=[{"name": "Лог"}])
    log = api.get(f"{sandbox.url}/_sandbox/requests").json()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("GET", "/api/v4/leads?limit=2", 200),
        ("POST", "/api/v4/leads", 200),
    ]
    assert all({"method", "path", "status", "ts"} <= set(e) for e in log)
    assert log[1]["json"] == [{"name": "Лог"}] and log[0]["client_id"] == sandbox.config.client_id


def test_deleted_leads_are_listed_with_only_deleted(api: Api, sandbox: SandboxServer) -> None:
    lead_id = api.get("/api/v4/leads?limit=1").json()["_embedded"]["leads"][0]["id"]
    gone = requests.delete(f"{sandbox.url}/_sandbox/leads/{lead_id}", timeout=5)
    assert gone.status_code == 204
    assert api.get(f"/api/v4/leads/{lead_id}").status_code == 204
    trashed = api.get("/api/v4/leads?with=only_deleted").json()["_embedded"]["leads"]
    assert [(lead["id"], lead["is_deleted"], lead["name"]) for lead in trashed] == [
        (lead_id, True, None)
    ]


def test_injected_faults_fail_the_next_calls(api: Api, sandbox: SandboxServer) -> None:
    fault: dict[str, Any] = {"path": "/api/v4/contacts", "status": 500, "count": 2}
    assert requests.post(f"{sandbox.url}/_sandbox/faults", json=fault, timeout=5).status_code == 201
    first, second, third = (api.get("/api/v4/contacts").status_code for _ in range(3))
    assert (first, second, third) == (500, 500, 200)
    assert api.get("/api/v4/leads").status_code == 200


def test_context_user_header_acts_as_another_user(api: Api, sandbox: SandboxServer) -> None:
    manager = next(u for u in sandbox.account.users if not u.is_admin)
    me = api.get("/api/v4/account", headers={"X-Context-User-ID": str(manager.id)}).json()
    assert me["current_user_id"] == manager.id
    created = api.post(
        "/api/v4/tasks",
        json=[{"text": "От менеджера", "complete_till": 1900000000}],
        headers={"X-Context-User-ID": str(manager.id)},
    ).json()["_embedded"]["tasks"][0]
    task = api.get(f"/api/v4/tasks/{created['id']}").json()
    assert task["responsible_user_id"] == task["created_by"] == manager.id
    assert api.get("/api/v4/account", headers={"X-Context-User-ID": "1"}).status_code == 401
