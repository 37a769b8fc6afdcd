"""Connecting through the JSON API against the amoCRM sandbox: private code, long-lived token."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import World


@pytest.fixture
def sandbox(app, make_sandbox) -> Any:
    server = make_sandbox(contacts=5, leads=5, tasks=5, rate_limit=0)
    app.config["AMOCRM_BASE_URL"] = server.url
    return server


def _settings(sandbox: Any) -> dict[str, Any]:
    cfg = sandbox.config
    return {
        "subdomain": cfg.subdomain,
        "client_id": cfg.client_id,
        "client_secret": cfg.client_secret,
        "redirect_uri": cfg.redirect_uri,
    }


def test_private_code_connects_at_once(client, world: World, sandbox) -> None:
    headers = world.header("user")
    body = _settings(sandbox) | {"authorization_code": sandbox.auth_code()}
    resp = client.put("/admin/crm/config", json=body, headers=headers)
    assert resp.status_code == 200, resp.data
    assert resp.json["status"] == "connected"
    assert sandbox.config.client_secret not in resp.get_data(as_text=True)
    status = client.get("/admin/crm/status", headers=headers).json
    assert status["status"] == "connected"
    account = client.get("/admin/crm/account", headers=headers).json
    assert account["subdomain"] == sandbox.config.subdomain and account["account_id"]
    # The other owner is untouched.
    other = client.get("/admin/crm/status", headers=world.header("other_user")).json
    assert other["status"] == "disconnected"
    # Disconnecting forgets the tokens.
    off = client.post("/admin/crm/disconnect", headers=headers)
    assert off.status_code == 200 and off.json["status"] == "disconnected"


def test_a_refused_code_is_a_clear_error_and_changes_no_connection(client, world, sandbox) -> None:
    headers = world.header("admin")
    body = _settings(sandbox) | {"authorization_code": "never-issued-code"}
    resp = client.put("/admin/crm/config", json=body, headers=headers)
    assert resp.status_code == 400 and resp.mimetype == "application/problem+json"
    assert resp.json["detail"]
    assert client.get("/admin/crm/status", headers=headers).json["status"] == "disconnected"


def test_long_lived_token_connects(client, world: World, sandbox) -> None:
    headers = world.header("user")
    assert (
        client.put("/admin/crm/config", json=_settings(sandbox), headers=headers).status_code == 200
    )
    token = sandbox.long_lived_token()
    resp = client.put("/admin/crm/config", json={"long_lived_token": token}, headers=headers)
    assert resp.status_code == 200, resp.data
    assert resp.json["status"] == "connected" and token not in resp.get_data(as_text=True)


def test_garbage_long_lived_token_is_a_client_error(client, world: World, sandbox) -> None:
    headers = world.header("user")
    client.put("/admin/crm/config", json=_settings(sandbox), headers=headers)
    resp = client.put(
        "/admin/crm/config", json={"long_lived_token": "abc.def.ghi"}, headers=headers
    )
    assert 400 <= resp.status_code < 500 and resp.mimetype == "application/problem+json"


def test_guest_cannot_connect(client, world: World, sandbox) -> None:
    body = {"authorization_code": sandbox.auth_code()}
    resp = client.put("/admin/crm/config", json=body, headers=world.header("guest"))
    assert resp.status_code == 403


def _state(url: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(url).query)["state"][0]


def _callback(client, sandbox, state: str):
    referer = f"{sandbox.config.subdomain}.amocrm.ru"
    query = {"code": sandbox.auth_code(), "state": state, "referer": referer}
    return client.get("/admin/crm/callback", query_string=query)


def test_bearer_issued_state_completes_in_the_same_users_browser(
    client, login, world, sandbox
) -> None:
    headers = world.header("user")
    assert (
        client.put("/admin/crm/config", json=_settings(sandbox), headers=headers).status_code == 200
    )
    url = client.get("/admin/crm/auth-url", headers=headers).json["url"]
    login("acme_user")
    resp = _callback(client, sandbox, _state(url))
    assert resp.status_code in (302, 303), resp.get_data(as_text=True)[:300]
    assert client.get("/admin/crm/status", headers=headers).json["status"] == "connected"


def test_bearer_issued_state_is_refused_in_another_users_browser(
    client, login, world, sandbox
) -> None:
    """OAuth CSRF: a URL minted by one user cannot connect an account in another's browser."""
    headers = world.header("user")
    client.put("/admin/crm/config", json=_settings(sandbox), headers=headers)
    url = client.get("/admin/crm/auth-url", headers=headers).json["url"]
    login("acme_admin")
    resp = _callback(client, sandbox, _state(url))
    assert resp.status_code == 400
    assert client.get("/admin/crm/status", headers=headers).json["status"] == "disconnected"


def test_session_issued_state_completes_in_that_session(
    client, login, csrf_token, world, sandbox
) -> None:
    login("acme_user")
    token = {"X-CSRFToken": csrf_token()}
    assert (
        client.put("/admin/crm/config", json=_settings(sandbox), headers=token).status_code == 200
    )
    url = client.get("/admin/crm/auth-url").json["url"]
    resp = _callback(client, sandbox, _state(url))
    assert resp.status_code in (302, 303), resp.get_data(as_text=True)[:300]
    assert client.get("/admin/crm/status").json["status"] == "connected"
