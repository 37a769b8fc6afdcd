"""Limits: 7 requests per second → 429, repeated violations → 403 until lifted."""

from __future__ import annotations

import requests

from tests.sandbox.helpers import Api, Factory, api_for


def burst(api: Api, count: int, path: str = "/api/v4/account") -> list[int]:
    return [api.get(path).status_code for _ in range(count)]


def test_twenty_requests_in_a_second_get_429(make_sandbox: Factory) -> None:
    server = make_sandbox(block_after=0)
    server.freeze_clock()  # the whole burst falls into one second of the sandbox's time
    api = api_for(server)
    codes = burst(api, 20)
    assert codes[:7] == [200] * 7
    assert codes.count(200) == 7 and codes.count(429) == 13
    reply = api.get("/api/v4/account")
    assert reply.status_code == 429
    assert "Retry-After" not in reply.headers
    assert reply.json() == {
        "title": "Too Many Requests",
        "type": "https://httpstatus.es/429",
        "status": 429,
        "detail": "You have sent too many requests in a given amount of time. Please try again later.",
        "retry_after": 300,
    }
    server.advance_clock(0.99)
    assert api.get("/api/v4/account").status_code == 429
    server.advance_clock(0.02)  # the window rolls on: a client that waits gets through again
    assert api.get("/api/v4/account").status_code == 200


def test_html_429_and_retry_after_switches(make_sandbox: Factory) -> None:
    server = make_sandbox(block_after=0, body_429="html", retry_after_header=True, rate_limit=2)
    server.freeze_clock()
    api = api_for(server)
    codes = burst(api, 3)
    assert codes == [200, 200, 429]
    reply = api.get("/api/v4/account")
    assert reply.headers["Content-Type"].startswith("text/html")
    assert "429 Too Many Requests" in reply.text
    assert reply.headers["Retry-After"]


def test_repeated_violations_block_with_403_until_unblocked(make_sandbox: Factory) -> None:
    server = make_sandbox(rate_limit=3, block_after=5, block_window=10)
    server.freeze_clock()
    api = api_for(server)
    codes = burst(api, 12)
    assert codes[:3] == [200, 200, 200]
    assert codes[3:8] == [429] * 5
    assert codes[8:] == [403] * 4
    server.advance_clock(3600)  # a block without a duration lasts until it is lifted
    blocked = api.get("/api/v4/leads")
    assert blocked.status_code == 403
    assert blocked.text == "403 Forbidden"
    # The block also holds on the token endpoint for that account's tokens.
    code = requests.post(
        f"{server.url}/_sandbox/auth-code", json={"client_id": server.config.client_id}, timeout=5
    ).json()["code"]
    token = requests.post(
        f"{server.url}/oauth2/access_token",
        json={
            "client_id": server.config.client_id,
            "client_secret": server.config.client_secret,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": server.config.redirect_uri,
        },
        timeout=5,
    )
    assert token.status_code == 403
    lifted = requests.post(f"{server.url}/_sandbox/unblock", json={}, timeout=5)
    assert lifted.json()["unblocked"] == [server.account.id]
    assert api.get("/api/v4/leads").status_code == 200


def test_block_duration_and_nginx_body(make_sandbox: Factory) -> None:
    server = make_sandbox(rate_limit=1, block_after=1, block_duration=60, body_403="html")
    server.freeze_clock()
    api = api_for(server)
    assert burst(api, 3) == [200, 429, 403]
    blocked = api.get("/api/v4/leads")
    assert "<center><h1>403 Forbidden</h1></center>" in blocked.text
    server.advance_clock(59)
    assert api.get("/api/v4/leads").status_code == 403
    server.advance_clock(1)
    assert api.get("/api/v4/leads").status_code == 200


def test_admin_endpoints_are_not_limited(make_sandbox: Factory) -> None:
    server = make_sandbox(rate_limit=1, block_after=0)
    codes = [
        requests.get(f"{server.url}/_sandbox/requests", timeout=5).status_code for _ in range(15)
    ]
    assert set(codes) == {200}


def test_per_account_cap_counts_every_integration(make_sandbox: Factory) -> None:
    server = make_sandbox(rate_limit=0, account_rate_limit=4, block_after=0)
    server.freeze_clock()
    server.register_integration("second", "secret-2", "https://x.test/cb")
    first = api_for(server)
    second = Api(server.url, server.token_pair(client_id="second")["access_token"])
    codes = burst(first, 2) + burst(second, 3)
    assert codes == [200, 200, 200, 200, 429]


def test_rate_limit_can_be_changed_at_runtime(make_sandbox: Factory) -> None:
    server = make_sandbox(block_after=0)
    server.freeze_clock()
    api = api_for(server)
    reply = requests.patch(f"{server.url}/_sandbox/config", json={"rate_limit": 0}, timeout=5)
    assert reply.json()["applied"] == {"rate_limit": 0}
    assert set(burst(api, 15)) == {200}
    refused = requests.patch(f"{server.url}/_sandbox/config", json={"contacts": 5}, timeout=5)
    assert refused.status_code == 400
