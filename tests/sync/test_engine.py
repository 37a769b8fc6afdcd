"""run_sync against the sandbox, in-process: full, incremental, filter add-on off, errors."""

from __future__ import annotations

from typing import Any

import requests
from sqlalchemy import select

from crm_app.amocrm.fields import normalize_email, normalize_phone
from crm_app.extensions import db
from crm_app.models import (
    AmoConfig,
    AmoUser,
    Contact,
    Lead,
    Pipeline,
    PipelineStatus,
    SyncCursor,
    SyncLog,
    SyncRun,
    Task,
)
from crm_app.services.sync import run_sync, start_sync
from tests.sync.conftest import mirror_count, sandbox_items


def _run(owner_id: int, **kwargs) -> SyncRun:
    run = start_sync(owner_id, enqueue=False, trigger="cli", **kwargs)
    run_sync(run.id)
    db.session.expire_all()
    return db.session.get(SyncRun, run.id)


def _api_requests(server, path: str) -> list[dict]:
    return [r for r in server.requests_log() if r["path"].startswith(path)]


def _matched(server, owner_id: int, entity: str, model: Any) -> list[tuple[Any, dict]]:
    """(mirror row, sandbox item) pairs, once the two hold the same ids."""
    items = {i["id"]: i for i in sandbox_items(server, entity)}
    rows = {r.id: r for r in db.session.scalars(select(model).where(model.owner_id == owner_id))}
    assert set(rows) == set(items)
    return [(rows[i], item) for i, item in items.items()]


def assert_mirror_equals_sandbox(server, owner_id: int) -> None:
    for row, item in _matched(server, owner_id, "contacts", Contact):
        assert (row.name, row.first_name, row.last_name) == (
            item["name"],
            item["first_name"] or None,
            item["last_name"] or None,
        )
        assert row.updated_at == item["updated_at"]
        assert row.responsible_user_id == item["responsible_user_id"]
        phones, emails, telegram = [], [], None
        for field in item["custom_fields_values"] or []:
            values = [v["value"] for v in field["values"]]
            if field["field_code"] == "PHONE":
                phones = [normalize_phone(v) for v in values]
            elif field["field_code"] == "EMAIL":
                emails = [normalize_email(v) for v in values]
            elif field["field_code"] == "TELEGRAM_ID":
                telegram = values[0]
        assert row.phones == phones
        assert row.phone == (phones[0] if phones else None)
        assert row.emails == emails
        assert row.telegram_id == telegram
        assert row.custom_fields_values == item["custom_fields_values"]
    for lead_row, item in _matched(server, owner_id, "leads", Lead):
        assert (lead_row.name, lead_row.price, lead_row.pipeline_id, lead_row.status_id) == (
            item["name"],
            item["price"],
            item["pipeline_id"],
            item["status_id"],
        )
        assert lead_row.responsible_user_id == item["responsible_user_id"]
        assert lead_row.updated_at == item["updated_at"]
        embedded = item["_embedded"]["contacts"]
        assert lead_row.contact_ids == [c["id"] for c in embedded]
        mains = [c["id"] for c in embedded if c["is_main"]]
        assert lead_row.main_contact_id == (
            mains[0] if mains else (embedded[0]["id"] if embedded else None)
        )
    for task_row, item in _matched(server, owner_id, "tasks", Task):
        assert (task_row.text, task_row.entity_type, task_row.entity_id, task_row.is_completed) == (
            item["text"],
            item["entity_type"],
            item["entity_id"],
            item["is_completed"],
        )
        assert task_row.complete_till == item["complete_till"]
        assert (
            task_row.result_text == (item["result"] or {}).get("text") if item["result"] else True
        )


