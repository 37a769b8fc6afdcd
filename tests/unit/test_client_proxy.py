"""AMOCRM_PROXY reaches every outbound request (API and token endpoint); the environment does not."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import responses

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import AmoCRMConfigError, AmoCRMUnavailable
from crm_app.amocrm.hosts import AmoHosts
from crm_app.amocrm.oauth import OAuthClient
from crm_app.amocrm.retry import RetryPolicy
from crm_app.amocrm.throttle import NullThrottle
from crm_app.amocrm.tokens import RefreshingTokenSource, StaticTokenSource, TokenSet

PROXY = "http://proxy-user:proxy-pass@10.0.0.1:8888"
BASE = "https://demo.amocrm.ru"
TOKEN_URL = f"{BASE}/oauth2/access_token"
EXPECTED = {"http": PROXY, "https": PROXY}


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def token_body(n: int) -> dict[str, object]:
    return {
        "token_type": "Bearer",
        "expires_in": 86400,
        "access_token": f"a{n}",
        "refresh_token": f"r{n}",
    }


def test_proxy_is_passed_on_every_request(mocked: responses.RequestsMock) -> None:
    mocked.get(f"{BASE}/api/v4/account", status=401)
    mocked.get(f"{BASE}/api/v4/account", status=200, json={"id": 1})
    mocked.post(f"{BASE}/api/v4/leads", json={"_embedded": {"leads": [{"id": 2}]}})
    mocked.post(TOKEN_URL, json=token_body(2))
    mocked.get(
        "https://api-b.amocrm.ru/oauth2/account/current/subdomain", json={"subdomain": "demo"}
    )
    oauth = OAuthClient(AmoHosts("demo"), "cid", "secret-value-123", "https://a/cb", proxy=PROXY)
    source = RefreshingTokenSource(
        oauth, TokenSet.from_response(token_body(1)), on_tokens=lambda t: None
    )
    client = AmoCRMClient(AmoHosts("demo"), source, proxy=PROXY, throttle=NullThrottle())
    client.get_account()  # 401 → token endpoint → retry
    client.create_lead("x")
    oauth.current_subdomain("r2", "api-b.amocrm.ru")
    urls = [c.request.url.split("?")[0] for c in mocked.calls]
    assert urls == [
        f"{BASE}/api/v4/account",
        TOKEN_URL,
        f"{BASE}/api/v4/account",
        f"{BASE}/api/v4/leads",
        "https://api-b.amocrm.ru/oauth2/account/current/subdomain",
    ]
    assert [c.request.req_kwargs["proxies"] for c in mocked.calls] == [EXPECTED] * 5  # type: ignore[attr-defined]  # set by responses


def test_environment_proxies_are_ignored(
    mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy.invalid:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://env-proxy.invalid:3128")
    monkeypatch.setenv("ALL_PROXY", "http://env-proxy.invalid:3128")
    mocked.get(f"{BASE}/api/v4/account", json={"id": 1})
    mocked.post(TOKEN_URL, json=token_body(1))
    AmoCRMClient(AmoHosts("demo"), StaticTokenSource("t"), throttle=NullThrottle()).get_account()
    OAuthClient(AmoHosts("demo"), "cid", "secret-value-123", "https://a/cb").exchange_code("c0de")
    assert [c.request.req_kwargs["proxies"] for c in mocked.calls] == [{}, {}]  # type: ignore[attr-defined]  # set by responses

    mocked.get(f"{BASE}/api/v4/users", status=204)
    client = AmoCRMClient(
        AmoHosts("demo"), StaticTokenSource("t"), proxy=PROXY, throttle=NullThrottle()
    )
    client.get_users()
    assert mocked.calls[-1].request.req_kwargs["proxies"] == EXPECTED  # type: ignore[attr-defined]  # set by responses


def test_supplied_session_is_made_env_proof() -> None:
    session = requests.Session()
    assert session.trust_env
    AmoCRMClient(AmoHosts("demo"), StaticTokenSource("t"), session=session)
    assert session.trust_env is False


@pytest.mark.parametrize("bad", ["10.0.0.1:8888", "ftp://10.0.0.1", "http://", "http://h:port"])
def test_bad_proxy_urls_are_rejected(bad: str) -> None:
    with pytest.raises(AmoCRMConfigError):
        AmoCRMClient(AmoHosts("demo"), StaticTokenSource("t"), proxy=bad)
    with pytest.raises(AmoCRMConfigError):
        OAuthClient(AmoHosts("demo"), "cid", "s", "https://a/cb", proxy=bad)


class _ForwardProxy(BaseHTTPRequestHandler):
    """Answers as an HTTP forward proxy would, recording the absolute request targets."""

    seen: list[tuple[str, str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.seen.append((self.command, self.path))
        if self.path.endswith("/oauth2/access_token"):
            body = json.dumps(token_body(9)).encode()
        else:
            body = json.dumps({"id": 1, "name": "via proxy"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def forward_proxy() -> Iterator[str]:
    _ForwardProxy.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ForwardProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_requests_really_travel_through_the_proxy(forward_proxy: str) -> None:
    # The origin name does not resolve: the only way to get an answer is through the proxy.
    hosts = AmoHosts("demo", base_url="http://amocrm-origin.invalid:8100")
    client = AmoCRMClient(
        hosts, StaticTokenSource("t"), proxy=forward_proxy, throttle=NullThrottle(), timeout=5
    )
    oauth = OAuthClient(hosts, "cid", "secret-value-123", "https://a/cb", proxy=forward_proxy)
    assert client.get_account()["name"] == "via proxy"
    assert oauth.exchange_code("c0de").access_token == "a9"
    assert _ForwardProxy.seen == [
        ("GET", "http://amocrm-origin.invalid:8100/api/v4/account"),
        ("POST", "http://amocrm-origin.invalid:8100/oauth2/access_token"),
    ]


def test_proxy_failure_does_not_leak_credentials() -> None:
    dead = "http://user:hunter2-proxy-pass@127.0.0.1:9"
    client = AmoCRMClient(
        AmoHosts("demo", base_url="http://amocrm-origin.invalid"),
        StaticTokenSource("t"),
        proxy=dead,
        throttle=NullThrottle(),
        retry=RetryPolicy(failure_retries=0),
        timeout=2,
    )
    with pytest.raises(AmoCRMUnavailable) as info:
        client.get_account()
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(info.value)
