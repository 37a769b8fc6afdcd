"""End to end with a real Celery worker: new, repeat, concurrent copies, dedup, outages."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import InboundPerson, Lead, SyncLog
from tests.inbound.conftest import (
    api_calls,
    contact_cf,
    log_mark,
    mark_synced,
    notes_of_lead,
    post_inbound,
    records,
    wait_done,
    warm_fields,
)


def _submit(client, key, body, **headers):
    resp = post_inbound(client, key, body, **headers)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    assert resp.json["status"] == "queued"
    return resp.json["id"]


def test_new_person_then_repeat_then_closed_deal(client, sandbox, owner, api_key, worker):
    warm_fields(owner)
    mark_synced(owner)  # a synced mirror answers the dedup lookups without API calls
    worker()
    before_contacts, before_leads = (
        set(records(sandbox, "contacts")),
        set(records(sandbox, "leads")),
    )

    # 1. A brand-new person: contact and deal in one leads/complex call, the message as a note.
    mark = log_mark(sandbox)
    rid = _submit(
        client,
        api_key,
        {
            "channel": "telegram",
            "external_id": 555000111,
            "name": "Иван Петров",
            "username": "@ivan_p",
            "phone": "8 (916) 000-11-22",
            "message": "Здравствуйте, сколько стоит доставка?",
            "utm": {"utm_source": "telegram", "utm_campaign": "spring"},
            "page_url": "https://shop.example.ru/delivery",
        },
    )
    (first,) = wait_done(rid)
    assert first.status == "created", first.error
    assert first.outcome == "new"
    assert set(records(sandbox, "contacts")) - before_contacts == {first.contact_id}
    assert set(records(sandbox, "leads")) - before_leads == {first.lead_id}
    lead = records(sandbox, "leads")[first.lead_id]
    pipeline = sandbox.account.main_pipeline
    assert (lead["pipeline_id"], lead["status_id"]) == (pipeline.id, pipeline.first_status().id)
    assert (first.contact_id, True) in tuple(lead["contacts"])
    cf = contact_cf(sandbox, first.contact_id)
    assert cf["TELEGRAM_ID"] == ["555000111"]
    assert cf["PHONE"] == ["+79160001122"]
    assert cf.get("TELEGRAM_USERNAME") == ["ivan_p"]
    notes = notes_of_lead(sandbox, first.lead_id)
    assert len(notes) == 1
    assert "сколько стоит доставка" in notes[0]["params"]["text"]
    assert "utm_campaign=spring" in notes[0]["params"]["text"]
    assert [(c["method"], c["path"].split("?")[0]) for c in api_calls(sandbox, mark)] == [
        ("POST", "/api/v4/leads/complex"),
        ("POST", "/api/v4/leads/notes"),
    ]
    log = db.session.scalars(select(SyncLog).where(SyncLog.operation == "create_lead")).all()
    assert [(e.status, e.details["lead_id"], e.details["contact_id"]) for e in log] == [
        ("success", first.lead_id, first.contact_id)
    ]
    got = client.get(f"/api/crm/inbound/{rid}", headers={"Authorization": f"Bearer {api_key}"})
    assert got.status_code == 200
    assert got.json["status"] == "created"
    assert (got.json["contact_id"], got.json["lead_id"]) == (first.contact_id, first.lead_id)

    # 2. The same person writes again: one call, a note on the open deal.
    body = {"channel": "telegram", "external_id": "555000111", "message": "Есть новости?"}
    mark = log_mark(sandbox)
    (second,) = wait_done(_submit(client, api_key, body))
    assert second.status == "created", second.error
    assert second.outcome == "note"
    assert (second.contact_id, second.lead_id) == (first.contact_id, first.lead_id)
    assert set(records(sandbox, "leads")) - before_leads == {first.lead_id}
    texts = [n["params"]["text"] for n in notes_of_lead(sandbox, first.lead_id)]
    assert len(texts) == 2 and "Есть новости?" in texts[1]
    assert [(c["method"], c["path"].split("?")[0]) for c in api_calls(sandbox, mark)] == [
        ("POST", "/api/v4/leads/notes")
    ]

    # 3. A manager won the deal (the mirror learns it from the sync or a webhook): the next
    # message opens a new deal for the same contact.
    requests.patch(
        f"{sandbox.url}/_sandbox/leads/{first.lead_id}", json={"status_id": 142}, timeout=5
    )
    row = db.session.get(Lead, (owner, first.lead_id))
    row.status_id = 142
    db.session.commit()
    (third,) = wait_done(_submit(client, api_key, {**body, "message": "Хочу ещё"}))
    assert third.status == "created", third.error
    assert third.outcome == "new_deal"
    assert third.contact_id == first.contact_id
    assert third.lead_id not in (first.lead_id, None)
    lead = records(sandbox, "leads")[third.lead_id]
    assert (first.contact_id, True) in tuple(lead["contacts"])
    assert len(notes_of_lead(sandbox, third.lead_id)) == 1
    assert set(records(sandbox, "contacts")) - before_contacts == {first.contact_id}


def test_fifty_identical_requests_at_once_make_one_contact_and_one_deal(
    app, sandbox, owner, api_key, worker
):
    worker(concurrency=4)
    before_contacts, before_leads = (
        set(records(sandbox, "contacts")),
        set(records(sandbox, "leads")),
    )
    body = {
        "channel": "widget",
        "external_id": "same-visitor",
        "name": "Мария",
        "email": "maria@example.org",
        "message": "Перезвоните мне",
    }

    def one(_: int) -> str:
        with app.test_client() as c:
            resp = post_inbound(c, api_key, body)
            assert resp.status_code == 202, resp.get_data(as_text=True)
            return resp.json["id"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(one, range(50)))
    assert len(set(ids)) == 50
    done = wait_done(ids, timeout=90)
    assert {r.status for r in done} == {"created"}
    new_contacts = set(records(sandbox, "contacts")) - before_contacts
    new_leads = set(records(sandbox, "leads")) - before_leads
    assert len(new_contacts) == 1
    assert len(new_leads) == 1
    assert {(r.contact_id, r.lead_id) for r in done} == {
        (next(iter(new_contacts)), next(iter(new_leads)))
    }
    outcomes = sorted(r.outcome for r in done)
    assert outcomes.count("new") == 1 and outcomes.count("duplicate") == 49
    assert len(notes_of_lead(sandbox, next(iter(new_leads)))) == 1
    people = db.session.scalars(select(InboundPerson).where(InboundPerson.owner_id == owner)).all()
    assert len(people) == 1


def test_amocrm_down_then_up_ends_created_without_duplicates(
    client, sandbox, owner, api_key, worker
):
    warm_fields(owner)
    worker()
    before_leads = set(records(sandbox, "leads"))
    # Three 503s on the create, a 429 on the note: retried with backoff, nothing lost.
    requests.post(
        f"{sandbox.url}/_sandbox/faults",
        json={"path": "/api/v4/leads/complex", "status": 503, "count": 3},
        timeout=5,
    )
    requests.post(
        f"{sandbox.url}/_sandbox/faults",
        json={"path": "/api/v4/leads/notes", "status": 429, "count": 1},
        timeout=5,
    )
    body = {"channel": "telegram", "external_id": "700700", "name": "Пётр", "message": "Алло"}
    (req,) = wait_done(_submit(client, api_key, body), timeout=90)
    assert req.status == "created", req.error
    assert req.outcome == "new"
    assert req.attempts >= 2
    new_leads = set(records(sandbox, "leads")) - before_leads
    assert new_leads == {req.lead_id}
    assert len(notes_of_lead(sandbox, req.lead_id)) == 1
    statuses = [
        c["status"] for c in api_calls(sandbox) if c["path"].startswith("/api/v4/leads/complex")
    ]
    assert statuses.count(503) == 3 and statuses.count(200) == 1
    # The first failure is visible in the sync log, then the success.
    log = db.session.scalars(
        select(SyncLog).where(SyncLog.operation == "create_lead").order_by(SyncLog.id)
    ).all()
    assert [e.status for e in log] == ["error", "success"]
    assert log[0].details.get("retrying") is True


def test_dedup_by_phone_and_by_email_against_existing_amocrm_contacts(
    client, sandbox, owner, api_key, worker
):
    # The mirror was never synced, so amoCRM is searched. A decoy holds the same digits in
    # another field (query= matches any field); the real contact stores the phone as 8XXXXXXXXXX.
    def add_contact(body):
        resp = requests.post(f"{sandbox.url}/_sandbox/contacts", json=body, timeout=5)
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]

    decoy = add_contact(
        {
            "name": "Склад 9261234567",
            "custom_fields_values": [
                {"field_code": "POSITION", "values": [{"value": "тел 9261234567"}]}
            ],
        }
    )
    by_phone = add_contact(
        {
            "name": "Сергей",
            "custom_fields_values": [
                {"field_code": "PHONE", "values": [{"value": "89261234567", "enum_code": "MOB"}]}
            ],
        }
    )
    by_email = add_contact(
        {
            "name": "Ольга",
            "custom_fields_values": [
                {
                    "field_code": "EMAIL",
                    "values": [{"value": "Olga.K@Example.com", "enum_code": "WORK"}],
                }
            ],
        }
    )
    assert decoy < by_phone
    worker()
    contacts_before = set(records(sandbox, "contacts"))
    ids = [
        _submit(client, api_key, {"channel": "widget", "external_id": "w-phone", "name": "Сергей",
                                  "phone": "+7 926 123 45 67", "message": "Нужна консультация"}),
        _submit(client, api_key, {"channel": "widget", "external_id": "w-mail",
                                  "email": "olga.k@example.com", "message": "Счёт"}),
    ]  # fmt: skip
    phone_req, email_req = wait_done(ids)
    assert phone_req.status == email_req.status == "created", (phone_req.error, email_req.error)
    assert phone_req.contact_id == by_phone
    assert email_req.contact_id == by_email
    # No new contacts; each got a new deal linked to the existing contact.
    assert set(records(sandbox, "contacts")) == contacts_before
    for req in (phone_req, email_req):
        assert req.outcome == "new_deal"
        assert (req.contact_id, True) in tuple(records(sandbox, "leads")[req.lead_id]["contacts"])
