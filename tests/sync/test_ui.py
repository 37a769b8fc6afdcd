"""The sync card: buttons by role, start, progress polling that stops with 286 + sync-finished."""

from __future__ import annotations

import re

import pytest

from crm_app.extensions import db
from crm_app.models import SyncRun
from crm_app.services.sync import run_sync

HX = {"HX-Request": "true"}


@pytest.fixture
def no_enqueue(monkeypatch):
    """Runs are executed by the test itself, not by a worker."""
    sent: list[int] = []
    monkeypatch.setattr("crm_app.services.sync.runs._enqueue", lambda run: sent.append(run.id))
    return sent


def test_card_requires_login(client):
    resp = client.get("/admin/crm/ui/sync", headers=HX)
    assert resp.status_code == 401 and "HX-Redirect" in resp.headers
    assert client.get("/admin/crm/ui/sync").status_code in (302, 401)


def test_guest_sees_no_buttons_and_cannot_start(
    app, client, sandbox, connected, make_user, login, csrf_token
):
    owner_id = connected(sandbox, "acme")
    make_user("visitor", role="guest", owner="acme")
    login("visitor")
    html = client.get("/admin/crm/ui/sync", headers=HX).get_data(as_text=True)
    assert 'id="sync-card"' in html and "sync-start" not in html
    resp = client.post("/admin/crm/ui/sync", data={"csrf_token": csrf_token()}, headers=HX)
    assert resp.status_code == 403
    assert db.session.query(SyncRun).filter_by(owner_id=owner_id).count() == 0


def test_not_connected_owner_gets_a_clear_message(
    app, client, make_user, login, csrf_token, no_enqueue
):
    make_user("solo", role="user", owner="lonely")
    login("solo")
    html = client.get("/admin/crm/ui/sync", headers=HX).get_data(as_text=True)
    assert re.search(r'id="sync-start"[^>]*disabled', html)
    resp = client.post("/admin/crm/ui/sync", data={"csrf_token": csrf_token()}, headers=HX)
    assert resp.status_code == 409
    assert "подключите аккаунт" in resp.get_data(as_text=True)
    assert no_enqueue == []


def test_start_poll_and_finish(app, client, sandbox, connected, login, csrf_token, no_enqueue):
    owner_id = connected(sandbox, "acme")
    login("acme-admin")
    card = client.get("/admin/crm/ui/sync", headers=HX).get_data(as_text=True)
    assert "Синхронизировать" in card and "Полная синхронизация" in card
    assert 'hx-trigger="sync-finished from:body' in card

    # Without the CSRF token the POST is refused.
    assert client.post("/admin/crm/ui/sync", data={"full": "1"}, headers=HX).status_code == 400
    resp = client.post(
        "/admin/crm/ui/sync", data={"full": "1"}, headers=HX | {"X-CSRFToken": csrf_token()}
    )
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    run = db.session.query(SyncRun).filter_by(owner_id=owner_id).one()
    assert no_enqueue == [run.id] and run.full is True and run.trigger == "manual"
    assert f'hx-get="/admin/crm/ui/sync/runs/{run.id}"' in html
    assert 'hx-trigger="every 2s"' in html
    assert "sync-start" not in html  # no second start while one runs

    # A second press while it is queued returns the same run.
    client.post("/admin/crm/ui/sync", data={}, headers=HX | {"X-CSRFToken": csrf_token()})
    assert db.session.query(SyncRun).filter_by(owner_id=owner_id).count() == 1

    poll = client.get(f"/admin/crm/ui/sync/runs/{run.id}", headers=HX)
    assert poll.status_code == 200 and 'hx-trigger="every 2s"' in poll.get_data(as_text=True)
    assert "HX-Trigger" not in poll.headers

    run_sync(run.id)
    done = client.get(f"/admin/crm/ui/sync/runs/{run.id}", headers=HX)
    body = done.get_data(as_text=True)
    assert done.status_code == 286
    assert done.headers["HX-Trigger"] == "sync-finished"
    assert "hx-trigger" not in body
    total = sum(len(sandbox.account.tables[k].records) for k in ("contacts", "leads", "tasks"))
    assert re.search(rf'id="sync-records">{total}<', body)
    assert "Контакты: 60" in body

    # The card afterwards: buttons back, last run summary.
    card = client.get("/admin/crm/ui/sync", headers=HX).get_data(as_text=True)
    assert "sync-start" in card and 'id="sync-last"' in card and "успешно" in card


def test_runs_of_other_owners_are_not_visible(
    app, client, sandbox, connected, make_user, login, no_enqueue
):
    from crm_app.services.sync import start_sync

    other = connected(sandbox, "other")
    run = start_sync(other, enqueue=False)
    make_user("mallory", role="user", owner="mine")
    login("mallory")
    assert client.get(f"/admin/crm/ui/sync/runs/{run.id}", headers=HX).status_code == 404
    assert client.get(f"/admin/crm/ui/sync?owner_id={other}", headers=HX).status_code == 404


def test_admin_sees_another_owners_card(
    app, client, sandbox, connected, make_user, login, no_enqueue
):
    from crm_app.services.sync import start_sync

    other = connected(sandbox, "other")
    run = start_sync(other, enqueue=False)
    make_user("root", role="admin", owner="hq")
    login("root")
    html = client.get(f"/admin/crm/ui/sync?owner_id={other}", headers=HX).get_data(as_text=True)
    # Its URLs keep the owner_id, so the polling stays on that owner.
    assert f"/admin/crm/ui/sync/runs/{run.id}?owner_id={other}" in html
