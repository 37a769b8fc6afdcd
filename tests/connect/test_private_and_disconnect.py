"""Private integrations (pasted code, long-lived token), disconnect, and amoCRM's disconnect hook."""

from __future__ import annotations

import hashlib
import hmac

import pytest
import requests

from crm_app.extensions import db
from crm_app.models import Pipeline, SyncLog
from crm_app.services import connection, settings
from crm_app.services.tokens import load_tokens
from tests.connect.conftest import HX, token_requests


@pytest.fixture
def admin(app, client, owner, login, configure):
    login("alice")
    configure(owner.owner_id)
    return owner


def test_private_code_connects(app, client, admin, sandbox, page_csrf) -> None:
    reply = requests.post(
        f"{sandbox.url}/_sandbox/auth-code", json={"client_id": sandbox.config.client_id}, timeout=5
    )
    code = reply.json()["code"]
    resp = client.post(
        "/admin/crm/ui/code", data={"csrf_token": page_csrf(), "code": code}, headers=HX
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    assert resp.headers["HX-Trigger"] == "crm-connection-changed"
    assert resp.headers["HX-Reswap"] == "none"
    assert 'hx-swap-oob="true"' in resp.get_data(as_text=True)
    assert connection.status(admin.owner_id)["status"] == "connected"
    assert len(token_requests(sandbox)) == 1
    # The account card and the dropdowns are filled from the real account.
    card = client.get("/admin/crm/ui/account", headers=HX).get_data(as_text=True)
    info = connection.account_info(admin.owner_id)
    assert info["account_name"] in card and info["user_email"] in card
    assert db.session.query(Pipeline).filter_by(owner_id=admin.owner_id).count() >= 1
    form = client.get("/admin/crm/ui/settings", headers=HX).get_data(as_text=True)
    first = db.session.query(Pipeline).filter_by(owner_id=admin.owner_id).first()
    assert f'value="{first.id}"' in form
    statuses = client.get(
        "/admin/crm/ui/settings/statuses", query_string={"lead_pipeline_id": first.id}, headers=HX
    ).get_data(as_text=True)
    assert statuses.count("<option") > 2
    log = db.session.query(SyncLog).filter_by(owner_id=admin.owner_id, operation="connect").one()
    assert log.status == "success"


def test_spent_code_is_refused_and_not_echoed(app, client, admin, sandbox, page_csrf) -> None:
    code = sandbox.auth_code()
    connection.connect_with_code(admin.owner_id, code)
    connection.disconnect(admin.owner_id)
    resp = client.post(
        "/admin/crm/ui/code", data={"csrf_token": page_csrf(), "code": code}, headers=HX
    )
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    assert code not in html
    assert "Authorization code has been revoked" in html
    assert connection.status(admin.owner_id)["status"] == "disconnected"


def test_long_lived_token(app, client, admin, sandbox, page_csrf) -> None:
    token = requests.post(
        f"{sandbox.url}/_sandbox/long-lived-token",
        json={"client_id": sandbox.config.client_id, "days": 30},
        timeout=5,
    ).json()["access_token"]
    resp = client.post(
        "/admin/crm/ui/token", data={"csrf_token": page_csrf(), "token": token}, headers=HX
    )
    assert resp.status_code == 200
    assert token not in resp.get_data(as_text=True)
    st = connection.status(admin.owner_id)
    assert st["status"] == "connected" and st["token_kind"] == "long_lived"
    assert load_tokens(admin.owner_id).refresh_token is None
    assert token_requests(sandbox) == []  # nothing to exchange
    assert connection.account_info(admin.owner_id)["account_name"]


def test_rejected_long_lived_token(app, client, admin, sandbox, page_csrf) -> None:
    forged = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjQxMDI0NDQ4MDB9.Zm9yZ2Vk"
    resp = client.post(
        "/admin/crm/ui/token", data={"csrf_token": page_csrf(), "token": forged}, headers=HX
    )
    assert resp.status_code == 422
    assert forged not in resp.get_data(as_text=True)
    assert load_tokens(admin.owner_id) is None
    assert connection.status(admin.owner_id)["status"] == "disconnected"


def test_disconnect_forgets_tokens_keeps_settings(app, client, admin, connected, page_csrf) -> None:
    connected(admin.owner_id)
    resp = client.post("/admin/crm/ui/disconnect", data={"csrf_token": page_csrf()}, headers=HX)
    assert resp.status_code == 200
    assert resp.headers["HX-Trigger"] == "crm-connection-changed"
    assert load_tokens(admin.owner_id) is None
    cfg = settings.get_or_create_config(admin.owner_id)
    assert cfg.status == "disconnected" and cfg.client_secret and cfg.subdomain
    badge = client.get("/admin/crm/ui/status", headers=HX).get_data(as_text=True)
    assert 'data-status="disconnected"' in badge and "Не подключено" in badge


def test_disconnect_without_javascript_redirects(app, client, admin, connected, page_csrf) -> None:
    connected(admin.owner_id)
    resp = client.post("/admin/crm/ui/disconnect", data={"csrf_token": page_csrf()})
    assert resp.status_code == 303
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "amoCRM отключён" in page


def _signed(secret: str, client_uuid: str, account_id: str) -> str:
    return hmac.new(
        secret.encode(), f"{client_uuid}|{account_id}".encode(), hashlib.sha256
    ).hexdigest()


def test_disconnect_hook_signed_by_the_sandbox(app, client, admin, connected, sandbox) -> None:
    connected(admin.owner_id)
    # The sandbox signs the hook exactly as amoCRM does; replay its URL against the app.
    result = requests.post(
        f"{sandbox.url}/_sandbox/disconnect",
        json={"client_id": sandbox.config.client_id, "url": "http://127.0.0.1:9/hook"},
        timeout=10,
    ).json()
    path = result["url"].replace("http://127.0.0.1:9/hook", "/webhooks/amocrm/disconnect")
    resp = client.get(path, headers={"User-Agent": "amoService-oAuth-Code-Sender/1.0"})
    assert resp.status_code == 200
    assert connection.status(admin.owner_id)["status"] == "disconnected"
    assert load_tokens(admin.owner_id) is None
    assert "amoCRM" in (connection.status(admin.owner_id)["last_error"] or "")


def test_disconnect_hook_bad_or_missing_signature(app, client, admin, connected, sandbox) -> None:
    connected(admin.owner_id)
    cfg = settings.get_or_create_config(admin.owner_id)
    uuid, account = cfg.client_id, str(cfg.account_id)
    good = _signed(cfg.client_secret, uuid, account)
    cases = {
        "wrong key": {
            "client_uuid": uuid,
            "account_id": account,
            "signature": _signed("x", uuid, account),
        },
        "tampered": {"client_uuid": uuid, "account_id": account, "signature": good[:-1] + "0"},
        "other account": {
            "client_uuid": uuid,
            "account_id": "1",
            "signature": _signed(cfg.client_secret, uuid, "1"),
        },
        "other client": {"client_uuid": "nope", "account_id": account, "signature": good},
    }
    for name, params in cases.items():
        resp = client.get("/webhooks/amocrm/disconnect", query_string=params)
        assert resp.status_code == 403, name
    for missing in ("client_uuid", "account_id", "signature"):
        params = {"client_uuid": uuid, "account_id": account, "signature": good}
        params.pop(missing)
        assert client.get("/webhooks/amocrm/disconnect", query_string=params).status_code == 400
    assert connection.status(admin.owner_id)["status"] == "connected"
    # The uppercase hex of the right signature is accepted.
    resp = client.get(
        "/webhooks/amocrm/disconnect",
        query_string={"client_uuid": uuid, "account_id": account, "signature": good.upper()},
    )
    assert resp.status_code == 200
    assert connection.status(admin.owner_id)["status"] == "disconnected"
