"""The processor run in-process against the sandbox: recovery paths, mirror use, call budgets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import requests
from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import Contact, InboundPerson, InboundRequest, SyncLog
from crm_app.models.inbound import InboundFieldMap
from crm_app.services.inbound import process, processor, requeue_stale, retry_request, submit
from tests.inbound.conftest import (
    api_calls,
    log_mark,
    mark_synced,
    notes_of_lead,
    records,
    warm_fields,
)


def _record(sent: list[int], request_id: int) -> bool:
    """A stand-in for enqueue: remembers the id and reports it sent."""
    sent.append(request_id)
    return True


def _run(owner: int, body: dict) -> InboundRequest:
    req = submit(owner, body, enqueue_now=False)
    result = process(req.id)
    db.session.expire_all()
    req = db.session.get(InboundRequest, req.id)
    assert result.status == req.status
    return req


def _paths(calls: list[dict]) -> list[tuple[str, str]]:
    return [(c["method"], c["path"].split("?")[0]) for c in calls]


def test_unanswered_create_is_looked_up_before_creating_again(sandbox, owner):
    warm_fields(owner)
    mark_synced(owner)
    req = submit(owner, {"channel": "widget", "external_id": "lost-answer", "name": "Вера",
                         "message": "Добрый день"}, enqueue_now=False)  # fmt: skip
    person = db.session.get(InboundPerson, req.person_id)
    # An earlier attempt sent leads/complex and never heard back, but amoCRM did create it.
    created = requests.post(
        f"{sandbox.url}/_sandbox/leads",
        json={"name": f"Сайт: Вера [{person.ref}]"},
        timeout=5,
    ).json()
    person.create_started_at = datetime.now(UTC) - timedelta(minutes=5)
    db.session.commit()
    leads_before = set(records(sandbox, "leads"))
    mark = log_mark(sandbox)
    assert process(req.id).status == "created"
    db.session.expire_all()
    req = db.session.get(InboundRequest, req.id)
    assert req.lead_id == created["id"]
    assert req.outcome == "new"
    assert set(records(sandbox, "leads")) == leads_before  # nothing created twice
    assert _paths(api_calls(sandbox, mark)) == [
        ("GET", "/api/v4/leads"),
        ("POST", "/api/v4/leads/notes"),
    ]
    # One read of the newest deals finds it (it would find a whole batch's worth).
    assert "order%5Bid%5D=desc" in api_calls(sandbox, mark)[0]["path"]


def test_unanswered_create_that_never_happened_is_sent_again(sandbox, owner):
    warm_fields(owner)
    mark_synced(owner)
    req = submit(owner, {"channel": "widget", "external_id": "lost-request", "name": "Гоша"},
                 enqueue_now=False)  # fmt: skip
    person = db.session.get(InboundPerson, req.person_id)
    person.create_started_at = datetime.now(UTC) - timedelta(minutes=5)
    db.session.commit()
    mark = log_mark(sandbox)
    assert process(req.id).status == "created"
    assert _paths(api_calls(sandbox, mark)) == [
        ("GET", "/api/v4/leads"),
        ("POST", "/api/v4/leads/complex"),
    ]
    db.session.expire_all()
    assert db.session.get(InboundPerson, person.id).create_started_at is None


def test_recent_unanswered_create_waits_instead_of_creating(sandbox, owner):
    warm_fields(owner)
    req = submit(owner, {"channel": "widget", "external_id": "in-flight"}, enqueue_now=False)
    person = db.session.get(InboundPerson, req.person_id)
    person.create_started_at = datetime.now(UTC)
    db.session.commit()
    mark = log_mark(sandbox)
    result = process(req.id)
    assert result.status == "queued" and result.retry_in
    assert _paths(api_calls(sandbox, mark)) == [("GET", "/api/v4/leads")]


def test_synced_mirror_answers_dedup_without_searching(sandbox, owner):
    warm_fields(owner)
    mark_synced(owner)
    existing = requests.post(
        f"{sandbox.url}/_sandbox/contacts",
        json={"name": "Из зеркала", "custom_fields_values": [
            {"field_code": "PHONE", "values": [{"value": "+79035550000", "enum_code": "WORK"}]}]},
        timeout=5,
    ).json()  # fmt: skip
    db.session.add(
        Contact(
            owner_id=owner,
            id=existing["id"],
            name="Из зеркала",
            phone="+79035550000",
            phones=["+79035550000"],
            raw={},
        )
    )
    db.session.commit()
    mark = log_mark(sandbox)
    req = _run(owner, {"channel": "widget", "external_id": "m-1", "phone": "8 903 555 00 00"})
    assert req.status == "created", req.error
    assert req.contact_id == existing["id"]
    assert _paths(api_calls(sandbox, mark)) == [("POST", "/api/v4/leads/complex")]


def test_one_human_on_two_channels_gets_one_contact(sandbox, owner):
    warm_fields(owner)
    mark_synced(owner)
    widget = _run(owner, {"channel": "widget", "external_id": "x-1", "name": "Лев",
                          "phone": "+79057770011", "message": "С сайта"})  # fmt: skip
    telegram = _run(owner, {"channel": "telegram", "external_id": "9001", "name": "Лев",
                            "phone": "89057770011", "message": "Из бота"})  # fmt: skip
    assert widget.outcome == "new"
    assert telegram.outcome == "existing_deal"  # the contact's open deal gets the message
    assert (telegram.contact_id, telegram.lead_id) == (widget.contact_id, widget.lead_id)
    assert len(notes_of_lead(sandbox, widget.lead_id)) == 2


def test_deleted_deal_gets_replaced_for_a_repeat_message(sandbox, owner):
    warm_fields(owner)
    mark_synced(owner)
    first = _run(owner, {"channel": "widget", "external_id": "gone", "name": "Ян", "message": "1"})
    requests.delete(f"{sandbox.url}/_sandbox/leads/{first.lead_id}", timeout=5)
    second = _run(owner, {"channel": "widget", "external_id": "gone", "message": "2"})
    assert second.status == "created", second.error
    assert second.outcome == "new_deal"
    assert second.contact_id == first.contact_id
    assert second.lead_id != first.lead_id
    assert len(notes_of_lead(sandbox, second.lead_id)) == 1


def test_auto_create_off_stores_the_request_and_calls_nothing(sandbox, owner, monkeypatch):
    from crm_app.services.amo import get_config

    cfg = get_config(owner)
    cfg.auto_create_lead = False
    db.session.commit()
    mark = log_mark(sandbox)
    req = _run(owner, {"channel": "widget", "external_id": "off", "message": "Привет"})
    assert (req.status, req.outcome) == ("failed", "disabled")
    assert "Автосоздание сделок выключено" in req.error
    assert api_calls(sandbox, mark) == []
    # Turned on again, the admin's retry sends it.
    cfg = get_config(owner)
    cfg.auto_create_lead = True
    db.session.commit()
    sent: list[int] = []
    monkeypatch.setattr(processor, "enqueue", lambda rid: _record(sent, rid))
    assert retry_request(req)
    assert sent == [req.id]
    assert process(req.id).status == "created"


def test_not_connected_owner_fails_visibly(app, make_user):
    from crm_app.models import AmoConfig

    user = make_user("lonely", role="admin", owner="lonely")
    db.session.add(AmoConfig(owner_id=user.owner_id, subdomain="demo", auto_create_lead=True))
    db.session.commit()
    req = _run(user.owner_id, {"channel": "widget", "external_id": "n"})
    assert (req.status, req.outcome) == ("failed", "not_connected")
    log = db.session.scalars(select(SyncLog).where(SyncLog.operation == "create_lead")).all()
    assert [e.status for e in log] == ["error"]


def test_field_map_is_cached_per_owner(sandbox, owner):
    mark_synced(owner)
    mark = log_mark(sandbox)
    _run(owner, {"channel": "telegram", "external_id": "1001", "name": "А"})
    _run(owner, {"channel": "telegram", "external_id": "1002", "name": "Б"})
    paths = _paths(api_calls(sandbox, mark))
    assert paths.count(("GET", "/api/v4/contacts/custom_fields")) == 1
    assert paths.count(("GET", "/api/v4/leads/custom_fields")) == 1
    assert paths.count(("POST", "/api/v4/leads/complex")) == 2
    data = db.session.get(InboundFieldMap, owner).data
    acc = sandbox.account
    assert data["telegram_id"] == acc.field_by_code("contacts", "TELEGRAM_ID").id
    assert data["utm"]["utm_source"] == acc.field_by_code("leads", "UTM_SOURCE").id


def test_stale_custom_field_id_is_dropped_and_the_deal_still_created(sandbox, owner):
    mark_synced(owner)
    db.session.add(InboundFieldMap(owner_id=owner, data={"telegram_id": 999999, "utm": {}}))
    db.session.commit()
    req = _run(owner, {"channel": "telegram", "external_id": "2002", "name": "В"})
    assert req.status == "created", req.error
    # The refusal means the account's fields changed: the catalogue was read again at once.
    db.session.expire_all()
    data = db.session.get(InboundFieldMap, owner).data
    assert data["telegram_id"] == sandbox.account.field_by_code("contacts", "TELEGRAM_ID").id


def test_requeue_stale_picks_lost_and_due_requests(app, owner):
    old = submit(owner, {"channel": "widget", "external_id": "s1"}, enqueue_now=False)
    due = submit(owner, {"channel": "widget", "external_id": "s2"}, enqueue_now=False)
    waiting = submit(owner, {"channel": "widget", "external_id": "s3"}, enqueue_now=False)
    fresh = submit(owner, {"channel": "widget", "external_id": "s4"}, enqueue_now=False)
    now = datetime.now(UTC)
    old.created_at, old.next_attempt_at = now - timedelta(minutes=10), None
    due.next_attempt_at = now - timedelta(seconds=1)
    waiting.next_attempt_at = now + timedelta(minutes=5)
    db.session.commit()
    sent: list[int] = []
    assert requeue_stale(send=lambda rid: _record(sent, rid)) == 2
    assert sorted(sent) == sorted([old.id, due.id])
    assert fresh.id not in sent and waiting.id not in sent


def test_idempotency_key_returns_the_first_request(app, owner):
    a = submit(
        owner, {"channel": "widget", "external_id": "k"}, idempotency_key="abc", enqueue_now=False
    )
    b = submit(
        owner, {"channel": "widget", "external_id": "k"}, idempotency_key="abc", enqueue_now=False
    )
    assert a.id == b.id
    assert db.session.scalar(select(InboundRequest.id).where(InboundRequest.id != a.id)) is None


def test_responsible_user_pipeline_and_utm_fields_reach_amocrm(sandbox, owner):
    from crm_app.services.amo import get_config

    acc = sandbox.account
    manager = acc.users[1].id
    second = acc.pipelines[1]
    cfg = get_config(owner)
    cfg.lead_responsible_user_id = manager
    cfg.lead_pipeline_id, cfg.lead_status_id = second.id, second.statuses[2].id
    db.session.commit()
    mark_synced(owner)
    req = _run(owner, {"channel": "widget", "external_id": "r-1", "name": "Ира",
                       "utm": {"utm_source": "yandex"}, "message": "Хочу счёт"})  # fmt: skip
    assert req.status == "created", req.error
    lead = records(sandbox, "leads")[req.lead_id]
    contact = records(sandbox, "contacts")[req.contact_id]
    assert lead["responsible_user_id"] == contact["responsible_user_id"] == manager
    assert (lead["pipeline_id"], lead["status_id"]) == (second.id, second.statuses[2].id)
    utm = acc.field_by_code("leads", "UTM_SOURCE")
    assert (utm.id, (("yandex", None),)) in tuple(lead["cf"] or ())
    source = next(f for f in acc.fields["leads"] if f.name == "Источник")
    assert any(fid == source.id for fid, _values in lead["cf"])
    assert lead["name"].startswith("Сайт: Ира [IN")


def test_field_catalogue_is_read_at_connect_so_the_first_lead_costs_nothing_extra(sandbox, owner):
    from crm_app.services.connection import after_connect
    from crm_app.services.inbound.fields import refresh_stale

    assert db.session.get(InboundFieldMap, owner) is None
    after_connect(owner)  # what connecting (OAuth, code, long-lived token) runs
    assert db.session.get(InboundFieldMap, owner) is not None
    mark_synced(owner)
    mark = log_mark(sandbox)
    req = _run(owner, {"channel": "telegram", "external_id": "3003", "name": "Г", "message": "1"})
    assert req.status == "created", req.error
    assert _paths(api_calls(sandbox, mark)) == [
        ("POST", "/api/v4/leads/complex"),
        ("POST", "/api/v4/leads/notes"),
    ]
    # Past its TTL the catalogue is read again by the beat, not on a lead's path.
    row = db.session.get(InboundFieldMap, owner)
    row.fetched_at = datetime.now(UTC) - timedelta(days=1)
    db.session.commit()
    mark = log_mark(sandbox)
    _run(owner, {"channel": "telegram", "external_id": "3004", "name": "Д", "message": "2"})
    assert ("GET", "/api/v4/contacts/custom_fields") not in _paths(api_calls(sandbox, mark))
    assert refresh_stale() == 1
    assert ("GET", "/api/v4/contacts/custom_fields") in _paths(api_calls(sandbox, mark))
