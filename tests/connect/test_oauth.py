"""The OAuth popup flow against the sandbox, and every way a callback is refused before any call."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from crm_app.extensions import db
from crm_app.models import OAuthState
from crm_app.services import connection, settings
from crm_app.services.tokens import load_tokens
from tests.connect.conftest import HX, token_requests


@pytest.fixture
def admin(app, client, owner, login, configure):
    """alice (admin of acme) signed in, with settings that match the sandbox integration."""
    login("alice")
    configure(owner.owner_id)
    return owner


def _auth_url(client, page_csrf) -> str:
    resp = client.post("/admin/crm/ui/auth-url", data={"csrf_token": page_csrf()}, headers=HX)
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    match = re.search(r'id="connect-amocrm" href="([^"]+)"', resp.get_data(as_text=True))
    assert match, "no Подключить amoCRM link"
    return unescape(match.group(1))


def _consent(url: str, decision: str = "allow") -> str:
    """Open the sandbox's consent page and press Разрешить/Отказаться; return the redirect."""
    page = requests.get(url, timeout=5)
    assert page.status_code == 200 and "Разрешить" in page.text
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    action = re.search(r'<form method="post" action="([^"]+)" id="allow-form"', page.text)
    assert action
    origin = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
    reply = requests.post(
        origin + action.group(1),
        data={**{k: unescape(v) for k, v in fields.items()}, "decision": decision},
        allow_redirects=False,
        timeout=5,
    )
    assert reply.status_code == 302
    return reply.headers["Location"]


def _local(location: str) -> str:
    parts = urlsplit(location)
    assert parts.path == "/admin/crm/callback"
    return f"{parts.path}?{parts.query}"


def test_popup_flow_connects(app, client, admin, sandbox, page_csrf) -> None:
    url = _auth_url(client, page_csrf)
    query = parse_qs(urlsplit(url).query)
    assert query["mode"] == ["post_message"]
    assert query["client_id"] == [sandbox.config.client_id]
    state = query["state"][0]
    # Only a hash of the state is stored.
    assert db.session.query(OAuthState).filter_by(state_hash=state).count() == 0

    location = _consent(url)
    resp = client.get(_local(location))
    assert resp.status_code == 303
    assert resp.headers["Location"].endswith("/admin/crm/callback/done")
    done = client.get(resp.headers["Location"])
    assert done.status_code == 200
    html = done.get_data(as_text=True)
    assert 'data-oauth-result="success"' in html
    assert "/static/js/oauth-callback.js" in html and "<script>" not in html

    st = connection.status(admin.owner_id)
    assert st["status"] == "connected"
    info = connection.account_info(admin.owner_id)
    assert info["account_name"] and info["user_email"] and info["account_id"]
    assert len(token_requests(sandbox)) == 1
    badge = client.get("/admin/crm/ui/status", headers=HX).get_data(as_text=True)
    assert 'data-status="connected"' in badge and "Подключено" in badge

    # The same redirect again: the state is spent, nothing is sent to amoCRM.
    sandbox.clear_requests()
    again = client.get(_local(location))
    assert again.status_code == 400
    assert sandbox.requests_log() == []


def test_declined_consent_is_a_clear_400(app, client, admin, sandbox, page_csrf) -> None:
    location = _consent(_auth_url(client, page_csrf), decision="deny")
    sandbox.clear_requests()
    resp = client.get(_local(location))
    assert resp.status_code == 400
    assert "Отказать" in resp.get_data(as_text=True) or "Доступ не предоставлен" in (
        resp.get_data(as_text=True)
    )
    assert sandbox.requests_log() == []
    assert connection.status(admin.owner_id)["status"] == "disconnected"


def _callback(client, **params: str):
    return client.get("/admin/crm/callback", query_string=params)


def _valid_params(client, page_csrf, sandbox) -> dict[str, str]:
    state = parse_qs(urlsplit(_auth_url(client, page_csrf)).query)["state"][0]
    return {
        "code": sandbox.auth_code(),
        "state": state,
        "referer": f"{sandbox.config.subdomain}.amocrm.ru",
        "platform": "1",
        "client_id": sandbox.config.client_id,
    }


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("missing state", {"state": None}),
        ("unknown state", {"state": "forged-state-value"}),
        ("missing code", {"code": None}),
        ("missing referer", {"referer": None}),
        ("foreign referer", {"referer": "demo.evil.example"}),
        ("referer with path", {"referer": "demo.amocrm.ru/evil"}),
        ("other account", {"referer": "someone.amocrm.ru"}),
        ("other domain", {"referer": "demo.kommo.com"}),
        ("other integration", {"client_id": "another-client"}),
    ],
)
def test_bad_callbacks_are_refused_before_any_call(
    app, client, admin, sandbox, page_csrf, case, change
) -> None:
    params = _valid_params(client, page_csrf, sandbox)
    for key, value in change.items():
        if value is None:
            params.pop(key)
        else:
            params[key] = value
    sandbox.clear_requests()
    resp = _callback(client, **params)
    assert resp.status_code == 400, case
    assert 'data-oauth-result="error"' in resp.get_data(as_text=True)
    assert sandbox.requests_log() == [], case
    assert load_tokens(admin.owner_id) is None


