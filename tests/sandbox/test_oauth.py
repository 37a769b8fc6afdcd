"""OAuth: consent page, code exchange, every documented token error, refresh rotation, hooks."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs, urlsplit

import jwt
import requests

from crm_app.sandbox import SandboxServer
from tests.sandbox.helpers import Api, Factory, Receiver, exchange

OAUTH_TYPE = "https://developers.amocrm.ru/v3/errors/OAuthProblemJson"
OAUTH_DETAIL = "В запросе отсутствует ряд параметров или параметры невалидны"


def code_for(server: SandboxServer, **body: str) -> str:
    body.setdefault("client_id", server.config.client_id)
    reply = requests.post(f"{server.url}/_sandbox/auth-code", json=body, timeout=5)
    assert reply.status_code == 200
    return str(reply.json()["code"])


def refresh(server: SandboxServer, token: str, **overrides: str) -> requests.Response:
    cfg = server.config
    body = {
        "client_id": cfg.client_id,
        "client_secret": cfg.client_secret,
        "grant_type": "refresh_token",
        "refresh_token": token,
        "redirect_uri": cfg.redirect_uri,
    }
    body.update(overrides)
    return requests.post(f"{server.url}/oauth2/access_token", json=body, timeout=5)


def assert_oauth_error(reply: requests.Response, status: int, hint: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.json() == {
        "hint": hint,
        "title": "Некорректный запрос",
        "type": OAUTH_TYPE,
        "status": status,
        "detail": OAUTH_DETAIL,
    }


# --- consent page ---------------------------------------------------------------------
def test_consent_page_is_russian_with_both_buttons(make_sandbox: Factory) -> None:
    server = make_sandbox(accounts=2)
    cfg = server.config
    page = requests.get(
        f"{server.url}/oauth",
        params={"client_id": cfg.client_id, "state": "s1", "mode": "popup"},
        timeout=5,
    )
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "Разрешить" in page.text and "Отказаться" in page.text
    assert 'value="demo"' in page.text and 'value="demo2"' in page.text  # the account picker


def test_allow_redirects_with_code_state_referer_platform(sandbox: SandboxServer) -> None:
    cfg = sandbox.config
    reply = requests.post(
        f"{sandbox.url}/oauth/decision",
        data={"client_id": cfg.client_id, "state": "xyz", "decision": "allow", "account": "demo"},
        allow_redirects=False,
        timeout=5,
    )
    assert reply.status_code == 302
    location = reply.headers["Location"]
    assert location.startswith(cfg.redirect_uri + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == ["xyz"]
    assert query["referer"] == ["demo.amocrm.ru"]  # a bare host, no scheme
    assert query["platform"] == ["1"]
    assert query["client_id"] == [cfg.client_id]
    assert exchange(sandbox, query["code"][0]).status_code == 200


def test_allow_without_state_omits_it_and_deny_says_access_denied(sandbox: SandboxServer) -> None:
    cfg = sandbox.config
    url = f"{sandbox.url}/oauth/decision"
    allow = requests.post(
        url,
        data={"client_id": cfg.client_id, "decision": "allow"},
        allow_redirects=False,
        timeout=5,
    )
    assert "state" not in parse_qs(urlsplit(allow.headers["Location"]).query)
    deny = requests.post(
        url,
        data={"client_id": cfg.client_id, "state": "abc", "decision": "deny"},
        allow_redirects=False,
        timeout=5,
    )
    query = parse_qs(urlsplit(deny.headers["Location"]).query)
    assert query == {"error": ["access_denied"], "state": ["abc"], "client_id": [cfg.client_id]}


def test_unknown_client_gets_an_error_page(sandbox: SandboxServer) -> None:
    page = requests.get(f"{sandbox.url}/oauth", params={"client_id": "nope"}, timeout=5)
    assert page.status_code == 400
    assert "Интеграция не найдена" in page.text


# --- code exchange --------------------------------------------------------------------
def test_code_exchange_returns_a_jwt_with_the_documented_claims(sandbox: SandboxServer) -> None:
    reply = exchange(sandbox, code_for(sandbox))
    assert reply.status_code == 200
    body = reply.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86400
    assert isinstance(body["server_time"], int)
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    account = sandbox.account
    assert claims["account_id"] == account.id
    assert claims["api_domain"] == "api-b.amocrm.ru"
    assert claims["base_domain"] == "amocrm.ru"
    assert claims["sub"] == str(account.admin.id)
    assert claims["aud"] == claims["client_uuid"] == sandbox.config.client_id
    assert claims["exp"] - claims["iat"] == 86400
    assert "crm" in claims["scopes"]
    me = Api(sandbox.url, body["access_token"]).get("/api/v4/account")
    assert me.json()["current_user_id"] == account.admin.id


def test_token_endpoint_accepts_form_bodies(sandbox: SandboxServer) -> None:
    cfg = sandbox.config
    reply = requests.post(
        f"{sandbox.url}/oauth2/access_token",
        data={
            "client_id": cfg.client_id,
            "client_secret": cfg.client_secret,
            "grant_type": "authorization_code",
            "code": code_for(sandbox),
            "redirect_uri": cfg.redirect_uri,
        },
        timeout=5,
    )
    assert reply.status_code == 200
    assert reply.json()["refresh_token"]


def test_code_is_single_use(sandbox: SandboxServer) -> None:
    code = code_for(sandbox)
    assert exchange(sandbox, code).status_code == 200
    assert_oauth_error(exchange(sandbox, code), 400, "Authorization code has been revoked")


def test_code_expires_after_20_minutes(sandbox: SandboxServer) -> None:
    code = code_for(sandbox)
    requests.post(f"{sandbox.url}/_sandbox/clock", json={"advance": 20 * 60 + 1}, timeout=5)
    assert_oauth_error(exchange(sandbox, code), 400, "Authorization code has expired")


def test_code_still_works_just_before_20_minutes(sandbox: SandboxServer) -> None:
    code = code_for(sandbox)
    sandbox.advance_clock(19 * 60)
    assert exchange(sandbox, code).status_code == 200


def test_client_errors_have_their_hints(sandbox: SandboxServer) -> None:
    code = code_for(sandbox)
    assert_oauth_error(exchange(sandbox, "garbage"), 400, "Cannot decrypt the authorization code")
    assert_oauth_error(
        exchange(sandbox, code, client_id="unknown"), 400, "Check the `client_id` parameter"
    )
    assert_oauth_error(
        exchange(sandbox, code, client_secret="wrong"), 400, "Check the `client_secret` parameter"
    )
    assert_oauth_error(
        exchange(sandbox, code, redirect_uri=sandbox.config.redirect_uri + "/"),
        400,
        "Redirect URI is not associated with client",
    )
    # None of the failures spent the code.
    assert exchange(sandbox, code).status_code == 200


def test_invalid_client_style_is_a_switch(make_sandbox: Factory) -> None:
    server = make_sandbox(oauth_client_errors="invalid_client")
    reply = exchange(server, code_for(server), client_secret="wrong")
    assert reply.status_code == 401
    assert reply.json() == {
        "title": "Некорректный клиент",
        "type": OAUTH_TYPE,
        "status": 401,
        "detail": "Авторизация клиента не прошла",
    }


def test_code_of_another_integration_is_refused(sandbox: SandboxServer) -> None:
    sandbox.register_integration("other-client", "other-secret", "https://example.test/cb")
    code = code_for(sandbox, client_id="other-client")
    reply = exchange(sandbox, code)
    assert reply.status_code == 400
    assert reply.json()["hint"] == "Authorization code was not issued to this client"


# --- refresh ----------------------------------------------------------------------------
def test_refresh_rotates_and_the_old_token_is_revoked(sandbox: SandboxServer) -> None:
    first = exchange(sandbox, code_for(sandbox)).json()
    second = refresh(sandbox, first["refresh_token"])
    assert second.status_code == 200
    assert second.json()["refresh_token"] != first["refresh_token"]
    reused = refresh(sandbox, first["refresh_token"])
    assert_oauth_error(reused, 401, "Token has been revoked")
    third = refresh(sandbox, second.json()["refresh_token"])
    assert third.status_code == 200
    # Earlier access tokens stay valid until they expire.
    assert Api(sandbox.url, first["access_token"]).get("/api/v4/account").status_code == 200


def test_grace_mode_keeps_the_old_refresh_token_until_the_new_one_is_used(
    make_sandbox: Factory,
) -> None:
    server = make_sandbox(refresh_grace=True)
    first = exchange(server, code_for(server)).json()
    lost = refresh(server, first["refresh_token"]).json()  # the answer "got lost"
    retried = refresh(server, first["refresh_token"])
    assert retried.status_code == 200
    assert retried.json()["refresh_token"] != lost["refresh_token"]
    assert refresh(server, retried.json()["refresh_token"]).status_code == 200
    assert_oauth_error(refresh(server, first["refresh_token"]), 401, "Token has been revoked")


def test_refresh_token_expires_after_90_days(sandbox: SandboxServer) -> None:
    pair = exchange(sandbox, code_for(sandbox)).json()
    sandbox.advance_clock(90 * 86400 + 1)
    assert_oauth_error(refresh(sandbox, pair["refresh_token"]), 401, "Token has expired")


def test_refresh_with_unknown_token(sandbox: SandboxServer) -> None:
    assert_oauth_error(refresh(sandbox, "nope"), 401, "Cannot decrypt the refresh token")


def test_unsupported_grant_type(sandbox: SandboxServer) -> None:
    reply = exchange(sandbox, "x", grant_type="password")
    assert reply.status_code == 400
    assert reply.json()["hint"] == "Check the `grant_type` parameter"


def test_server_time_can_be_switched_off(make_sandbox: Factory) -> None:
    server = make_sandbox(server_time=False)
    body = exchange(server, code_for(server)).json()
    assert list(body) == ["token_type", "expires_in", "access_token", "refresh_token"]


# --- access tokens --------------------------------------------------------------------
def test_access_token_expires_after_expires_in(make_sandbox: Factory) -> None:
    server = make_sandbox(rate_limit=0, access_ttl=60)
    body = exchange(server, code_for(server)).json()
    assert body["expires_in"] == 60
    client = Api(server.url, body["access_token"])
    assert client.get("/api/v4/account").status_code == 200
    server.advance_clock(61)
    reply = client.get("/api/v4/account")
    assert reply.status_code == 401
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert reply.json() == {
        "title": "Unauthorized",
        "type": "https://httpstatus.es/401",
        "status": 401,
        "detail": "Invalid user name or password",
    }


def test_tokens_expire_endpoint_makes_the_next_call_401(sandbox: SandboxServer, api: Api) -> None:
    assert api.get("/api/v4/account").status_code == 200
    reply = requests.post(f"{sandbox.url}/_sandbox/tokens/expire", timeout=5)
    assert reply.status_code == 200 and reply.json()["expired"] >= 1
    assert api.get("/api/v4/account").status_code == 401
    assert api.get("/api/v4/leads").status_code == 401


def test_missing_or_garbage_bearer_is_401(sandbox: SandboxServer) -> None:
    assert requests.get(f"{sandbox.url}/api/v4/leads", timeout=5).status_code == 401
    garbage = Api(sandbox.url, "not-a-token").get("/api/v4/leads")
    assert garbage.status_code == 401


def test_long_lived_token_works_without_refresh(sandbox: SandboxServer) -> None:
    reply = requests.post(
        f"{sandbox.url}/_sandbox/long-lived-token",
        json={"client_id": sandbox.config.client_id, "days": 2},
        timeout=5,
    )
    body = reply.json()
    assert set(body) >= {"access_token"} and "refresh_token" not in body
    client = Api(sandbox.url, body["access_token"])
    assert client.get("/api/v4/leads?limit=1").status_code == 200
    sandbox.advance_clock(2 * 86400 + 1)
    assert client.get("/api/v4/leads?limit=1").status_code == 401


def test_admin_registered_integration_gets_its_own_tokens(sandbox: SandboxServer) -> None:
    reply = requests.post(
        f"{sandbox.url}/_sandbox/integrations",
        json={
            "client_id": "test-client",
            "client_secret": "test-secret",
            "redirect_uri": "https://app.test/cb/",
        },
        timeout=5,
    )
    assert reply.status_code == 201
    code = code_for(sandbox, client_id="test-client")
    body = {
        "client_id": "test-client",
        "client_secret": "test-secret",
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "https://app.test/cb/",
    }
    token = requests.post(f"{sandbox.url}/oauth2/access_token", json=body, timeout=5)
    assert token.status_code == 200
    claims = jwt.decode(token.json()["access_token"], options={"verify_signature": False})
    assert claims["client_uuid"] == "test-client"


def test_second_account_is_chosen_by_the_token(make_sandbox: Factory) -> None:
    server = make_sandbox(accounts=2, rate_limit=0)
    code = code_for(server, account="demo2")
    token = exchange(server, code).json()["access_token"]
    account = Api(server.url, token).get("/api/v4/account").json()
    assert account["subdomain"] == "demo2"
    assert account["id"] == server.accounts[1].id


# --- subdomain lookup and disconnect --------------------------------------------------
def test_current_subdomain_by_refresh_token(sandbox: SandboxServer) -> None:
    pair = exchange(sandbox, code_for(sandbox)).json()
    reply = requests.get(
        f"{sandbox.url}/oauth2/account/current/subdomain",
        headers={"X-Refresh-Token": pair["refresh_token"]},
        timeout=5,
    )
    assert reply.json() == {
        "id": sandbox.account.id,
        "subdomain": "demo",
        "domain": "demo.amocrm.ru",
        "top_level_domain": "ru",
    }
    bad = requests.get(
        f"{sandbox.url}/oauth2/account/current/subdomain",
        headers={"X-Refresh-Token": "nope"},
        timeout=5,
    )
    assert bad.status_code == 401


def test_disconnect_sends_the_signed_hook_and_revokes(
    sandbox: SandboxServer, api: Api, receiver: Receiver
) -> None:
    cfg = sandbox.config
    reply = requests.post(
        f"{sandbox.url}/_sandbox/disconnect",
        json={"client_id": cfg.client_id, "url": receiver.url},
        timeout=5,
    )
    assert reply.status_code == 200 and reply.json()["status_code"] == 200
    (hit,) = receiver.wait(1)
    assert hit.method == "GET"
    assert hit.headers["User-Agent"] == "amoService-oAuth-Code-Sender/1.0"
    query = parse_qs(urlsplit(hit.path).query)
    account_id = str(sandbox.account.id)
    assert query["client_uuid"] == [cfg.client_id]
    assert query["account_id"] == [account_id]
    expected = hmac.new(
        cfg.client_secret.encode(), f"{cfg.client_id}|{account_id}".encode(), hashlib.sha256
    ).hexdigest()
    assert query["signature"] == [expected]
    assert api.get("/api/v4/account").status_code == 401