def test_full_sync_mirrors_the_account(app, make_sandbox, connected):
    server = make_sandbox(contacts=600, leads=300, tasks=260)
    owner_id = connected(server)
    run = _run(owner_id, full=True)
    assert run.status == "success", run.error
    assert_mirror_equals_sandbox(server, owner_id)
    # 600 contacts = 3 pages of 250, asked for at limit=250 in id order, each once. (On a busy
    # machine the sandbox may answer slower than the throttle spaces requests; then pages are
    # fetched in parallel and up to two requests past the end may go out, answered 204.)
    contact_calls = _api_requests(server, "/api/v4/contacts")
    ok_pages = [c["path"] for c in contact_calls if c["status"] == 200]
    assert len(ok_pages) == len(set(ok_pages)) == 3
    assert len(contact_calls) <= 3 + 2
    assert all(c["status"] == 204 for c in contact_calls if c["status"] != 200)
    assert all("limit=250" in c["path"] and "order%5Bid%5D=asc" in c["path"] for c in contact_calls)
    assert all("with=contacts" in c["path"] for c in _api_requests(server, "/api/v4/leads?"))
    assert run.records == 600 + 300 + 260
    # Plus one (empty, 204) page each for the lead and contact notes: the seed has none.
    assert run.pages == 3 + 2 + 2 + 1 + 1
    assert run.rate_limited == 0
    # Reference data came along.
    assert db.session.scalar(select(Pipeline).where(Pipeline.owner_id == owner_id)) is not None
    statuses = db.session.scalars(
        select(PipelineStatus.id).where(PipelineStatus.owner_id == owner_id)
    ).all()
    assert 142 in statuses and 143 in statuses
    assert db.session.scalar(select(AmoUser).where(AmoUser.owner_id == owner_id)) is not None
    # Log entries and cursors for each entity.
    ops = {
        row.operation: row
        for row in db.session.scalars(select(SyncLog).where(SyncLog.owner_id == owner_id))
    }
    for entity in ("contacts", "leads", "tasks"):
        assert ops[f"sync_{entity}"].status == "success"
        assert ops[f"sync_{entity}"].details["mode"] == "full"
        cursor = db.session.get(SyncCursor, (owner_id, entity))
        assert cursor is not None and cursor.updated_at_cursor is not None
        assert cursor.last_full_at is not None
    assert ops["sync_contacts"].details["records"] == 600


def test_second_full_sync_is_idempotent(app, sandbox, connected):
    owner_id = connected(sandbox)
    assert _run(owner_id, full=True).status == "success"
    assert _run(owner_id, full=True).status == "success"
    assert mirror_count(owner_id, "contacts") == len(sandbox.account.tables["contacts"].records)
    assert mirror_count(owner_id, "leads") == len(sandbox.account.tables["leads"].records)
    assert_mirror_equals_sandbox(sandbox, owner_id)


