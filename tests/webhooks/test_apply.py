"""Processing: every documented shape reaches the mirror as amoCRM's current state."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from crm_app.extensions import db
from crm_app.models import AmoConfig, InboxStatus, Note, SyncLog, WebhookDelivery
from crm_app.services.sync import refetch_entities
from tests.webhooks.conftest import (
    SAMPLES,
    Owner,
    event_keys,
    form,
    inbox_rows,
    mirror,
    pending,
)


def _sample(name: str) -> Any:
    text = (SAMPLES / name).read_text()
    if name.endswith(".jsonc"):
        text = re.sub(r"//[^\n]*", "", text)
    return json.loads(text)


def _api_gets(owner: Owner, entity: str) -> list[dict]:
    return [
        r
        for r in owner.server.requests_log(path_prefix=f"/api/v4/{entity}")
        if r["method"] == "GET"
    ]


def _seed_mirror(owner: Owner, entity: str, ids: list[int]) -> None:
    refetch_entities(owner.id, entity, ids)
    for entity_id in ids:
        assert mirror(owner.id, entity, entity_id) is not None


def _assert_lead_matches(owner: Owner, lead_id: int) -> None:
    row = mirror(owner.id, "leads", lead_id)
    record = owner.record("leads", lead_id)
    assert row is not None and record is not None
    assert (row.name, row.status_id, row.pipeline_id, row.price) == (
        record["name"],
        record["status_id"],
        record["pipeline_id"],
        record["price"],
    )


def _post_and_process(owner: Owner, payload: dict[str, Any]) -> WebhookDelivery:
    resp = owner.post(owner.body(payload))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    owner.process()
    return inbox_rows(owner.id)[-1]


# -- every documented payload, with the sandbox's ids in place of the docs' ------------------------


def test_ru_lead_status_sample_mirrors_the_current_state(owner: Owner) -> None:
    lead_id = owner.ids("leads")[0]
    payload = _sample("webhook_leads_status_amocrm.json")
    payload["leads"]["status"]["0"]["id"] = str(lead_id)
    # The hook claims "won" (142); amoCRM's current state is what must land in the mirror.
    owner.sandbox("PATCH", f"leads/{lead_id}", json={"price": 777})
    row = _post_and_process(owner, payload)
    assert row.status == InboxStatus.PROCESSED
    assert row.summary == {"leads:status": 1}
    _assert_lead_matches(owner, lead_id)
    assert mirror(owner.id, "leads", lead_id).price == 777


def test_dp_lead_status_sample(owner: Owner) -> None:
    lead_id = owner.ids("leads")[1]
    payload = _sample("webhook_dp_leads_status_amocrm.json")
    payload["leads"]["status"][0]["id"] = lead_id
    _post_and_process(owner, payload)
    _assert_lead_matches(owner, lead_id)


def test_contact_add_sample(owner: Owner) -> None:
    contact_id = owner.ids("contacts")[0]
    payload = _sample("webhook_contacts_add_amocrm.json")
    payload["contacts"]["add"][0]["id"] = str(contact_id)
    row = _post_and_process(owner, payload)
    assert row.status == InboxStatus.PROCESSED
    assert (
        mirror(owner.id, "contacts", contact_id).name
        == owner.record("contacts", contact_id)["name"]
    )


def test_company_add_sample_is_ignored(owner: Owner) -> None:
    company_id = owner.ids("companies")[0]
    payload = _sample("webhook_company_add_amocrm.json")
    payload["contacts"]["add"][0]["id"] = str(company_id)
    row = _post_and_process(owner, payload)
    assert row.status == InboxStatus.IGNORED
    assert row.summary == {"companies:add": 1}
    assert _api_gets(owner, "companies") == []
    assert mirror(owner.id, "contacts", company_id) is None


def test_task_update_sample_with_extra_nesting(owner: Owner) -> None:
    task_id = owner.ids("tasks")[0]
    payload = _sample("webhook_task_update_amocrm.jsonc")
    payload["task"]["update"][0]["0"]["id"] = str(task_id)
    payload["account"]["id"] = str(owner.account_id)
    payload["account"]["subdomain"] = owner.subdomain
    owner.sandbox("PATCH", f"tasks/{task_id}", json={"text": "Позвонить клиенту"})
    resp = owner.post(form(payload))
    assert resp.status_code == 200
    owner.process()
    assert mirror(owner.id, "tasks", task_id).text == "Позвонить клиенту"


def test_task_add_raw_sample_reaches_the_mirror(owner: Owner) -> None:
    task_id = owner.ids("tasks")[1]
    raw = (SAMPLES / "webhook_task_add_kommo.form.txt").read_text().strip()
    raw = raw.replace(
        "task%5Badd%5D%5B0%5D%5Bid%5D=1564671", f"task%5Badd%5D%5B0%5D%5Bid%5D={task_id}"
    )
    body = owner.body({}) + b"&" + raw.encode()
    assert owner.post(body).status_code == 200
    owner.process()
    assert mirror(owner.id, "tasks", task_id).text == owner.record("tasks", task_id)["text"]


def test_unsorted_accept_and_decline_samples(owner: Owner) -> None:
    lead_a, lead_b = owner.ids("leads")[2:4]
    contact = owner.ids("contacts")[1]
    accept = _sample("webhook_unsorted_delete_accept_amocrm.json")
    accept["unsorted"]["delete"][0]["accept_result"] = {
        "leads": [str(lead_a)],
        "contacts": [str(contact)],
    }
    accept.pop("account")
    _post_and_process(owner, accept)
    _assert_lead_matches(owner, lead_a)
    assert mirror(owner.id, "contacts", contact) is not None

    _seed_mirror(owner, "leads", [lead_b])
    owner.sandbox("DELETE", f"leads/{lead_b}")
    decline = _sample("webhook_unsorted_delete_decline_amocrm.json")
    decline["unsorted"]["delete"][0]["decline_result"] = {"leads": [str(lead_b)]}
    decline.pop("account")
    _post_and_process(owner, decline)
    assert mirror(owner.id, "leads", lead_b) is None


def test_unsorted_add_sample_has_nothing_to_read(owner: Owner) -> None:
    payload = _sample("webhook_unsorted_add_amocrm.json")
    payload.pop("account")
    row = _post_and_process(owner, payload)
    assert row.status == InboxStatus.IGNORED
    assert bytes(row.body).count(b"unsorted%5Badd%5D") > 5  # stored raw, whole


@pytest.mark.parametrize("action", ["add", "update", "restore", "responsible", "status"])
def test_lead_actions(owner: Owner, action: str) -> None:
    lead_id = owner.ids("leads")[4]
    owner.sandbox("PATCH", f"leads/{lead_id}", json={"name": f"после {action}"})
    row = _post_and_process(
        owner, {"leads": {action: [{"id": str(lead_id), "last_modified": "1700000000"}]}}
    )
    assert row.status == InboxStatus.PROCESSED
    assert mirror(owner.id, "leads", lead_id).name == f"после {action}"


@pytest.mark.parametrize("action", ["add", "update", "restore", "responsible"])
def test_contact_actions(owner: Owner, action: str) -> None:
    contact_id = owner.ids("contacts")[2]
    owner.sandbox("PATCH", f"contacts/{contact_id}", json={"name": f"Иван {action}"})
    _post_and_process(owner, {"contacts": {action: [{"id": str(contact_id), "type": "contact"}]}})
    assert mirror(owner.id, "contacts", contact_id).name == f"Иван {action}"


@pytest.mark.parametrize("action", ["add", "update", "responsible"])
def test_task_actions(owner: Owner, action: str) -> None:
    task_id = owner.ids("tasks")[2]
    owner.sandbox("PATCH", f"tasks/{task_id}", json={"text": f"задача {action}"})
    _post_and_process(owner, {"task": {action: [{"id": str(task_id), "element_type": "2"}]}})
    assert mirror(owner.id, "tasks", task_id).text == f"задача {action}"


@pytest.mark.parametrize(
    ("entity", "key", "extra"),
    [
        ("leads", "leads", {"status_id": "143", "pipeline_id": "1"}),
        ("contacts", "contacts", {"type": "contact"}),
        ("tasks", "task", {"element_type": "2"}),
    ],
)
def test_deletes_are_confirmed_then_applied(
    owner: Owner, entity: str, key: str, extra: dict[str, str]
) -> None:
    gone, alive = owner.ids(entity)[-2:]
    _seed_mirror(owner, entity, [gone, alive])
    owner.sandbox("DELETE", f"{entity}/{gone}")
    owner.server.clear_requests()
    row = _post_and_process(
        owner,
        {key: {"delete": [{"id": str(gone), **extra}, {"id": str(alive), **extra}]}},
    )
    assert row.status == InboxStatus.PROCESSED
    assert mirror(owner.id, entity, gone) is None
    # amoCRM still has the other one, so the hook was wrong about it: the mirror keeps it.
    assert mirror(owner.id, entity, alive) is not None
    single = [r for r in _api_gets(owner, entity) if r["path"].split("?")[0].endswith(f"/{gone}")]
    assert len(single) == 1 and single[0]["status"] == 204


def test_ru_delete_wording_with_a_bare_id(owner: Owner) -> None:
    lead_id = owner.ids("leads")[5]
    _seed_mirror(owner, "leads", [lead_id])
    owner.sandbox("DELETE", f"leads/{lead_id}")
    _post_and_process(owner, {"leads": {"delete": str(lead_id)}})
    assert mirror(owner.id, "leads", lead_id) is None


def test_lead_note_reads_only_the_note(owner: Owner) -> None:
    lead_id = owner.ids("leads")[6]
    created = owner.sandbox(
        "POST", f"leads/{lead_id}/notes", json={"note_type": "common", "params": {"text": "Привет"}}
    ).json()
    owner.server.clear_requests()
    row = _post_and_process(
        owner,
        {
            "leads": {
                "note": [
                    {
                        "note": {
                            "id": str(created["id"]),
                            "element_id": str(lead_id),
                            "text": "Привет",
                            "last_modified": str(created["updated_at"]),
                        },
                        "type": "lead",
                    }
                ]
            }
        },
    )
    assert row.status == InboxStatus.PROCESSED
    # The note is read into the notes mirror; the lead itself is not re-read.
    assert [r["path"].split("?")[0] for r in _api_gets(owner, "leads")] == ["/api/v4/leads/notes"]
    note = db.session.get(Note, (owner.id, created["id"]))
    assert note is not None and note.text == "Привет" and note.entity_id == lead_id


def test_unknown_keys_are_stored_and_ignored(owner: Owner) -> None:
    row = _post_and_process(
        owner, {"catalogs": {"add": [{"id": "1"}]}, "talk": {"add": [{"id": "2"}]}}
    )
    assert row.status == InboxStatus.IGNORED
    assert b"catalogs" in bytes(row.body)


# -- coalescing, ordering, duplicates -------------------------------------------------------------


def test_ids_are_coalesced_into_one_read_per_entity(owner: Owner) -> None:
    leads = owner.ids("leads")[:8]
    for n in range(3):
        for lead_id in leads:
            payload = {
                "leads": {"update": [{"id": str(lead_id), "last_modified": str(1_700_000_000 + n)}]}
            }
            assert owner.post(owner.body(payload)).status_code == 200
    owner.server.clear_requests()
    result = owner.process()
    assert result["deliveries"] == 24 and result["changes"] == 24
    gets = _api_gets(owner, "leads")
    assert len(gets) == 1, gets
    for lead_id in leads:
        _assert_lead_matches(owner, lead_id)
    assert event_keys(owner.id) == 24


def test_hooks_out_of_order_still_end_at_the_current_state(owner: Owner) -> None:
    lead_id = owner.ids("leads")[7]
    owner.sandbox("PATCH", f"leads/{lead_id}", json={"price": 1})
    old = owner.record("leads", lead_id)
    owner.sandbox("PATCH", f"leads/{lead_id}", json={"price": 2})
    new = owner.record("leads", lead_id)
    newer = {
        "leads": {
            "update": [{"id": str(lead_id), "price": "2", "updated_at": str(new["updated_at"] + 1)}]
        }
    }
    older = {
        "leads": {
            "update": [{"id": str(lead_id), "price": "1", "updated_at": str(old["updated_at"])}]
        }
    }
    _post_and_process(owner, newer)
    _post_and_process(owner, older)
    assert mirror(owner.id, "leads", lead_id).price == 2


def test_same_change_in_another_encoding_is_a_duplicate(owner: Owner) -> None:
    lead_id = owner.ids("leads")[8]
    fields = {"id": str(lead_id), "name": "x", "last_modified": "1700000123"}
    first = owner.body({"leads": {"update": [fields]}})
    again = owner.body({"leads": {"update": [dict(reversed(list(fields.items())))]}})
    assert first != again
    assert owner.post(first).status_code == 200
    assert owner.post(again).status_code == 200
    owner.process()
    rows = inbox_rows(owner.id)
    assert [r.status for r in rows] == [InboxStatus.PROCESSED, InboxStatus.DUPLICATE]
    assert event_keys(owner.id) == 1


def test_duplicate_after_the_first_was_applied_is_not_counted_twice(owner: Owner) -> None:
    lead_id = owner.ids("leads")[9]
    fields = {"id": str(lead_id), "last_modified": "1700000200"}
    _post_and_process(owner, {"leads": {"status": [fields]}})
    row = _post_and_process(owner, {"leads": {"status": [{**fields, "status_id": "1"}]}})
    assert row.status == InboxStatus.DUPLICATE
    assert event_keys(owner.id) == 1


def test_sync_flags_decide_what_is_applied(owner: Owner) -> None:
    db.session.execute(
        update(AmoConfig).where(AmoConfig.owner_id == owner.id).values(sync_tasks=False)
    )
    db.session.commit()
    task_id = owner.ids("tasks")[3]
    row = _post_and_process(owner, {"task": {"update": [{"id": str(task_id)}]}})
    assert row.status == InboxStatus.IGNORED
    assert mirror(owner.id, "tasks", task_id) is None
    assert _api_gets(owner, "tasks") == []


# -- failures and the log ---------------------------------------------------------------------------


def test_amocrm_failure_keeps_deliveries_pending_then_they_apply(owner: Owner) -> None:
    lead_id = owner.ids("leads")[10]
    owner.sandbox("POST", "faults", json={"path": "/api/v4/leads", "status": 500, "count": 20})
    assert owner.post(owner.body({"leads": {"update": [{"id": str(lead_id)}]}})).status_code == 200
    result = owner.process()
    assert result.get("retry_in", 0) > 0
    [row] = inbox_rows(owner.id)
    assert row.status == InboxStatus.PENDING
    assert row.attempts == 1 and row.next_attempt_at is not None and "amoCRM" in row.error
    assert mirror(owner.id, "leads", lead_id) is None
    # Backed off: a pass right now leaves it alone.
    assert owner.process().get("deliveries", 0) == 0
    log = db.session.scalars(select(SyncLog).where(SyncLog.operation == "webhook")).all()
    assert [entry.status for entry in log] == ["error"]

    owner.sandbox("DELETE", "faults")
    db.session.execute(
        update(WebhookDelivery).values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    db.session.commit()
    owner.process()
    assert pending(owner.id) == 0
    _assert_lead_matches(owner, lead_id)


def test_gives_up_after_max_attempts(owner: Owner, monkeypatch) -> None:
    from crm_app.services.webhooks import apply

    monkeypatch.setattr(apply, "MAX_ATTEMPTS", 2)
    # A status the client does not retry by itself keeps this test quick.
    owner.sandbox("POST", "faults", json={"path": "/api/v4/leads", "status": 418, "count": 50})
    owner.post(owner.body({"leads": {"update": [{"id": str(owner.ids("leads")[11])}]}}))
    for _ in range(2):
        owner.process()
        db.session.execute(update(WebhookDelivery).values(next_attempt_at=None))
        db.session.commit()
    [row] = inbox_rows(owner.id)
    assert row.status == InboxStatus.FAILED and row.attempts == 2


def test_not_connected_owner_keeps_rows_for_later(owner: Owner) -> None:
    from crm_app.services.tokens import delete_tokens

    owner.post(owner.body({"leads": {"update": [{"id": str(owner.ids("leads")[12])}]}}))
    delete_tokens(owner.id)
    assert owner.process().get("retry_in")
    [row] = inbox_rows(owner.id)
    assert row.status == InboxStatus.PENDING and "NotConnected" in row.error


def test_sync_log_entries_carry_counts_and_merge_bursts(owner: Owner) -> None:
    leads = owner.ids("leads")[13:16]
    _post_and_process(owner, {"leads": {"update": [{"id": str(i)} for i in leads]}})
    _post_and_process(owner, {"task": {"add": [{"id": str(owner.ids("tasks")[4])}]}})
    [entry] = db.session.scalars(select(SyncLog).where(SyncLog.operation == "webhook")).all()
    assert entry.status == "success"
    details = entry.details
    assert details["deliveries"] == 2 and details["changes"] == 4 and details["passes"] == 2
    assert details["upserted"] == {"leads": 3, "tasks": 1}
    assert details["events"] == {"leads:update": 3, "tasks:add": 1}


# -- the raw derived bodies themselves, byte for byte except the ids -------------------------------

RAW_SAMPLES = {
    # sample → [(placeholder id in the body, entity whose sandbox id replaces it)]
    "webhook_leads_status_amocrm.urlencoded.txt": [("25399013", "leads")],
    "webhook_dp_leads_status_amocrm.urlencoded.txt": [("4831596", "leads")],
    "webhook_contacts_add_amocrm.urlencoded.txt": [("10952709", "contacts")],
    "webhook_company_add_amocrm.urlencoded.txt": [("10959143", "companies")],
    "webhook_unsorted_delete_accept_amocrm.urlencoded.txt": [
        ("2132111", "leads"),
        ("3454532", "contacts"),
    ],
}


@pytest.mark.parametrize("name", sorted(RAW_SAMPLES))
def test_raw_sample_bodies_reach_the_mirror(owner: Owner, name: str) -> None:
    from tests.webhooks.conftest import sample_bytes, with_account

    raw = sample_bytes(name).strip()
    assert sorted(RAW_SAMPLES) == sorted(p.name for p in SAMPLES.glob("webhook_*.urlencoded.txt"))
    targets: list[tuple[str, int]] = []
    for n, (placeholder, entity) in enumerate(RAW_SAMPLES[name]):
        real = owner.ids(entity)[n]
        assert f"={placeholder}".encode() in raw
        raw = raw.replace(f"={placeholder}".encode(), f"={real}".encode())
        targets.append((entity, real))
    if b"account%5Bid%5D" in raw:
        raw = raw.replace(
            b"account%5Bid%5D=1312313", f"account%5Bid%5D={owner.account_id}".encode()
        )
        raw = raw.replace(
            b"account%5Bsubdomain%5D=test", f"account%5Bsubdomain%5D={owner.subdomain}".encode()
        )
    else:
        raw = with_account(raw, owner.account_id, owner.subdomain)
    assert raw.startswith(b"account%5B") or b"&account%5B" in raw
    assert owner.post(raw).status_code == 200
    owner.process()
    [row] = inbox_rows(owner.id)
    assert bytes(row.body) == raw
    for entity, entity_id in targets:
        if entity == "companies":
            assert row.status == InboxStatus.IGNORED
            continue
        assert row.status == InboxStatus.PROCESSED
        stored = mirror(owner.id, entity, entity_id)
        record = owner.record(entity, entity_id)
        assert stored is not None and stored.name == record["name"]
        if entity == "leads":
            _assert_lead_matches(owner, entity_id)
