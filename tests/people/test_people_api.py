"""The bot's read API: people lookup and full-text search from the mirror, per API key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from crm_app.extensions import db
from crm_app.models import (
    AmoUser,
    Contact,
    InboundPerson,
    Lead,
    Note,
    Pipeline,
    PipelineStatus,
    SyncCursor,
    Task,
)
from crm_app.services.inbound import create_api_key


def _owner(make_user, name: str) -> tuple[int, str]:
    owner_id = make_user(f"{name}-admin", role="admin", owner=name).owner_id
    key, _row = create_api_key(owner_id, "bot")
    return owner_id, key


def _fill(owner_id: int, *, contact_id: int = 101, phone: str = "+79161234567") -> None:
    """One contact with two open deals, a won deal, tasks and notes, as the sync mirrors them."""
    db.session.add_all([
        AmoUser(owner_id=owner_id, id=7, name="Мария Менеджер", email="m@example.ru"),
        Pipeline(owner_id=owner_id, id=1, name="Продажи", is_main=True),
        PipelineStatus(owner_id=owner_id, pipeline_id=1, id=11, name="Первичный контакт", sort=10),
        PipelineStatus(owner_id=owner_id, pipeline_id=1, id=142, name="Успешно реализовано",
                       sort=10000, type=0),
        Contact(owner_id=owner_id, id=contact_id, name="Иван Иванов", phone=phone,
                phones=[phone, "+79035550000"], email="ivan@example.ru", emails=["ivan@example.ru"],
                telegram_id="555000111", responsible_user_id=7, updated_at=1767000000, raw={}),
        Lead(owner_id=owner_id, id=201, name="Заказ Иванова на доставку", price=15000,
             pipeline_id=1, status_id=11, responsible_user_id=7, main_contact_id=contact_id,
             contact_ids=[contact_id], updated_at=1767000100, raw={}),
        Lead(owner_id=owner_id, id=202, name="Повторная покупка", price=500, pipeline_id=1,
             status_id=11, main_contact_id=None, contact_ids=[contact_id], updated_at=1767000050,
             raw={}),
        Lead(owner_id=owner_id, id=203, name="Прошлый заказ", price=900, pipeline_id=1,
             status_id=142, closed_at=1766000000, main_contact_id=contact_id,
             contact_ids=[contact_id], raw={}),
        Task(owner_id=owner_id, id=301, text="Перезвонить клиенту", entity_type="leads",
             entity_id=201, is_completed=False, complete_till=1767100000, responsible_user_id=7,
             raw={}),
        Task(owner_id=owner_id, id=302, text="Выполнено", entity_type="leads", entity_id=201,
             is_completed=True, raw={}),
        Note(owner_id=owner_id, id=401, entity_type="leads", entity_id=201, note_type="common",
             text="Клиент спрашивал про доставку заказа в Казань", created_at=1767000200,
             params={}),
        Note(owner_id=owner_id, id=402, entity_type="contacts", entity_id=contact_id,
             note_type="common", text="Предпочитает звонки после обеда", created_at=1767000300,
             params={}),
        SyncCursor(owner_id=owner_id, entity="contacts", last_success_at=datetime.now(UTC)),
    ])  # fmt: skip
    db.session.commit()


def _get(client, key: str, path: str, **params: Any):
    return client.get(path, query_string=params, headers={"Authorization": f"Bearer {key}"})


def test_person_by_each_identity(app, client, make_user) -> None:
    owner_id, key = _owner(make_user, "acme")
    _fill(owner_id)
    db.session.add(InboundPerson(owner_id=owner_id, channel="widget", external_id="visitor-1",
                                 ref="INTESTREF1", contact_id=101))  # fmt: skip
    db.session.commit()
    for params in (
        {"telegram_id": "555000111"},
        {"phone": "8 (916) 123-45-67"},
        {"phone": "+7 903 555 00 00"},  # the contact's second number
        {"email": "IVAN@example.ru"},
        {"external_id": "visitor-1", "channel": "widget"},
    ):
        resp = _get(client, key, "/api/crm/people", **params)
        assert resp.status_code == 200, (params, resp.get_data(as_text=True))
        body = resp.json
        assert body["contact"]["id"] == 101
    assert body["contact"]["responsible_user"] == {"id": 7, "name": "Мария Менеджер"}
    assert [d["id"] for d in body["open_deals"]] == [201, 202]
    first = body["open_deals"][0]
    assert first["pipeline"] == {"id": 1, "name": "Продажи"}
    assert first["status"] == {"id": 11, "name": "Первичный контакт"}
    assert first["price"] == 15000 and first["is_closed"] is False
    assert body["last_closed_deal"]["id"] == 203
    assert body["last_closed_deal"]["status"]["name"] == "Успешно реализовано"
    assert [t["id"] for t in body["open_tasks"]] == [301]
    assert [n["id"] for n in body["last_notes"]] == [402, 401]
    fresh = body["freshness"]
    assert fresh["as_of"] and fresh["contacts_synced_at"] and fresh["contact_synced_at"]
    assert fresh["leads_synced_at"] is None  # never synced: the answer says so


def test_owner_isolation_and_errors(app, client, make_user) -> None:
    acme, acme_key = _owner(make_user, "acme")
    other, other_key = _owner(make_user, "other")
    _fill(acme)
    # The other owner has the same human under another id: its key sees only its own data.
    db.session.add(Contact(owner_id=other, id=999, name="Чужой", phone="+79161234567",
                           phones=["+79161234567"], raw={}))  # fmt: skip
    db.session.commit()
    mine = _get(client, acme_key, "/api/crm/people", phone="+79161234567").json
    theirs = _get(client, other_key, "/api/crm/people", phone="+79161234567").json
    assert mine["contact"]["id"] == 101 and theirs["contact"]["id"] == 999
    assert theirs["open_deals"] == [] and theirs["last_notes"] == []
    assert _get(client, other_key, "/api/crm/people", telegram_id="555000111").status_code == 404
    hits = _get(client, other_key, "/api/crm/search", q="Иванов доставка").json["items"]
    assert hits == []
    # Errors are 4xx problem documents.
    assert client.get("/api/crm/people?telegram_id=1").status_code == 401
    assert _get(client, "crmk_nope", "/api/crm/people", telegram_id="1").status_code == 401
    bad = _get(client, acme_key, "/api/crm/people")  # no identity
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"
    both = _get(client, acme_key, "/api/crm/people", phone="+79161234567", email="a@b.ru")
    assert both.status_code == 422
    assert _get(client, acme_key, "/api/crm/people", external_id="x").status_code == 422
    assert _get(client, acme_key, "/api/crm/search", q="!!!").status_code == 400
    assert _get(client, acme_key, "/api/crm/search", q="a", types="tasks").status_code == 400


def test_search_ranks_contacts_deals_and_notes_by_word_forms(app, client, make_user) -> None:
    owner_id, key = _owner(make_user, "acme")
    _fill(owner_id)
    # "заказу"/"доставке": other forms of the words in the deal name and the note.
    resp = _get(client, key, "/api/crm/search", q="Иванову заказу доставке")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    items = resp.json["items"]
    kinds = {(i["type"], i["id"]) for i in items}
    assert ("leads", 201) in kinds and ("notes", 401) in kinds and ("contacts", 101) in kinds
    assert items[0]["type"] == "leads" and items[0]["id"] == 201  # matches the most words
    note = next(i for i in items if i["type"] == "notes")
    assert (note["entity_type"], note["entity_id"]) == ("leads", 201)
    assert [i["rank"] for i in items] == sorted((i["rank"] for i in items), reverse=True)
    only = _get(client, key, "/api/crm/search", q="delivery order", types="leads").json
    assert only["items"] == []  # English words do not match Russian text
    english = _get(client, key, "/api/crm/search", q="ivan@example.ru", types="contacts").json
    assert [i["id"] for i in english["items"]] == [101]


def test_search_follows_the_mirror_as_sync_and_webhooks_write_it(app, client, make_user) -> None:
    """The index is the mirror's own: an upsert or delete by the sync or a webhook re-read shows
    at once (the same statements crm_app.services.sync.upsert issues)."""
    from crm_app.services.sync.upsert import upsert_rows

    owner_id, key = _owner(make_user, "acme")
    _fill(owner_id)
    table = Lead.__table__
    row = {"owner_id": owner_id, "id": 204, "name": "Кондиционер для офиса", "price": 1,
           "pipeline_id": 1, "status_id": 11, "contact_ids": [], "raw": {},
           "synced_at": datetime.now(UTC)}  # fmt: skip
    with db.engine.begin() as conn:
        upsert_rows(conn, table, [row])
    assert [
        i["id"] for i in _get(client, key, "/api/crm/search", q="кондиционеры").json["items"]
    ] == [204]
    with db.engine.begin() as conn:
        upsert_rows(conn, table, [{**row, "name": "Обогреватель"}])
    assert _get(client, key, "/api/crm/search", q="кондиционер").json["items"] == []
    assert _get(client, key, "/api/crm/search", q="обогреватель").json["items"][0]["id"] == 204
    db.session.execute(table.delete().where(table.c.id == 204))
    db.session.commit()
    assert _get(client, key, "/api/crm/search", q="обогреватель").json["items"] == []


def test_per_key_rate_limit(app, client, make_user) -> None:
    app.config["CRM_READ_RATE_LIMIT"] = "3 per minute"
    _, key = _owner(make_user, "acme")
    _, other_key = _owner(make_user, "other")
    codes = [_get(client, key, "/api/crm/search", q="x").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert _get(client, other_key, "/api/crm/search", q="x").status_code == 200  # per key


@pytest.fixture
def sqlite_app(tmp_path):
    """The embedded default: SQLite, tables from create_all (the FTS5 triggers with them)."""
    from cryptography.fernet import Fernet

    from crm_app import create_app

    application = create_app({
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'crm.sqlite3'}",
        "INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "s" * 40, "TESTING": True,
        "CRM_ENCRYPTION_KEY": Fernet.generate_key().decode(), "REDIS_URL": None,
        "RATELIMIT_STORAGE_URI": "memory://",
    })  # fmt: skip
    with application.app_context():
        db.create_all()
        yield application
        db.session.remove()
        db.engine.dispose()


def test_embedded_sqlite_lookup_and_fts5_search(sqlite_app) -> None:
    from crm_app.commands.users import get_or_create_owner
    from crm_app.services import people, search

    owner_id = get_or_create_owner("acme").id
    other = get_or_create_owner("other").id
    _fill(owner_id)
    db.session.add(Lead(owner_id=other, id=201, name="Заказ чужой", raw={}))
    db.session.commit()
    assert people.lookup(owner_id, phone="89161234567")["contact"]["id"] == 101
    hits = search.search(owner_id, "Иванов заказ")
    assert {(h["type"], h["id"]) for h in hits} >= {
        ("contacts", 101),
        ("leads", 201),
        ("leads", 203),
    }
    assert all(h["id"] != 201 or h["title"] != "Заказ чужой" for h in hits)
    lead = db.session.get(Lead, (owner_id, 202))
    lead.name = "Самовар"
    db.session.commit()
    assert [h["id"] for h in search.search(owner_id, "самовар")] == [202]
    db.session.delete(lead)
    db.session.commit()
    assert search.search(owner_id, "самовар") == []


def test_client_example_from_the_readme(app, client, make_user) -> None:
    """`requests`-style call shapes documented in the README answer as described."""
    owner_id, key = _owner(make_user, "acme")
    _fill(owner_id)
    resp = _get(client, key, "/api/crm/people", telegram_id="555000111")
    assert set(resp.json) == {"contact", "open_deals", "last_closed_deal", "open_tasks",
                              "last_notes", "freshness"}  # fmt: skip
    assert (
        requests.utils.quote("Иванов")
        in requests.Request("GET", "http://x/api/crm/search", params={"q": "Иванов"}).prepare().url
    )