def test_expired_state(app, client, admin, sandbox, page_csrf) -> None:
    params = _valid_params(client, page_csrf, sandbox)
    db.session.query(OAuthState).update(
        {OAuthState.expires_at: datetime.now(UTC) - timedelta(seconds=1)}
    )
    db.session.commit()
    sandbox.clear_requests()
    resp = _callback(client, **params)
    assert resp.status_code == 400
    assert "истёк" in resp.get_data(as_text=True)
    assert sandbox.requests_log() == []


def test_state_from_another_session(app, client, admin, sandbox, page_csrf, make_user) -> None:
    params = _valid_params(client, page_csrf, sandbox)
    # Another browser (its own session) of the same user replays the redirect.
    other = app.test_client()
    from tests.conftest import _csrf

    signed_in = other.post(
        "/login", data={"username": "alice", "password": "password123", "csrf_token": _csrf(other)}
    )
    assert signed_in.status_code == 302
    sandbox.clear_requests()
    resp = other.get("/admin/crm/callback", query_string=params)
    assert resp.status_code == 400
    assert sandbox.requests_log() == []
    # The rightful session can still finish: the state was not burnt by the intruder.
    resp = _callback(client, **params)
    assert resp.status_code == 303
    assert connection.status(admin.owner_id)["status"] == "connected"


def test_callback_requires_login(app, client, sandbox) -> None:
    resp = client.get("/admin/crm/callback", query_string={"code": "x", "state": "y"})
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    assert sandbox.requests_log() == []


def test_subdomain_unset_is_adopted_from_referer(
    app, client, owner, login, sandbox, page_csrf
) -> None:
    """Settings may leave the subdomain empty: the referer of a valid callback fills it in."""
    login("alice")
    cfg = settings.get_or_create_config(owner.owner_id)
    cfg.client_id = sandbox.config.client_id
    cfg.client_secret = sandbox.config.client_secret
    cfg.redirect_uri = app.config["PUBLIC_URL"] + "/admin/crm/callback"
    db.session.commit()
    location = _consent(_auth_url(client, page_csrf))
    assert client.get(_local(location)).status_code == 303
    cfg = settings.get_or_create_config(owner.owner_id)
    assert (cfg.subdomain, cfg.domain) == (sandbox.config.subdomain, "amocrm.ru")
    assert connection.status(owner.owner_id)["status"] == "connected"


def test_auth_url_needs_the_integration(app, client, owner, login, page_csrf) -> None:
    login("alice")
    resp = client.post("/admin/crm/ui/auth-url", data={"csrf_token": page_csrf()}, headers=HX)
    assert resp.status_code == 422
    assert "Client ID" in resp.get_data(as_text=True)
    assert db.session.query(OAuthState).count() == 0


def test_state_issued_to_the_api_completes_in_that_users_browser(
    app, client, admin, sandbox, make_user
) -> None:
    """A Bearer caller has no session: its state is bound to the user instead."""
    url = connection.build_auth_url(admin.owner_id, admin.id, connection.api_nonce(admin.id))
    state = parse_qs(urlsplit(url).query)["state"][0]
    params = {
        "code": sandbox.auth_code(),
        "state": state,
        "referer": f"{sandbox.config.subdomain}.amocrm.ru",
    }
    # Another user's browser cannot complete it...
    make_user("mallory", role="admin", owner="acme")
    from tests.conftest import _csrf

    other = app.test_client()
    other.post(
        "/login",
        data={"username": "mallory", "password": "password123", "csrf_token": _csrf(other)},
    )
    sandbox.clear_requests()
    assert other.get("/admin/crm/callback", query_string=params).status_code == 400
    assert sandbox.requests_log() == []
    # ...the user it was issued to can.
    assert _callback(client, **params).status_code == 303
    assert connection.status(admin.owner_id)["status"] == "connected"
