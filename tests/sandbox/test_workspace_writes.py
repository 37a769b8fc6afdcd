"""Deal edits, notes, tasks and loss reasons as the workspace writes them, with their webhooks.

Request and answer shapes follow the documented examples in tests/fixtures/amocrm/
(https://www.amocrm.ru/developers/content/crm_platform/leads-api, …/events-and-notes,
…/tasks-api).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from crm_app.sandbox import SandboxServer
from tests.sandbox.helpers import Api

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "amocrm"


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def _lead(sandbox: SandboxServer, **match: Any) -> dict[str, Any]:
    acc = sandbox.account
    for record in acc.tables["leads"].records.values():
        if all(record.get(k) == v for k, v in match.items()):
            return record
    raise AssertionError(f"no lead with {match}")


def _errors(reply: requests.Response) -> list[dict[str, Any]]:
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["detail"] == "Request validation failed"
    return [e for item in body["validation-errors"] for e in item["errors"]]


def test_close_and_move_like_the_documented_batch(api: Api, sandbox: SandboxServer) -> None:
    acc = sandbox.account
    pipeline = acc.main_pipeline
    other = next(p for p in acc.pipelines if not p.is_main)
    reason = next(iter(acc.loss_reasons))
    first, second = sorted(acc.tables["leads"].records)[:2]
    body = _fixture("leads_update_close_and_move_request.json")
    body[0].update(id=first, pipeline_id=pipeline.id, loss_reason_id=reason)
    body[1].update(id=second, pipeline_id=other.id, status_id=other.first_status().id)
    reply = api.patch("/api/v4/leads", json=body)
    assert reply.status_code == 200, reply.text
    items = reply.json()["_embedded"]["leads"]
    assert [i["id"] for i in items] == [first, second]
    lost = acc.tables["leads"].get(first)
    assert (lost["status_id"], lost["loss_reason_id"]) == (143, reason)
    assert lost["closed_at"] == 1589297221  # given, so kept
    moved = acc.tables["leads"].get(second)
    assert (moved["pipeline_id"], moved["price"]) == (other.id, 50000)
    # with=loss_reason embeds a one-element array, as in the docs' example.
    embedded = api.get(f"/api/v4/leads/{first}?with=loss_reason").json()["_embedded"]
    shape = _fixture("lead_embedded_loss_reason.json")["loss_reason"][0]
    assert set(embedded["loss_reason"][0]) == set(shape)
    assert embedded["loss_reason"][0]["id"] == reason


def test_lead_patch_validation(api: Api, sandbox: SandboxServer) -> None:
    acc = sandbox.account
    main = acc.main_pipeline
    other = next(p for p in acc.pipelines if not p.is_main)
    lead_id = _lead(sandbox, pipeline_id=main.id, status_id=main.first_status().id)["id"]
    # A status of another pipeline together with this pipeline: not a valid choice.
    reply = api.patch(
        f"/api/v4/leads/{lead_id}",
        json={"pipeline_id": main.id, "status_id": other.first_status().id},
    )
    assert _errors(reply) == [
        {
            "code": "NotSupportedChoice",
            "path": "status_id",
            "detail": reply.json()["validation-errors"][0]["errors"][0]["detail"],
        }
    ]
    # The unsorted stage cannot be set by PATCH.
    reply = api.patch(f"/api/v4/leads/{lead_id}", json={"status_id": main.unsorted_status().id})
    assert [e["path"] for e in _errors(reply)] == ["status_id"]
    # An unknown loss reason.
    reply = api.patch(f"/api/v4/leads/{lead_id}", json={"status_id": 143, "loss_reason_id": 1})
    assert [e["path"] for e in _errors(reply)] == ["loss_reason_id"]
    # One bad item fails the whole batch; the path's index is the position in the array.
    good = {"id": lead_id, "price": 5}
    reply = api.patch("/api/v4/leads", json=[good, {"id": lead_id, "status_id": 1}])
    problems = reply.json()["validation-errors"]
    assert reply.status_code == 400 and problems[0]["request_id"] == "1"
    assert acc.tables["leads"].get(lead_id)["price"] != 5
    # 142 without pipeline_id closes the deal in its current pipeline.
    assert api.patch(f"/api/v4/leads/{lead_id}", json={"status_id": 142}).status_code == 200
    won = acc.tables["leads"].get(lead_id)
    assert (won["status_id"], won["pipeline_id"]) == (142, main.id) and won["closed_at"]


def test_unsorted_lead_keeps_its_stage_unless_status_is_null(
    api: Api, sandbox: SandboxServer
) -> None:
    acc = sandbox.account
    main = acc.main_pipeline
    unsorted = main.unsorted_status().id
    lead_id = api.post("/api/v4/leads", json=[{"name": "Заявка"}]).json()["_embedded"]["leads"][0][
        "id"
    ]
    with acc.lock:
        acc.tables["leads"].put(dict(acc.tables["leads"].get(lead_id), status_id=unsorted))
    reply = api.patch(f"/api/v4/leads/{lead_id}", json={"status_id": unsorted})
    expected = _fixture("error_400_validation_status_unsorted_practitioner.json")
    assert reply.json()["validation-errors"] == expected["validation-errors"]
    assert api.patch(f"/api/v4/leads/{lead_id}", json={"name": "x"}).status_code == 200
    assert acc.tables["leads"].get(lead_id)["status_id"] == unsorted
    assert api.patch(f"/api/v4/leads/{lead_id}", json={"status_id": None}).status_code == 200
    assert acc.tables["leads"].get(lead_id)["status_id"] == main.first_status().id


def test_loss_reasons_list_and_switch(api: Api, sandbox: SandboxServer) -> None:
    body = api.get("/api/v4/leads/loss_reasons").json()
    reasons = body["_embedded"]["loss_reasons"]
    assert body["_total_items"] == len(reasons) == 3
    assert set(reasons[0]) == {"id", "name", "sort", "created_at", "updated_at", "_links"}
    one = api.get(f"/api/v4/leads/loss_reasons/{reasons[0]['id']}").json()
    assert one["name"] == reasons[0]["name"]
    sandbox.config.update({"loss_reasons_api": False})
    assert api.get("/api/v4/leads/loss_reasons").status_code == 404


def test_note_update_by_batch_and_by_id(api: Api, sandbox: SandboxServer) -> None:
    lead_id = sorted(sandbox.account.tables["leads"].records)[0]
    created = api.post(
        f"/api/v4/leads/{lead_id}/notes",
        json=[
            {"note_type": "sms_in", "params": {"text": "a", "phone": "+79990000000"}},
            {"note_type": "sms_out", "params": {"text": "b", "phone": "+79990000000"}},
        ],
    ).json()["_embedded"]["notes"]
    body = _fixture("notes_update_request.json")
    for item, note in zip(body, created, strict=True):
        item["id"] = note["id"]
    sandbox.advance_clock(3)
    reply = api.patch("/api/v4/leads/notes", json=body)
    assert reply.status_code == 200, reply.text
    items = reply.json()["_embedded"]["notes"]
    assert all(set(i) >= {"id", "entity_id", "updated_at", "_links"} for i in items)
    stored = sandbox.account.tables["notes"].get(created[0]["id"])
    assert (
        stored["params"]["text"] == "Новое входящие SMS"
        and stored["updated_at"] == items[0]["updated_at"]
    )
    one = api.patch(
        f"/api/v4/leads/{lead_id}/notes/{created[1]['id']}",
        json={"note_type": "sms_out", "params": {"text": "c", "phone": "+79990000000"}},
    )
    assert one.status_code == 200 and one.json()["id"] == created[1]["id"]
    # A note of another entity, or an unknown id, is refused.
    reply = api.patch(
        "/api/v4/contacts/notes", json=[{"id": created[0]["id"], "params": {"text": "x"}}]
    )
    assert [e["path"] for e in _errors(reply)] == ["id"]


def test_task_completion_with_result_and_events(api: Api, sandbox: SandboxServer) -> None:
    task_id = next(
        r["id"] for r in sandbox.account.tables["tasks"].records.values() if not r["is_completed"]
    )
    reply = api.patch(f"/api/v4/tasks/{task_id}", json=_fixture("task_complete_request.json"))
    assert reply.status_code == 200, reply.text
    task = sandbox.account.tables["tasks"].get(task_id)
    assert task["is_completed"] and task["result"] == "Удалось связаться с клиентом"
    types = [
        e["type"]
        for e in api.get(f"/api/v4/events?filter[entity]=task&filter[entity_id]={task_id}").json()[
            "_embedded"
        ]["events"]
    ]
    assert "task_completed" in types and "task_result_added" in types
    # Task types come from the account.
    embedded = api.get("/api/v4/account?with=task_types").json()["_embedded"]["task_types"]
    assert {t["code"] for t in embedded} >= {"FOLLOW_UP", "MEETING"}
    reply = api.patch(f"/api/v4/tasks/{task_id}", json={"task_type_id": 999})
    assert [e["path"] for e in _errors(reply)] == ["task_type_id"]


def test_note_webhook_has_the_documented_shape(api: Api, sandbox: SandboxServer, receiver) -> None:
    from crm_app.services.webhooks.parse import decode_form

    assert api.post(
        "/api/v4/webhooks", json={"destination": receiver.url, "settings": ["note_lead"]}
    ).status_code in (200, 201)
    lead_id = sorted(sandbox.account.tables["leads"].records)[0]
    reply = requests.post(
        f"{sandbox.url}/_sandbox/leads/{lead_id}/notes",
        json={"note_type": "common", "params": {"text": "Позвонить"}},
        timeout=5,
    )
    assert reply.status_code == 201
    got = receiver.wait(1)
    form = decode_form(got[0].body)
    note = form["leads"]["note"][0]["note"]
    documented = _fixture("webhook_leads_note_kommo.json")["leads"]["note"][0]["note"]
    assert set(documented) <= set(note)
    assert note["note_type"] == "4" and note["element_type"] == "2"
    assert json.loads(note["metadata"])["event_source"]["type"] == 1
    assert all(isinstance(v, str) for v in note.values())


def test_a_write_can_land_while_its_answer_is_lost(api: Api, sandbox: SandboxServer) -> None:
    lead_id = sorted(sandbox.account.tables["leads"].records)[0]
    requests.post(
        f"{sandbox.url}/_sandbox/faults",
        json={"path": "/api/v4/leads", "method": "PATCH", "status": 504, "after": True},
        timeout=5,
    )
    reply = api.patch(f"/api/v4/leads/{lead_id}", json={"price": 4242})
    assert reply.status_code == 504
    assert sandbox.account.tables["leads"].get(lead_id)["price"] == 4242
    requests.post(
        f"{sandbox.url}/_sandbox/faults",
        json={"path": "/api/v4/leads", "method": "PATCH", "status": 429, "count": 2},
        timeout=5,
    )
    assert api.patch(f"/api/v4/leads/{lead_id}", json={"price": 1}).status_code == 429
    assert sandbox.account.tables["leads"].get(lead_id)["price"] == 4242
