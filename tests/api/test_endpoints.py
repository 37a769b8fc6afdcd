"""What each endpoint answers: amoCRM shapes, paging and search, settings, sync runs, stats."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.api.conftest import World, add_run, mark_connected


def _get(client, world: World, path: str, role: str = "user", **query: Any) -> Any:
    resp = client.get(path, headers=world.header(role), query_string=query)
    assert resp.status_code == 200, resp.get_data(as_text=True)[:400]
    assert resp.mimetype == "application/json"
    return resp.json


# -- mirror ---------------------------------------------------------------------------------------


def test_contacts_are_amocrm_shaped(client, world: World) -> None:
    data = _get(client, world, "/admin/crm/contacts")
    assert data["total"] == 3 and data["limit"] == 50 and data["offset"] == 0
    contacts = data["_embedded"]["contacts"]
    assert [c["id"] for c in contacts] == [1003, 1002, 1001]  # newest change first
    first = contacts[0]
    assert first["name"] == "acme contact 3"
    codes = {f["field_code"]: f["values"][0]["value"] for f in first["custom_fields_values"]}
    assert codes["PHONE"] == "+79001234503"
    assert codes["EMAIL"] == "c3@x.io"
    assert first["_embedded"]["tags"] == [{"id": 5, "name": "vip"}]


def test_contacts_paging_and_search(client, world: World) -> None:
    page = _get(client, world, "/admin/crm/contacts", limit=2, offset=2)
    assert page["total"] == 3
    assert [c["id"] for c in page["_embedded"]["contacts"]] == [1001]
    by_name = _get(client, world, "/admin/crm/contacts", q="contact 2")
    assert [c["id"] for c in by_name["_embedded"]["contacts"]] == [1002]
    by_phone = _get(client, world, "/admin/crm/contacts", q="8 900 123-45-01")
    assert [c["id"] for c in by_phone["_embedded"]["contacts"]] == [1001]
    by_email = _get(client, world, "/admin/crm/contacts", q="C3@ACME")
    assert [c["id"] for c in by_email["_embedded"]["contacts"]] == [1003]
    by_id = _get(client, world, "/admin/crm/contacts", q="1002")
    assert [c["id"] for c in by_id["_embedded"]["contacts"]] == [1002]
    # Wildcards are literal characters, and another owner's rows never match.
    assert _get(client, world, "/admin/crm/contacts", q="%")["total"] == 0
    assert _get(client, world, "/admin/crm/contacts", q="_")["total"] == 0
    assert _get(client, world, "/admin/crm/contacts", q="globex")["total"] == 0


def test_leads_carry_price_pipeline_and_contacts(client, world: World) -> None:
    data = _get(client, world, "/admin/crm/leads", q="deal 2")
    (lead,) = data["_embedded"]["leads"]
    assert lead["id"] == 2002 and lead["price"] == 2000
    assert lead["pipeline_id"] == 100 + world.own and lead["status_id"] == 10
    assert lead["_embedded"]["contacts"] == [{"id": 1002, "is_main": True}]


def test_tasks(client, world: World) -> None:
    data = _get(client, world, "/admin/crm/tasks", q="call back 1")
    (task,) = data["_embedded"]["tasks"]
    assert task["entity_type"] == "leads" and task["entity_id"] == 2001
    assert task["is_completed"] is False and task["result"].get("text") is None


def test_pipelines_with_statuses(client, world: World) -> None:
    data = _get(client, world, "/admin/crm/pipelines")
    assert data["total"] == 1
    (pipeline,) = data["_embedded"]["pipelines"]
    assert pipeline["name"] == "acme sales" and pipeline["is_main"] is True
    assert [s["id"] for s in pipeline["_embedded"]["statuses"]] == [10, 142, 143]


# -- log, stats, runs -----------------------------------------------------------------------------


def test_sync_log_newest_first_paged_and_filtered(client, world: World) -> None:
    data = _get(client, world, "/admin/crm/sync/log")
    ops = [i["operation"] for i in data["items"]]
    assert ops == ["create_lead", "sync_leads", "sync_contacts"]
    stamps = [datetime.fromisoformat(i["timestamp"]) for i in data["items"]]
    assert stamps == sorted(stamps, reverse=True) and all(s.tzinfo for s in stamps)
    assert set(data["items"][0]) >= {"timestamp", "operation", "status", "details"}
    page = _get(client, world, "/admin/crm/sync/log", limit=1, offset=1)
    assert page["total"] == 3 and [i["operation"] for i in page["items"]] == ["sync_leads"]
    errors = _get(client, world, "/admin/crm/sync/log", status="error")
    assert [i["operation"] for i in errors["items"]] == ["create_lead"]
    contacts = _get(client, world, "/admin/crm/sync/log", operation="sync_contacts")
    assert contacts["total"] == 1


def test_stats(client, world: World) -> None:
    data = _get(client, world, "/admin/crm/stats")
    assert (data["contacts_count"], data["leads_count"], data["tasks_count"]) == (3, 3, 3)
    # The seeded run has no finish time, so there is no successful sync to report yet.
    assert data["last_sync_at"] is None


def test_sync_starts_once_and_can_be_polled(client, world: World) -> None:
    from crm_app.extensions import db
    from crm_app.models import SyncRun

    mark_connected(world.own)
    headers = world.header("user")
    first = client.post("/admin/crm/sync", headers=headers, json={"entities": ["leads"]})
    assert first.status_code == 202, first.data
    run_id = first.json["run_id"]
    assert first.headers["Location"] == f"/admin/crm/sync/runs/{run_id}"
    assert first.json["status"] == "queued" and first.json["entities"] == ["leads"]
    run = db.session.get(SyncRun, run_id)
    assert run is not None and run.owner_id == world.own and run.trigger == "api"
    # While it is active, another request gets the same run.
    again = client.post("/admin/crm/sync", headers=headers)
    assert again.status_code == 202 and again.json["run_id"] == run_id
    polled = _get(client, world, f"/admin/crm/sync/runs/{run_id}")
    assert polled["run_id"] == run_id and polled["status"] == "queued"


def test_sync_while_disconnected_is_refused_and_queues_nothing(client, world: World) -> None:
    from crm_app.extensions import db
    from crm_app.models import SyncRun

    before = db.session.scalar(db.select(db.func.count()).select_from(SyncRun))
    resp = client.post("/admin/crm/sync", headers=world.header("user"), json={})
    assert resp.status_code == 409 and resp.mimetype == "application/problem+json"
    assert "not connected" in resp.json["detail"]
    assert db.session.scalar(db.select(db.func.count()).select_from(SyncRun)) == before


def test_sync_with_everything_switched_off_is_a_conflict(client, world: World) -> None:
    mark_connected(world.own)
    headers = world.header("admin")
    off = {"sync_contacts": False, "sync_leads": False, "sync_tasks": False}
    assert client.put("/admin/crm/config", headers=headers, json=off).status_code == 200
    resp = client.post("/admin/crm/sync", headers=headers, json={})
    assert resp.status_code == 409 and resp.mimetype == "application/problem+json"
    assert "nothing to sync" in resp.json["detail"]


def test_sync_run_of_a_finished_run(client, world: World) -> None:
    run_id = add_run(world.own, status="error")
    data = _get(client, world, f"/admin/crm/sync/runs/{run_id}")
    assert data["status"] == "error"
    assert (
        client.get("/admin/crm/sync/runs/999999", headers=world.header("user")).status_code == 404
    )


# -- settings -------------------------------------------------------------------------------------


def test_config_never_shows_secrets(client, world: World) -> None:
    resp = client.get("/admin/crm/config", headers=world.header("user"))
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "secret-acme-value" not in text
    data = resp.json
    assert data["client_secret_set"] is True and "client_secret" not in data
    assert data["webhook_url"].startswith("http://127.0.0.1:5000/webhooks/amocrm/")
    assert data["status"] == "disconnected"
    # Guests read the settings but not the webhook URL, which is a secret of its own.
    guest = client.get("/admin/crm/config", headers=world.header("guest")).json
    assert guest["webhook_url"] is None and guest["subdomain"] == "acmecorp"


def test_put_config_changes_only_what_was_sent(client, world: World) -> None:
    from crm_app.extensions import db
    from crm_app.models import AmoConfig

    headers = world.header("user")
    resp = client.put("/admin/crm/config", headers=headers, json={"client_id": "new-client"})
    assert resp.status_code == 200, resp.data
    data = resp.json
    assert data["client_id"] == "new-client" and data["subdomain"] == "acmecorp"
    cfg = db.session.scalar(db.select(AmoConfig).where(AmoConfig.owner_id == world.own))
    db.session.refresh(cfg)
    assert cfg.client_secret == "secret-acme-value"  # untouched
    # An empty secret keeps the stored one; a new secret replaces it and is still not shown.
    assert client.put("/admin/crm/config", headers=headers, json={"client_secret": ""}).json[
        "client_secret_set"
    ]
    resp = client.put("/admin/crm/config", headers=headers, json={"client_secret": "n3w-s3cret"})
    assert "n3w-s3cret" not in resp.get_data(as_text=True)
    db.session.refresh(cfg)
    assert cfg.client_secret == "n3w-s3cret"
    cleared = client.put("/admin/crm/config", headers=headers, json={"lead_pipeline_id": None})
    assert cleared.status_code == 200 and cleared.json["lead_pipeline_id"] is None


def test_put_config_field_errors(client, world: World) -> None:
    headers = world.header("admin")
    resp = client.put("/admin/crm/config", headers=headers, json={"subdomain": "bad.host/x"})
    assert resp.status_code == 422 and resp.mimetype == "application/problem+json"
    (error,) = resp.json["errors"]
    assert error["in"] == "body" and error["loc"] == ["subdomain"] and error["msg"]
    # The service's own checks surface the same way: a status needs its pipeline.
    resp = client.put("/admin/crm/config", headers=headers, json={"lead_status_id": 10})
    assert resp.status_code == 422
    assert [e["loc"] for e in resp.json["errors"]] == [["lead_pipeline_id"]]
    # A code and a token at once is ambiguous.
    both = {"authorization_code": "abc", "long_lived_token": "def"}
    assert client.put("/admin/crm/config", headers=headers, json=both).status_code == 422


def test_auth_url_has_client_id_single_use_state_and_mode(client, world: World) -> None:
    from urllib.parse import parse_qs, urlsplit

    from crm_app.extensions import db
    from crm_app.models import OAuthState

    headers = world.header("user")
    first = client.get("/admin/crm/auth-url", headers=headers, query_string={"mode": "popup"})
    second = client.get("/admin/crm/auth-url", headers=headers)
    assert first.status_code == 200 and second.status_code == 200
    q1 = parse_qs(urlsplit(first.json["url"]).query)
    q2 = parse_qs(urlsplit(second.json["url"]).query)
    assert q1["client_id"] == ["client-acme"] and q1["mode"] == ["popup"]
    assert q2["mode"] == ["post_message"]
    assert q1["state"] != q2["state"]
    rows = db.session.scalars(db.select(OAuthState)).all()
    assert len(rows) == 2
    assert all(r.owner_id == world.own and r.user_id == world.users["user"].id for r in rows)
    assert all(r.used_at is None for r in rows)
    bad = client.get("/admin/crm/auth-url", headers=headers, query_string={"mode": "redirect"})
    assert bad.status_code == 422


def test_status_account_and_disconnect(client, world: World) -> None:
    status = _get(client, world, "/admin/crm/status")
    assert status["status"] == "disconnected" and status["last_error"] is None
    account = _get(client, world, "/admin/crm/account")
    assert set(account) >= {"account_id", "account_name", "subdomain", "user_name", "user_email"}
    resp = client.post("/admin/crm/disconnect", headers=world.header("user"))
    assert resp.status_code == 200 and resp.json["status"] == "disconnected"


def test_errors_are_problem_documents(client, world: World) -> None:
    headers = world.header("user")
    missing = client.get("/admin/crm/nope", headers=headers)
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    wrong = client.delete("/admin/crm/config", headers=headers)
    assert wrong.status_code == 405 and wrong.mimetype == "application/problem+json"
    assert "PUT" in wrong.headers["Allow"]


def test_a_response_that_breaks_its_schema_is_a_bare_500(client, world: World, monkeypatch) -> None:
    import crm_app.web.api as api

    monkeypatch.setattr(api, "get_stats", lambda owner_id: {"contacts_count": "secret-ish"})
    resp = client.get("/admin/crm/stats", headers=world.header("user"))
    assert resp.status_code == 500 and resp.mimetype == "application/problem+json"
    assert "secret-ish" not in resp.get_data(as_text=True)


def test_sync_log_masks_secret_shaped_details(app, client, make_user, auth_header):
    """A secret that some writer put into log details never comes back through the API."""
    from crm_app.extensions import db
    from crm_app.models import SyncLog

    user = make_user("logreader", role="user", owner="masked")
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    db.session.add(
        SyncLog(
            owner_id=user.owner_id,
            operation="sync_contacts",
            status="error",
            details={
                "refresh_token": "rt-canary-123456",
                "error": f"Bearer {jwt_like}",
                "status_code": 401,
            },
        )
    )
    db.session.commit()
    body = client.get("/admin/crm/sync/log", headers=auth_header("logreader")).get_data(
        as_text=True
    )
    assert "rt-canary-123456" not in body and jwt_like not in body
    assert '"status_code":401' in body.replace(" ", "")


def test_new_deal_when_closed_is_a_setting(client, world: World) -> None:
    """Repeat contacts with a closed deal: new deal (default) or a note — chosen in the settings."""
    headers = world.header("user")
    assert client.get("/admin/crm/config", headers=headers).json["new_deal_when_closed"] is True
    resp = client.put("/admin/crm/config", headers=headers, json={"new_deal_when_closed": False})
    assert resp.status_code == 200, resp.json
    assert client.get("/admin/crm/config", headers=headers).json["new_deal_when_closed"] is False
    from crm_app.extensions import db
    from crm_app.models import AmoConfig

    cfg = db.session.scalar(db.select(AmoConfig).where(AmoConfig.owner_id == world.own))
    db.session.refresh(cfg)
    assert cfg.new_deal_when_closed is False
