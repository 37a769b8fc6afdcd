"""OAuth code exchange and refresh, token sets, token sources and the 401 → refresh → retry path."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import requests
import responses

from crm_app.amocrm.client import AmoCRMClient, exchange_code
from crm_app.amocrm.errors import (
    AmoCRMAuthError,
    AmoCRMBlocked,
    AmoCRMConfigError,
    AmoCRMTokenExpired,
    AmoCRMUnavailable,
)
from crm_app.amocrm.hosts import AmoHosts
from crm_app.amocrm.oauth import OAuthClient
from crm_app.amocrm.throttle import NullThrottle
from crm_app.amocrm.tokens import (
    RefreshingTokenSource,
    StaticTokenSource,
    TokenSet,
    TokenSource,
    jwt_claims,
)

HOSTS = AmoHosts("demo")
TOKEN_URL = "https://demo.amocrm.ru/oauth2/access_token"
ACCOUNT = "https://demo.amocrm.ru/api/v4/account"
CLIENT_SECRET = "s3cr3t-client-secret-value"
REDIRECT = "https://app.example/admin/crm/callback"


def make_jwt(n: int = 1, **claims: Any) -> str:
    payload = {
        "account_id": 28805383,
        "api_domain": "api-b.amocrm.ru",
        "base_domain": "amocrm.ru",
        "exp": int(time.time()) + 86400,
        "jti": f"token-{n}",
        **claims,
    }
    return jwt.encode(payload, "not-the-real-signing-key-0123456789abcdef", algorithm="HS256")


def token_body(n: int = 1) -> dict[str, Any]:
    return {
        "token_type": "Bearer",
        "expires_in": 86400,
        "access_token": make_jwt(n),
        "refresh_token": f"refresh-{n}-" + "r" * 40,
    }


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def oauth() -> OAuthClient:
    return OAuthClient(HOSTS, "client-id-1", CLIENT_SECRET, REDIRECT)


def sent(call: Any) -> dict[str, Any]:
    return json.loads(call.request.body)


# -- token endpoint ---------------------------------------------------------------------------------


def test_exchange_code_sends_json_body(mocked: responses.RequestsMock, oauth: OAuthClient) -> None:
    mocked.post(TOKEN_URL, json=token_body())
    before = datetime.now(UTC)
    tokens = oauth.exchange_code("auth-code-123")
    call = mocked.calls[0]
    assert call.request.headers["Content-Type"] == "application/json"
    assert sent(call) == {
        "client_id": "client-id-1",
        "client_secret": CLIENT_SECRET,
        "grant_type": "authorization_code",
        "code": "auth-code-123",
        "redirect_uri": REDIRECT,
    }
    assert tokens.refresh_token == token_body()["refresh_token"]
    assert tokens.account_id == 28805383
    assert tokens.api_domain == "api-b.amocrm.ru"
    assert tokens.token_type == "Bearer"
    assert tokens.expires_at.tzinfo is not None
    assert before + timedelta(seconds=86399) <= tokens.expires_at
    assert tokens.expires_at <= datetime.now(UTC) + timedelta(seconds=86401)


def test_refresh_sends_refresh_grant(mocked: responses.RequestsMock, oauth: OAuthClient) -> None:
    mocked.post(TOKEN_URL, json=token_body(2))
    tokens = oauth.refresh_tokens("refresh-1")
    assert sent(mocked.calls[0]) == {
        "client_id": "client-id-1",
        "client_secret": CLIENT_SECRET,
        "grant_type": "refresh_token",
        "refresh_token": "refresh-1",
        "redirect_uri": REDIRECT,
    }
    assert tokens.access_token == token_body(2)["access_token"]


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (400, "Authorization code has expired"),
        (400, "Authorization code has been revoked"),
        (400, "Cannot decrypt the authorization code"),
        (400, "Check the `client_id` parameter"),
        (400, "Redirect URI is not associated with client"),
        (400, "Invalid account"),
    ],
)
def test_token_endpoint_errors_carry_the_hint(
    mocked: responses.RequestsMock, oauth: OAuthClient, status: int, hint: str
) -> None:
    body = {
        "hint": hint,
        "title": "Некорректный запрос",
        "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson",
        "status": status,
        "detail": "В запросе отсутствует ряд параметров или параметры невалидны",
    }
    mocked.post(TOKEN_URL, status=status, json=body)
    with pytest.raises(AmoCRMAuthError) as info:
        oauth.exchange_code("auth-code-xyz")
    assert info.value.hint == hint
    assert info.value.status == status
    assert not info.value.is_revoked
    assert hint in str(info.value)
    assert len(mocked.calls) == 1


def test_revoked_refresh_token(mocked: responses.RequestsMock, oauth: OAuthClient) -> None:
    body = {"hint": "Token has been revoked", "title": "Некорректный запрос", "status": 401}
    mocked.post(TOKEN_URL, status=401, json=body)
    with pytest.raises(AmoCRMAuthError) as info:
        oauth.refresh_tokens("spent-refresh-token")
    assert info.value.is_revoked
    assert info.value.status == 401


def test_client_auth_failure_without_hint(
    mocked: responses.RequestsMock, oauth: OAuthClient
) -> None:
    body = {
        "title": "Некорректный клиент",
        "status": 401,
        "detail": "Авторизация клиента не прошла",
    }
    mocked.post(TOKEN_URL, status=401, json=body)
    with pytest.raises(AmoCRMAuthError) as info:
        oauth.exchange_code("auth-code-xyz")
    assert info.value.hint is None
    assert "Некорректный клиент" in str(info.value)


def test_blocked_token_endpoint(mocked: responses.RequestsMock, oauth: OAuthClient) -> None:
    mocked.post(TOKEN_URL, status=403, body="<html><title>403 Forbidden</title></html>")
    with pytest.raises(AmoCRMBlocked):
        oauth.refresh_tokens("r")


def test_token_endpoint_is_never_retried(
    mocked: responses.RequestsMock, oauth: OAuthClient
) -> None:
    mocked.post(TOKEN_URL, body=requests.ReadTimeout("slow"))
    with pytest.raises(AmoCRMUnavailable):
        oauth.refresh_tokens("r")
    mocked.post(TOKEN_URL, status=502, body="bad gateway")
    with pytest.raises(AmoCRMUnavailable):
        oauth.refresh_tokens("r")
    assert len(mocked.calls) == 2


def test_token_endpoint_odd_bodies(mocked: responses.RequestsMock, oauth: OAuthClient) -> None:
    mocked.post(TOKEN_URL, status=200, body="<html></html>")
    with pytest.raises(AmoCRMAuthError, match="non-JSON"):
        oauth.exchange_code("c")
    mocked.replace(responses.POST, TOKEN_URL, status=200, json={"token_type": "Bearer"})
    with pytest.raises(AmoCRMAuthError, match="without an access token"):
        oauth.exchange_code("c")


def test_secrets_never_appear_in_auth_errors(
    mocked: responses.RequestsMock, oauth: OAuthClient
) -> None:
    refresh = "refresh-token-that-must-stay-secret"
    body = {"hint": f"bad {refresh} / {CLIENT_SECRET}", "title": "Некорректный запрос"}
    mocked.post(TOKEN_URL, status=400, json=body)
    with pytest.raises(AmoCRMAuthError) as info:
        oauth.refresh_tokens(refresh)
    for text in (str(info.value), repr(info.value), info.value.hint or ""):
        assert refresh not in text
        assert CLIENT_SECRET not in text
    assert CLIENT_SECRET not in repr(oauth)


def test_empty_inputs_are_refused(oauth: OAuthClient) -> None:
    with pytest.raises(ValueError):
        oauth.exchange_code("")
    with pytest.raises(ValueError):
        oauth.refresh_tokens("")


def test_current_subdomain(mocked: responses.RequestsMock, oauth: OAuthClient) -> None:
    url = "https://api-b.amocrm.ru/oauth2/account/current/subdomain"
    info = {
        "id": 1,
        "subdomain": "renamed",
        "domain": "renamed.amocrm.ru",
        "top_level_domain": "ru",
    }
    mocked.get(url, json=info)
    assert oauth.current_subdomain("refresh-1", "api-b.amocrm.ru") == info
    assert mocked.calls[0].request.headers["X-Refresh-Token"] == "refresh-1"
    assert "Authorization" not in mocked.calls[0].request.headers
    hosts = oauth.current_hosts("refresh-1", "api-b.amocrm.ru")
    assert hosts.api_origin == "https://renamed.amocrm.ru"


def test_current_subdomain_refuses_foreign_api_domain(oauth: OAuthClient) -> None:
    with pytest.raises(AmoCRMConfigError):
        oauth.current_subdomain("refresh-1", "evil.example")


def test_base_url_routes_oauth_to_the_override(mocked: responses.RequestsMock) -> None:
    base = "http://127.0.0.1:8100"
    oauth = OAuthClient(AmoHosts("demo", base_url=base), "cid", CLIENT_SECRET, REDIRECT)
    mocked.post(f"{base}/oauth2/access_token", json=token_body())
    mocked.get(f"{base}/oauth2/account/current/subdomain", json={"subdomain": "demo"})
    oauth.exchange_code("c")
    oauth.current_subdomain("r", "api-b.amocrm.ru")
    assert len(mocked.calls) == 2


def test_module_exchange_code(mocked: responses.RequestsMock) -> None:
    mocked.post(TOKEN_URL, json=token_body())
    tokens = exchange_code(HOSTS, "cid", CLIENT_SECRET, REDIRECT, "code", timeout=(2, 3))
    assert tokens.account_id == 28805383
    assert mocked.calls[0].request.req_kwargs["timeout"] == (2, 3)  # type: ignore[attr-defined]  # set by responses


# -- TokenSet -------------------------------------------------------------------------------------


def test_tokenset_repr_hides_tokens() -> None:
    tokens = TokenSet.from_response(token_body())
    for text in (repr(tokens), str(tokens), f"{tokens}"):
        assert tokens.access_token not in text
        assert str(tokens.refresh_token) not in text
        assert "28805383" in text


def test_tokenset_from_opaque_token() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    tokens = TokenSet.from_response(
        {"access_token": "opaque", "refresh_token": "r", "expires_in": "60"}, now=now
    )
    assert tokens.expires_at == now + timedelta(seconds=60)
    assert tokens.api_domain is None and tokens.account_id is None
    assert jwt_claims("opaque") == {}
    with pytest.raises(ValueError):
        TokenSet.from_response({"refresh_token": "r"})


def test_tokenset_long_lived() -> None:
    exp = int(time.time()) + 3600
    tokens = TokenSet.from_access_token(make_jwt(exp=exp))
    assert tokens.refresh_token is None
    assert int(tokens.expires_at.timestamp()) == exp
    assert tokens.expires_within(7200)
    assert not tokens.expires_within(60)


# -- token sources ----------------------------------------------------------------------------------


def test_sources_satisfy_the_protocol(oauth: OAuthClient) -> None:
    assert isinstance(StaticTokenSource("x"), TokenSource)
    refreshing = RefreshingTokenSource(oauth, TokenSet.from_response(token_body()), lambda t: None)
    assert isinstance(refreshing, TokenSource)


def test_static_source() -> None:
    source = StaticTokenSource("long-lived")
    assert source.access_token() == "long-lived"
    with pytest.raises(AmoCRMTokenExpired):
        source.refresh("long-lived")
    assert "long-lived" not in repr(source)


def test_refreshing_source_persists_before_use(
    mocked: responses.RequestsMock, oauth: OAuthClient
) -> None:
    """401 → refresh once → the new pair is stored → only then the retry uses it."""
    events: list[str] = []
    old = TokenSet.from_response(token_body(1))
    new_body = token_body(2)

    def on_tokens(tokens: TokenSet) -> None:
        events.append(f"persist:{tokens.refresh_token}")

    def account(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        token = str(request.headers["Authorization"]).removeprefix("Bearer ")
        events.append("request:new" if token == new_body["access_token"] else "request:old")
        if token == new_body["access_token"]:
            return 200, {}, json.dumps({"id": 1})
        return 401, {}, json.dumps({"title": "Unauthorized", "status": 401})

    mocked.add_callback(responses.GET, ACCOUNT, callback=account)
    mocked.post(TOKEN_URL, json=new_body)
    source = RefreshingTokenSource(oauth, old, on_tokens)
    client = AmoCRMClient(HOSTS, source, throttle=NullThrottle(), sleep=lambda s: None)
    assert client.get_account() == {"id": 1}
    assert events == [
        "request:old",
        f"persist:{new_body['refresh_token']}",
        "request:new",
    ]
    token_calls = [c for c in mocked.calls if c.request.url == TOKEN_URL]
    assert len(token_calls) == 1
    assert sent(token_calls[0])["refresh_token"] == old.refresh_token
    assert source.tokens.access_token == new_body["access_token"]


def test_refreshing_source_refreshes_once_across_threads(oauth: OAuthClient) -> None:
    calls: list[str] = []
    stored: list[TokenSet] = []

    class SlowOAuth:
        def refresh_tokens(self, refresh_token: str) -> TokenSet:
            calls.append(refresh_token)
            time.sleep(0.05)
            return TokenSet.from_response(token_body(len(calls) + 1))

    old = TokenSet.from_response(token_body(1))
    source = RefreshingTokenSource(SlowOAuth(), old, stored.append)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(source.refresh(old.access_token)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [old.refresh_token]
    assert len(stored) == 1
    assert set(results) == {stored[0].access_token}


def test_refreshing_source_keeps_new_pair_when_persisting_fails(oauth: OAuthClient) -> None:
    class FakeOAuth:
        def refresh_tokens(self, refresh_token: str) -> TokenSet:
            return TokenSet.from_response(token_body(2))

    def broken_store(tokens: TokenSet) -> None:
        raise RuntimeError("database down")

    old = TokenSet.from_response(token_body(1))
    source = RefreshingTokenSource(FakeOAuth(), old, broken_store)
    with pytest.raises(RuntimeError):
        source.refresh(old.access_token)
    # The old refresh token is spent; the new pair is the only one that can still work.
    assert source.tokens.access_token == token_body(2)["access_token"]


def test_refreshing_source_without_refresh_token(oauth: OAuthClient) -> None:
    tokens = TokenSet.from_access_token(make_jwt())
    source = RefreshingTokenSource(oauth, tokens, lambda t: None)
    with pytest.raises(AmoCRMTokenExpired):
        source.refresh(tokens.access_token)


def test_refreshing_source_renews_an_expiring_token() -> None:
    class FakeOAuth:
        def refresh_tokens(self, refresh_token: str) -> TokenSet:
            return TokenSet.from_response(token_body(2))

    expiring = TokenSet.from_response(token_body(1) | {"expires_in": 10})
    stored: list[TokenSet] = []
    source = RefreshingTokenSource(FakeOAuth(), expiring, stored.append)
    assert source.access_token() == token_body(2)["access_token"]
    assert len(stored) == 1


def test_client_refresh_tokens_delegates() -> None:
    class Source:
        def __init__(self) -> None:
            self.rejected: list[str] = []

        def access_token(self) -> str:
            return "current"

        def refresh(self, rejected: str) -> str:
            self.rejected.append(rejected)
            return "fresh"

    source = Source()
    client = AmoCRMClient(HOSTS, source, throttle=NullThrottle())
    assert client.refresh_tokens() == "fresh"
    assert source.rejected == ["current"]
