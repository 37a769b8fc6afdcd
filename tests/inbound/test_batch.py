"""Batched first contacts with a real Celery worker and the sandbox over HTTP.

Requests are stored first and handed to the worker with one kick, so the batch boundaries are
deterministic (the window is exercised by the burst benchmark and by the lone-request test).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import requests
from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import Contact, InboundPerson, InboundRequest
from crm_app.services.inbound import enqueue, submit
from tests.inbound.conftest import (
    WORKER_ENV,
    api_calls,
    log_mark,
    mark_synced,
    notes_of_lead,
    records,
    wait_done,
    warm_fields,
)

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def _paths(calls: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["method"], c["path"].split("?")[0]) for c in calls]


def _store(owner: int, bodies: list[dict[str, Any]]) -> list[InboundRequest]:
    return [submit(owner, body, enqueue_now=False) for body in bodies]


def _person(n: int) -> dict[str, Any]:
    return {"channel": "widget", "external_id": f"v-{n}", "name": f"Гость {n}",
            "phone": f"+7926{n:07d}", "message": f"Вопрос {n}"}  # fmt: skip


def test_sixty_people_cost_two_complex_and_two_note_calls(sandbox, owner, worker):
    warm_fields(owner)
    mark_synced(owner)
    worker()
    leads_before = set(records(sandbox, "leads"))
    stored = _store(owner, [_person(n) for n in range(60)])
    mark = log_mark(sandbox)
    enqueue(stored[0].id)
    done = wait_done([r.public_id for r in stored])
    assert [(r.status, r.outcome) for r in done] == [("created", "new")] * 60
    assert sorted(_paths(api_calls(sandbox, mark))) == sorted(
        [("POST", "/api/v4/leads/complex")] * 2 + [("POST", "/api/v4/leads/notes")] * 2
    )
    # amoCRM's answer was matched by request_id: each deal carries its own person's ref and
    # contact, and holds exactly that person's message.
    leads = records(sandbox, "leads")
    contacts = records(sandbox, "contacts")
    assert set(leads) - leads_before == {r.lead_id for r in done}
    phone = sandbox.account.field_by_code("contacts", "PHONE")
    for req in done:
        person = db.session.get(InboundPerson, req.person_id)
        assert person.ref in leads[req.lead_id]["name"]
        assert (req.contact_id, True) in tuple(leads[req.lead_id]["contacts"])
        values = dict(contacts[req.contact_id]["cf"])[phone.id]
        assert values[0][0] == req.payload["phone"]
        (note,) = notes_of_lead(sandbox, int(req.lead_id or 0))
        assert req.payload["message"] in note["params"]["text"]


def test_same_human_inside_one_window_is_one_contact_and_one_deal(sandbox, owner, worker):
    warm_fields(owner)
    mark_synced(owner)
    worker()
    contacts_before, leads_before = (
        set(records(sandbox, "contacts")),
        set(records(sandbox, "leads")),
    )
    copies: list[dict[str, Any]] = [{"channel": "telegram", "external_id": 7007, "name": "Копия",
               "message": "Один и тот же текст"}] * 50  # fmt: skip
    channels: list[dict[str, Any]] = [
        {"channel": "telegram", "external_id": 8008, "name": "Ольга", "phone": "+79031112233",
         "message": "Из бота"},
        {"channel": "widget", "external_id": "w-olga", "phone": "8 903 111-22-33",
         "email": "Olga@Example.ru", "message": "С сайта"},
        {"channel": "widget", "external_id": "w-olga-2", "email": "olga@example.ru",
         "message": "Ещё раз с сайта"},
    ]  # fmt: skip
    stored = _store(owner, copies + channels)
    mark = log_mark(sandbox)
    enqueue(stored[0].id)
    done = wait_done([r.public_id for r in stored])
    assert all(r.status == "created" for r in done), [(r.status, r.error) for r in done]
    assert len(set(records(sandbox, "contacts")) - contacts_before) == 2
    new_leads = set(records(sandbox, "leads")) - leads_before
    assert len(new_leads) == 2
    copy_reqs, olga = done[:50], done[50:]
    assert len({(r.contact_id, r.lead_id) for r in copy_reqs}) == 1
    assert sorted(str(r.outcome) for r in copy_reqs) == ["duplicate"] * 49 + ["new"]
    assert len(notes_of_lead(sandbox, int(copy_reqs[0].lead_id or 0))) == 1
    assert len({(r.contact_id, r.lead_id) for r in olga}) == 1
    assert [r.outcome for r in olga] == ["new", "note", "note"]
    assert len(notes_of_lead(sandbox, int(olga[0].lead_id or 0))) == 3
    assert _paths(api_calls(sandbox, mark)) == [
        ("POST", "/api/v4/leads/complex"),
        ("POST", "/api/v4/leads/notes"),
    ]


def test_one_refused_item_fails_alone_and_the_rest_are_sent_at_once(
    client, sandbox, owner, api_key, worker
):
    warm_fields(owner)
    mark_synced(owner)
    # The mirror still holds a contact a manager has since deleted in amoCRM: a deal attached to
    # it is refused (the item's `_embedded.contacts.0.id`), the other deals are not affected.
    gone = requests.post(f"{sandbox.url}/_sandbox/contacts", json={"name": "Удалённый"},
                         timeout=5).json()["id"]  # fmt: skip
    requests.delete(f"{sandbox.url}/_sandbox/contacts/{gone}", timeout=5).raise_for_status()
    db.session.add(Contact(owner_id=owner, id=gone, name="Удалённый", phone="+79990000001",
                           phones=["+79990000001"], raw={}))  # fmt: skip
    db.session.commit()
    worker()
    bodies = [_person(n) for n in range(4)]
    bodies.insert(2, {"channel": "widget", "external_id": "stale", "phone": "+79990000001",
                      "message": "Здравствуйте"})  # fmt: skip
    stored = _store(owner, bodies)
    mark = log_mark(sandbox)
    enqueue(stored[0].id)
    done = wait_done([r.public_id for r in stored])
    bad = done.pop(2)
    assert (bad.status, bad.outcome) == ("failed", "rejected")
    assert "_embedded.contacts.0.id" in bad.error
    assert [(r.status, r.outcome) for r in done] == [("created", "new")] * 4
    assert _paths(api_calls(sandbox, mark)) == [
        ("POST", "/api/v4/leads/complex"),  # 400 naming the stale item
        ("POST", "/api/v4/leads/complex"),  # the other four, at once
        ("POST", "/api/v4/leads/notes"),
    ]
    # The inbound panel's source shows the reason.
    resp = client.get(f"/api/crm/inbound/{bad.public_id}",
                      headers={"Authorization": f"Bearer {api_key}"})  # fmt: skip
    assert resp.json["status"] == "failed" and "_embedded.contacts.0.id" in resp.json["error"]


def test_worker_killed_between_call_and_commit_creates_nobody_twice(sandbox, owner, celery_worker):
    warm_fields(owner)
    mark_synced(owner)
    env = dict(WORKER_ENV, INBOUND_LOCK_TTL_SECONDS="3", INBOUND_CREATE_GRACE_SECONDS="1")
    first = celery_worker(name="doomed", concurrency=1, pool="solo", env=env)
    leads_before = set(records(sandbox, "leads"))
    contacts_before = set(records(sandbox, "contacts"))
    stored = _store(owner, [_person(100 + n) for n in range(5)])
    # amoCRM takes its time answering; the worker dies while it waits, amoCRM still creates.
    requests.post(f"{sandbox.url}/_sandbox/faults", json={"path": "/api/v4/leads/complex",
                  "status": 200, "delay": 2.0, "count": 1}, timeout=5).raise_for_status()  # fmt: skip
    mark = log_mark(sandbox)
    enqueue(stored[0].id)
    deadline = time.monotonic() + 30
    while True:
        db.session.rollback()
        started = db.session.scalars(
            select(InboundPerson.create_started_at).where(
                InboundPerson.id.in_([r.person_id for r in stored])
            )
        ).all()
        if all(started):
            break
        assert time.monotonic() < deadline, "the worker never sent leads/complex"
        time.sleep(0.05)
    time.sleep(0.3)  # the call is on the wire, held by the sandbox
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    deadline = time.monotonic() + 15
    while len(set(records(sandbox, "leads")) - leads_before) < 5:
        assert time.monotonic() < deadline, "the sandbox did not finish the create"
        time.sleep(0.1)
    db.session.rollback()
    assert all(
        r.status == "queued" and r.lead_id is None
        for r in db.session.scalars(
            select(InboundRequest).where(InboundRequest.id.in_([r.id for r in stored]))
        )
    )
    celery_worker(name="heir", concurrency=2, env=env)
    time.sleep(9)  # the dead runner's lock (3 s) and in-flight mark (TTL + 5 s) run out
    enqueue(stored[0].id)  # what the beat's inbound.retry_stale does every minute
    done = wait_done([r.public_id for r in stored], timeout=60)
    assert [(r.status, r.outcome) for r in done] == [("created", "new")] * 5
    new_leads = set(records(sandbox, "leads")) - leads_before
    assert new_leads == {r.lead_id for r in done}  # adopted, not created again
    assert len(set(records(sandbox, "contacts")) - contacts_before) == 5
    paths = _paths(api_calls(sandbox, mark))
    assert paths.count(("POST", "/api/v4/leads/complex")) == 1
    assert paths.count(("GET", "/api/v4/leads")) == 1  # one read of the newest deals found all
    for req in done:
        assert len(notes_of_lead(sandbox, int(req.lead_id or 0))) == 1


def test_lone_request_through_the_api_is_a_batch_of_one(client, sandbox, owner, api_key, worker):
    warm_fields(owner)
    mark_synced(owner)
    worker()
    mark = log_mark(sandbox)
    resp = client.post("/api/crm/inbound", json=_person(999),
                       headers={"Authorization": f"Bearer {api_key}"})  # fmt: skip
    assert resp.status_code == 202
    (req,) = wait_done(resp.json["id"])
    assert (req.status, req.outcome) == ("created", "new")
    assert _paths(api_calls(sandbox, mark)) == [
        ("POST", "/api/v4/leads/complex"),
        ("POST", "/api/v4/leads/notes"),
    ]


def test_items_merged_by_amocrm_resolve_to_one_contact_and_deal(sandbox, owner):
    """amoCRM's duplicate control (sandbox switches; whether it also merges inside one request
    is UNCONFIRMED) answers one entry naming several request_ids, or merges into an existing
    contact: every unit named gets that contact and deal."""
    from crm_app.services.inbound import process

    warm_fields(owner)
    mark_synced(owner)
    sandbox.config.duplicate_control = True
    sandbox.config.complex_merge_in_batch = True
    known = requests.post(
        f"{sandbox.url}/_sandbox/contacts",
        json={"name": "Уже в amoCRM", "custom_fields_values": [
            {"field_code": "EMAIL", "values": [{"value": "known@example.ru"}]}]},
        timeout=5,
    ).json()["id"]  # fmt: skip
    # Two numbers that differ for us (E.164) but look alike to amoCRM (the last ten digits).
    stored = _store(owner, [
        {"channel": "widget", "external_id": "us", "phone": "+1 916 441 0123", "message": "Hi"},
        {"channel": "widget", "external_id": "ru", "phone": "+7 916 441 01 23", "message": "Привет"},
        {"channel": "widget", "external_id": "k", "email": "known@example.ru", "message": "Снова я"},
    ])  # fmt: skip
    mark = log_mark(sandbox)
    assert process(stored[0].id).status == "created"
    db.session.expire_all()
    us, ru, again = (db.session.get(InboundRequest, r.id) for r in stored)
    assert (us.contact_id, us.lead_id) == (ru.contact_id, ru.lead_id)
    assert us.lead_id is not None and again.lead_id not in (None, us.lead_id)
    assert again.contact_id == known
    assert all(r.status == "created" for r in (us, ru, again))
    assert _paths(api_calls(sandbox, mark)).count(("POST", "/api/v4/leads/complex")) == 1
    assert len(notes_of_lead(sandbox, int(us.lead_id or 0))) == 2