def _patch(server, kind: str, rid: int, body: dict) -> dict:
    resp = requests.patch(f"{server.url}/_sandbox/{kind}/{rid}", json=body, timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _first_ids(server, kind: str, n: int) -> list[int]:
    return sorted(server.account.tables[kind].records)[:n]


def _edit_some(server) -> dict[str, list[int]]:
    contacts = _first_ids(server, "contacts", 3)
    for n, cid in enumerate(contacts):
        _patch(server, "contacts", cid, {"name": f"Изменён {n}"})
    leads = _first_ids(server, "leads", 2)
    for lid in leads:
        _patch(server, "leads", lid, {"price": 777})
    tasks = _first_ids(server, "tasks", 2)
    for tid in tasks:
        _patch(server, "tasks", tid, {"text": "Новый текст задачи"})
    return {"contacts": contacts, "leads": leads, "tasks": tasks}


def _check_edits(owner_id: int, edited: dict[str, list[int]]) -> None:
    db.session.expire_all()
    for n, cid in enumerate(edited["contacts"]):
        assert db.session.get(Contact, (owner_id, cid)).name == f"Изменён {n}"
    for lid in edited["leads"]:
        assert db.session.get(Lead, (owner_id, lid)).price == 777
    for tid in edited["tasks"]:
        assert db.session.get(Task, (owner_id, tid)).text == "Новый текст задачи"


def _sync_edits(make_sandbox, connected, **options) -> tuple[Any, SyncRun]:
    """Full sync, edits in the sandbox, incremental sync: (server, that run), mirror checked."""
    server = make_sandbox(contacts=700, leads=300, tasks=300, **options)
    owner_id = connected(server)
    assert _run(owner_id, full=True).status == "success"
    edited = _edit_some(server)
    server.clear_requests()
    run = _run(owner_id)
    assert run.status == "success", run.error
    _check_edits(owner_id, edited)
    assert_mirror_equals_sandbox(server, owner_id)
    return server, run


def test_incremental_sync_picks_up_sandbox_edits(app, make_sandbox, connected):
    server, run = _sync_edits(make_sandbox, connected)
    for entity in ("contacts", "leads", "tasks"):
        calls = _api_requests(server, f"/api/v4/{entity}?")
        assert len(calls) == 1, calls
        assert "filter%5Bupdated_at%5D%5Bfrom%5D=" in calls[0]["path"]
        assert "order%5Bupdated_at%5D=desc" in calls[0]["path"]
        assert run.counts[entity]["mode"] == "incremental"
        assert run.counts[entity]["filter_ignored"] is False


def test_incremental_without_filter_addon_stops_on_older_records(app, make_sandbox, connected):
    server, run = _sync_edits(make_sandbox, connected, api_filter=False)
    for entity in ("contacts", "leads", "tasks"):
        # The filter is ignored, but the updated_at order holds: the first page already shows
        # records older than the cursor, so one request is enough.
        assert len(_api_requests(server, f"/api/v4/{entity}?")) == 1
    # Without the add-on amoCRM drops filters on contacts and leads; the tasks list keeps its
    # own documented filters (the sandbox does the same).
    assert run.counts["contacts"]["filter_ignored"] is True
    assert run.counts["leads"]["filter_ignored"] is True
    # Only changed records count (the rest of the page is verified away client-side).
    assert run.counts["contacts"]["records"] < 250


def test_sync_log_and_badge_on_403_block(app, sandbox, connected):
    owner_id = connected(sandbox)
    resp = requests.post(
        f"{sandbox.url}/_sandbox/faults", json={"status": 403, "count": 100}, timeout=5
    )
    if resp.status_code >= 400:
        # Fall back to blocking the account the way amoCRM does: through the limiter.
        sandbox.sandbox.limiter.blocked[sandbox.account.id] = float("inf")
    run = _run(owner_id, full=True)
    assert run.status == "error"
    assert "403" in (run.error or "")
    cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
    assert cfg.status == "error"
    errors = db.session.scalars(
        select(SyncLog).where(SyncLog.owner_id == owner_id, SyncLog.status == "error")
    ).all()
    assert {e.operation for e in errors} == {
        "sync_contacts",
        "sync_leads",
        "sync_tasks",
        "sync_lead_notes",
        "sync_contact_notes",
    }


def test_reconcile_finds_deletions_without_rewriting_unchanged_rows(app, make_sandbox, connected):
    server = make_sandbox(contacts=600, leads=50, tasks=30)
    owner_id = connected(server)
    assert _run(owner_id, full=True).status == "success"
    ids = sorted(server.account.tables["contacts"].records)
    gone = [ids[5], ids[400]]
    for cid in gone:  # deleted in amoCRM while no webhook told us
        assert (
            requests.delete(f"{server.url}/_sandbox/contacts/{cid}", timeout=5).status_code == 204
        )
    synced = {
        r.id: r.synced_at
        for r in db.session.scalars(select(Contact).where(Contact.owner_id == owner_id))
    }
    server.clear_requests()
    run = start_sync(owner_id, trigger="reconcile", enqueue=False)
    assert run.full is True
    run_sync(run.id)
    db.session.expire_all()
    run = db.session.get(SyncRun, run.id)
    assert run.status == "success", run.error
    assert run.counts["contacts"]["mode"] == "reconcile"
    assert run.counts["contacts"]["deleted"] == 2
    assert mirror_count(owner_id, "contacts") == 598
    assert_mirror_equals_sandbox(server, owner_id)
    # Unchanged rows were compared, not rewritten.
    after = {
        r.id: r.synced_at
        for r in db.session.scalars(select(Contact).where(Contact.owner_id == owner_id))
    }
    assert all(after[i] == synced[i] for i in after)
    # The deletions were confirmed one by one (204), after one filtered re-read.
    singles = [
        e
        for e in server.requests_log(kind="api")
        if e["path"].startswith("/api/v4/contacts/")
        and not e["path"].startswith("/api/v4/contacts/notes")
    ]
    assert sorted(e["status"] for e in singles) == [204, 204]
    cursor = db.session.get(SyncCursor, (owner_id, "contacts"))
    assert cursor.last_reconcile_at is not None


def test_beat_schedules_each_connected_owner_once_per_slot(app, sandbox, connected, monkeypatch):
    from workers.sync import schedule_incremental, schedule_reconcile

    sent: list[int] = []
    monkeypatch.setattr("crm_app.services.sync.runs._enqueue", lambda run: sent.append(run.id))
    owner_id = connected(sandbox, "acme")
    other = connected(sandbox, "idle")
    cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == other))
    cfg.sync_contacts = cfg.sync_leads = cfg.sync_tasks = False
    db.session.commit()
    first = schedule_incremental.run()
    assert len(first) == 1 and sent == first
    assert db.session.get(SyncRun, first[0]).owner_id == owner_id
    assert schedule_incremental.run() == []  # a second beat in the same slot does nothing
    assert schedule_reconcile.run() == first  # the owner's run is still active: no second one


