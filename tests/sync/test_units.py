"""Pieces of the sync engine on their own: mappers, upserts, paging checks, runs, beat claims."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy import select

from crm_app.amocrm.client import Page
from crm_app.amocrm.fields import normalize_phone
from crm_app.amocrm.retry import RetryPolicy
from crm_app.extensions import db
from crm_app.models import AmoUser, Contact, Lead, RunStatus, SyncRun
from crm_app.services.amo import sync_retry_policy
from crm_app.services.sync import (
    claim_beat_slot,
    delete_entities,
    refetch_entities,
    start_sync,
    sync_reference_data,
    upsert_contacts,
    upsert_leads,
)
from crm_app.services.sync.checkpoint import Checkpoint, EntityProgress
from crm_app.services.sync.mappers import (
    contact_details,
    fast_normalize_phone,
    lead_contacts,
    map_contact,
    map_task,
)
from crm_app.services.sync.paging import (
    IncrementalCheck,
    PageStream,
)
from crm_app.services.sync.runs import LeaseLost, SyncError, claim_run, run_connection
from crm_app.services.sync.upsert import entity_table, upsert_rows

NOW = datetime(2026, 1, 1, tzinfo=UTC)


# -- mappers --------------------------------------------------------------------------------


def test_fast_phone_path_agrees_with_the_parser():
    rng = random.Random(7)
    samples = ["+7 (999) 555-11-22", "8 999 555 11 22", "89995551122", "+7-912-000-00-00"]
    for _ in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(10))
        prefix = rng.choice(["+7", "8", "7", "+44", "+375", "", "+1"])
        samples.append(prefix + digits)
        samples.append(f"{prefix} ({digits[:3]}) {digits[3:6]}-{digits[6:]}")
    samples += ["", "abc", "+", "12", "+7999", "8 (800) 555-35-35 доб. 12"]
    for raw in samples:
        assert fast_normalize_phone(raw) == normalize_phone(raw), raw


def _field(code, values, name=None, fid=1):
    return {
        "field_id": fid,
        "field_name": name or code,
        "field_code": code,
        "values": [{"value": v} for v in values],
    }


def test_contact_details_normalise_and_find_telegram_by_name():
    item = {
        "id": 5,
        "custom_fields_values": [
            _field("PHONE", ["8 (999) 555-11-22", "+79995551122", "не телефон"]),
            _field("EMAIL", [" Ivan@Example.RU ", "ivan@example.ru", "bad"]),
            _field(None, ["  123456789 "], name="Telegram ID", fid=9),
        ],
    }
    phones, emails, telegram = contact_details(item)
    assert phones == ["+79995551122", "не телефон"]
    assert emails == ["ivan@example.ru"]
    assert telegram == "123456789"
    row = map_contact(1, item, NOW)
    assert row["phone"] == "+79995551122" and row["email"] == "ivan@example.ru"
    # Only _links and the custom fields (own column) are left out of raw.
    assert "custom_fields_values" not in row["raw"] and row["raw"]["id"] == 5
    assert map_contact(1, {"id": 6, "custom_fields_values": None}, NOW)["phones"] == []


def test_lead_contacts_and_task_result():
    assert lead_contacts({"id": 1}) is None  # fetched without with=contacts
    assert lead_contacts({"_embedded": {"contacts": []}}) == ([], None)
    refs = [{"id": 3, "is_main": False}, {"id": 4, "is_main": True}, {"id": 3}]
    assert lead_contacts({"_embedded": {"contacts": refs}}) == ([3, 4], 4)
    assert map_task(1, {"id": 2, "result": []}, NOW)["result_text"] is None
    assert map_task(1, {"id": 2, "result": {"text": "ok"}}, NOW)["result_text"] == "ok"
    assert map_task(1, {"id": "7", "is_completed": "1"}, NOW)["is_completed"] is True


# -- upserts ---------------------------------------------------------------------------------


def _contact(cid: int, name: str, updated: int) -> dict:
    return {"id": cid, "name": name, "updated_at": updated, "created_at": 1}


def _owner(make_user) -> int:
    return make_user("uadmin", role="admin", owner="o1").owner_id


def test_upsert_is_idempotent_and_never_rolls_back_a_newer_copy(app, make_user):
    owner_id = _owner(make_user)
    assert upsert_contacts(owner_id, [_contact(1, "A", 100), _contact(2, "B", 100)]) == 2
    assert upsert_contacts(owner_id, [_contact(1, "A2", 200), _contact(1, "A1", 150)]) == 1
    upsert_contacts(owner_id, [_contact(1, "stale", 120)])  # older than what we hold
    db.session.expire_all()
    assert db.session.get(Contact, (owner_id, 1)).name == "A2"
    assert db.session.scalar(select(sa.func.count()).select_from(Contact)) == 2
    assert delete_entities(owner_id, "contacts", [2, 99]) == 1
    with pytest.raises(ValueError):
        delete_entities(owner_id, "companies", [1])


def test_lead_without_embedded_contacts_keeps_its_links(app, make_user):
    owner_id = _owner(make_user)
    upsert_leads(owner_id, [{"id": 9, "updated_at": 1, "_embedded": {"contacts": [{"id": 5}]}}])
    upsert_leads(owner_id, [{"id": 9, "updated_at": 2, "name": "renamed"}])
    db.session.expire_all()
    lead = db.session.get(Lead, (owner_id, 9))
    assert lead.name == "renamed" and lead.contact_ids == [5] and lead.main_contact_id == 5


def test_sqlite_upsert_path(tmp_path):
    from crm_app.models.mirror import Contact as ContactModel

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    db.metadata.create_all(engine, tables=[db.metadata.tables["owners"], ContactModel.__table__])
    table = entity_table("contacts")
    with engine.begin() as conn:
        conn.execute(db.metadata.tables["owners"].insert().values(id=1, name="x", created_at=NOW))
        rows = [map_contact(1, _contact(i, f"n{i}", 10), NOW) for i in range(1, 1501)]
        assert upsert_rows(conn, table, rows) == 1500
        upsert_rows(conn, table, [map_contact(1, _contact(3, "new", 11), NOW)])
        upsert_rows(conn, table, [map_contact(1, _contact(3, "old", 9), NOW)])
    with engine.connect() as conn:
        assert conn.scalar(select(sa.func.count()).select_from(table)) == 1500
        assert conn.scalar(select(table.c.name).where(table.c.id == 3)) == "new"


# -- paging ----------------------------------------------------------------------------------


def test_incremental_check_stops_only_when_the_order_holds():
    check = IncrementalCheck(cursor_from=100)
    assert check.keep([{"updated_at": 300}, {"updated_at": 200}]) == [
        {"updated_at": 300},
        {"updated_at": 200},
    ]
    assert not check.exhausted
    kept = check.keep([{"updated_at": 150}, {"updated_at": 90}, {"updated_at": 80}])
    assert kept == [{"updated_at": 150}] and check.exhausted and not check.filter_ok
    unsorted = IncrementalCheck(cursor_from=100)
    unsorted.keep([{"updated_at": 50}, {"updated_at": 400}])
    assert not unsorted.order_ok and not unsorted.exhausted


class _FakeTasksClient:
    """Ignores filter[updated_at] and order[updated_at] on tasks: all pages, by id."""

    def __init__(self, stamps: list[int]) -> None:
        self.items = [{"id": i + 1, "updated_at": s} for i, s in enumerate(stamps)]
        self.calls: list[int] = []

    def get_tasks(self, limit, page, filter_=None, order=None):
        self.calls.append(page)
        chunk = self.items[(page - 1) * limit : page * limit]
        more = page * limit < len(self.items)
        return Page(chunk, "next" if more else None, page)


def test_incremental_scan_when_neither_filter_nor_order_is_honoured():
    rng = random.Random(1)
    stamps = [rng.randint(0, 1000) for _ in range(700)]
    stamps[650] = 5000  # the one change since the cursor, far down the id order
    client = _FakeTasksClient(stamps)
    stream = PageStream(client, "tasks", 1, "incremental", cursor_from=2000)  # type: ignore[arg-type]  # a fake client
    kept = [item for result in stream for item in result.items]
    assert client.calls == [1, 2, 3]  # every page: stopping early would have missed it
    assert [k["id"] for k in kept] == [651]
    assert stream.check is not None and not stream.check.order_ok


def test_sync_reads_wait_out_long_rate_limit_pauses(app):
    app.config["SYNC_RATE_LIMIT_MAX_WAIT"] = 45
    policy = sync_retry_policy()
    # A lone 429 is jitter: a short wait. A long retry_after is waited out, capped.
    assert policy.rate_limit_wait(1, 300) == 1.5
    assert policy.rate_limit_wait(2, 300) == 45
    assert policy.rate_limit_wait(3, None) == 6.0
    assert policy.rate_limit_wait(policy.rate_limit_retries + 1, None) is None
    # Interactive calls (the client's default) give the 429 back at once instead.
    assert RetryPolicy().rate_limit_wait(2, 300) is None


def test_next_cursor_never_passes_the_pass_start():
    def state(seen: int | None) -> EntityProgress:
        return EntityProgress(
            "incremental", started=9_000, previous_cursor=500, max_updated_at=seen
        )

    assert state(10_000).next_cursor(overlap=300) == 8_700
    assert state(600).next_cursor(overlap=300) == 600
    assert state(None).next_cursor(overlap=300) == 500
    assert state(100).next_cursor(overlap=300) == 500  # never moves back


def test_checkpoint_round_trips_and_drops_what_it_cannot_use():
    stored = {
        "contacts": {"mode": "full", "started": 1.5, "page": 7, "records": 1500, "extra": 1},
        "leads": {"mode": "sideways", "started": 1.0},  # unknown mode: start afresh
        "tasks": "garbage",
        "_reference": {"done": True, "pipelines": 2},
    }
    checkpoint = Checkpoint.from_json(stored)
    assert list(checkpoint.entities) == ["contacts"]
    contacts = checkpoint.entities["contacts"]
    assert (contacts.page, contacts.records, contacts.done) == (7, 1500, False)
    assert checkpoint.reference == {"done": True, "pipelines": 2}
    again = Checkpoint.from_json(checkpoint.to_json())
    assert again == checkpoint
    # A new run inherits the entity progress it asks for, and redoes the reference data.
    assert Checkpoint.from_json(checkpoint.only(["contacts"]).to_json()).reference is None
    assert checkpoint.only(["leads"]).entities == {}
    assert Checkpoint.from_json(None) == Checkpoint()


# -- runs ------------------------------------------------------------------------------------


def test_start_sync_validates_and_reuses_the_active_run(app, sandbox, connected):
    owner_id = connected(sandbox)
    with pytest.raises(SyncError):
        start_sync(owner_id, entities=["companies"], enqueue=False)
    first = start_sync(owner_id, entities=["contacts"], enqueue=False)
    second = start_sync(owner_id, full=True, enqueue=False)
    assert first.id == second.id and first.entities == ["contacts"]
    assert start_sync(owner_id, entities=["all"], enqueue=False).id == first.id


def test_a_taken_over_worker_can_no_longer_write(app, sandbox, connected):
    app.config["SYNC_STALE_SECONDS"] = 60
    owner_id = connected(sandbox)
    run = start_sync(owner_id, enqueue=False)
    with run_connection() as conn:
        lease, _row = claim_run(conn, run.id)
        assert claim_run(conn, run.id) is None  # live: nobody else may claim it
        # Silence for longer than the stale period: the run goes back to the queue.
        conn.execute(
            sa.update(SyncRun)
            .where(SyncRun.id == run.id)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(minutes=5))
        )
        conn.commit()
        assert start_sync(owner_id, enqueue=False).id == run.id
        db.session.expire_all()
        assert db.session.get(SyncRun, run.id).status == RunStatus.QUEUED
        new_lease, _ = claim_run(conn, run.id)
        with pytest.raises(LeaseLost):
            lease.heartbeat(pages=1)
        new_lease.heartbeat(pages=2)
        assert new_lease.finish(RunStatus.SUCCESS)


def test_beat_slot_is_claimed_once(app):
    assert claim_beat_slot("sync.schedule_incremental", 300, now=3000.0)
    assert not claim_beat_slot("sync.schedule_incremental", 300, now=3299.0)
    assert claim_beat_slot("sync.schedule_incremental", 300, now=3300.0)
    assert claim_beat_slot("sync.schedule_reconcile", 300, now=3300.0)


# -- reference data and refetch --------------------------------------------------------------


def test_reference_data_records_a_forbidden_users_list(app, sandbox, connected):
    manager = next(u for u in sandbox.account.users if not u.is_admin)
    owner_id = connected(sandbox, user_id=manager.id)
    summary = sync_reference_data(owner_id)
    assert summary["users_error"] == "forbidden" and summary["users"] == 0
    assert summary["pipelines"] == len(sandbox.account.pipelines)
    assert db.session.scalar(select(AmoUser).where(AmoUser.owner_id == owner_id)) is None


@pytest.mark.parametrize("api_filter", [True, False])
def test_refetch_updates_existing_and_deletes_confirmed_gone(
    app, make_sandbox, connected, api_filter
):
    server = make_sandbox(contacts=300, leads=10, tasks=10, api_filter=api_filter)
    owner_id = connected(server)
    ids = sorted(server.account.tables["contacts"].records)[-5:]  # beyond the first page
    upsert_contacts(owner_id, [_contact(i, "old", 1) for i in ids])
    gone = ids[1]
    assert requests.delete(f"{server.url}/_sandbox/contacts/{gone}", timeout=5).status_code == 204
    server.clear_requests()
    assert refetch_entities(owner_id, "contacts", ids) == (4, 1)
    db.session.expire_all()
    assert db.session.get(Contact, (owner_id, gone)) is None
    names = {db.session.get(Contact, (owner_id, i)).name for i in ids if i != gone}
    assert "old" not in names
    singles = [e for e in server.requests_log(kind="api") if "?" not in e["path"]]
    # With the add-on one filtered read plus one GET proving the deletion; without it the
    # filter is ignored and each id is read on its own.
    assert len(singles) == (1 if api_filter else 5)


class _SlowContacts:
    """A listing of `n` contacts answering after `delay` seconds, recording what was asked."""

    def __init__(self, n: int, delay: float) -> None:
        import threading

        self.n, self.delay = n, delay
        self.calls: list[int] = []
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def get_contacts(self, limit, page, filter_=None, order=None):
        import time

        with self.lock:
            self.calls.append(page)
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.delay)
        with self.lock:
            self.active -= 1
        start = (page - 1) * limit
        items = [{"id": i + 1} for i in range(start, min(self.n, start + limit))]
        return Page(items, "next" if start + limit < self.n else None, page)


def test_parallel_pages_keep_order_and_waste_little(app):
    from crm_app.services.sync.paging import parallel_pages

    client = _SlowContacts(250 * 6 + 10, delay=0.05)  # 7 pages
    got = [r.page.page for r in parallel_pages(app, client, "contacts", 1, 3, None, lambda: 3)]  # type: ignore[arg-type]  # a fake
    assert got == [1, 2, 3, 4, 5, 6, 7]
    assert client.peak == 3  # requests really overlapped
    assert len(client.calls) <= 7 + 2  # at most concurrency - 1 past the end
    # Fast answers (one in flight is enough) or a known size: nothing past the end.
    fast = _SlowContacts(250 * 6 + 10, delay=0.0)
    list(parallel_pages(app, fast, "contacts", 1, 3, None, lambda: 1))  # type: ignore[arg-type]  # a fake client
    assert fast.calls == [1, 2, 3, 4, 5, 6, 7]
    known = _SlowContacts(250 * 6 + 10, delay=0.02)
    list(parallel_pages(app, known, "contacts", 3, 3, 7, lambda: 3))  # type: ignore[arg-type]  # a fake client
    assert sorted(known.calls) == [3, 4, 5, 6, 7]