def test_a_failed_run_hands_its_checkpoint_to_the_next(app, make_sandbox, connected):
    server = make_sandbox(contacts=1500, leads=20, tasks=20)
    owner_id = connected(server)
    account = server.account

    def block_after_two_pages(state: dict) -> None:
        if state["entity"] == "contacts" and state["pages"] >= 2:
            server.sandbox.limiter.blocked[account.id] = float("inf")  # amoCRM's 403 block

    first = start_sync(owner_id, full=True, enqueue=False)
    run_sync(first.id, progress=block_after_two_pages)
    db.session.expire_all()
    failed = db.session.get(SyncRun, first.id)
    assert failed.status == "error" and "403" in failed.error
    stopped_at = failed.checkpoint["contacts"]["page"]
    assert stopped_at >= 3
    server.unblock()
    server.clear_requests()
    again = _run(owner_id, full=True)
    assert again.status == "success", again.error
    pages = [
        int(e["path"].split("page=")[1].split("&")[0])
        for e in _api_requests(server, "/api/v4/contacts?")
    ]
    assert min(pages) == stopped_at  # went on where the failed run stopped
    assert mirror_count(owner_id, "contacts") == 1500


def test_the_log_tells_created_changed_and_no_changes(app, sandbox, connected):
    from crm_app.services.sync_log import list_log

    owner_id = connected(sandbox)
    first = _run(owner_id, full=True)
    assert first.counts["contacts"]["created"] == len(sandbox_items(sandbox, "contacts"))
    assert first.counts["contacts"]["changed"] == 0
    quiet = _run(owner_id)
    assert quiet.status == "success", quiet.error
    for entity in ("contacts", "leads", "tasks"):
        # The overlap re-reads the newest records; none of them is news.
        assert (quiet.counts[entity]["created"], quiet.counts[entity]["changed"]) == (0, 0)
    lead = sandbox_items(sandbox, "leads")[0]
    requests.patch(
        f"{sandbox.url}/_sandbox/leads/{lead['id']}", json={"name": "Переименована"}, timeout=5
    )
    edited = _run(owner_id)
    assert edited.counts["leads"]["changed"] == 1 and edited.counts["leads"]["created"] == 0
    texts = [item.summary for item in list_log(owner_id, limit=12).items]
    assert any("изменений нет" in t for t in texts), texts
    assert any("создано 0, изменено 1" in t for t in texts), texts
