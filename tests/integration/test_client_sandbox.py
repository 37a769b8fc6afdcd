"""The real client against the sandbox: 10 000 contacts at 7 rps with no 429, code exchange, refresh."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import AmoCRMAuthError
from crm_app.amocrm.hosts import AmoHosts
from crm_app.amocrm.oauth import OAuthClient
from crm_app.amocrm.throttle import FileThrottle
from crm_app.amocrm.tokens import RefreshingTokenSource, TokenSet
from crm_app.sandbox import SandboxServer

CONTACTS = 10_000
RATE = 7


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer(port=0, contacts=CONTACTS, leads=300, tasks=20, rate_limit=RATE)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One slot file for the whole module: like a deployment, every client shares one budget.

    Separate budgets per test would let a test start at full speed while the sandbox's rolling
    second still holds the previous test's calls.
    """
    return tmp_path_factory.mktemp("amocrm-throttle")


def shared_throttle(directory: Path) -> FileThrottle:
    return FileThrottle(directory, RATE)


@pytest.fixture
def hosts(sandbox: SandboxServer) -> AmoHosts:
    return AmoHosts(sandbox.config.subdomain, sandbox.config.base_domain, base_url=sandbox.url)


@pytest.fixture
def oauth(sandbox: SandboxServer, hosts: AmoHosts) -> OAuthClient:
    cfg = sandbox.config
    return OAuthClient(hosts, cfg.client_id, cfg.client_secret, cfg.redirect_uri)


def admin(sandbox: SandboxServer, method: str, path: str, **kwargs: Any) -> Any:
    """Call a /_sandbox endpoint over HTTP, as docs/sandbox.md documents them."""
    reply = requests.request(method, f"{sandbox.url}/_sandbox{path}", timeout=10, **kwargs)
    reply.raise_for_status()
    return reply.json() if reply.content else None


def auth_code(sandbox: SandboxServer) -> str:
    return admin(sandbox, "POST", "/auth-code", json={"client_id": sandbox.config.client_id})[
        "code"
    ]


def api_log(sandbox: SandboxServer) -> list[dict[str, Any]]:
    return [e for e in admin(sandbox, "GET", "/requests") if e.get("kind", "api") == "api"]


def arrivals(log: list[dict[str, Any]]) -> list[float]:
    """When each call reached the sandbox: its log ``ts`` is taken after the handler ran."""
    return [e["ts"] - e.get("duration_ms", 0) / 1000 for e in log]


def max_in_window(stamps: list[float], window: float = 1.0) -> int:
    stamps = sorted(stamps)
    best = start = 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.fixture
def connected(
    sandbox: SandboxServer, oauth: OAuthClient
) -> tuple[RefreshingTokenSource, list[TokenSet]]:
    stored: list[TokenSet] = []
    tokens = oauth.exchange_code(auth_code(sandbox))
    return RefreshingTokenSource(oauth, tokens, stored.append), stored


@pytest.fixture
def client(
    hosts: AmoHosts, connected: tuple[RefreshingTokenSource, list[TokenSet]], slot_dir: Path
) -> AmoCRMClient:
    """The connected owner's client on the module's shared throttle."""
    source, _ = connected
    return AmoCRMClient(hosts, source, throttle=shared_throttle(slot_dir))


def assert_paced(log: list[dict[str, Any]]) -> None:
    """Every call answered 200 and no rolling second held more than RATE of them."""
    assert all(e["status"] == 200 for e in log)
    assert max_in_window(arrivals(log)) <= RATE


def test_exchange_code_from_the_sandbox(sandbox: SandboxServer, oauth: OAuthClient) -> None:
    code = auth_code(sandbox)
    tokens = oauth.exchange_code(code)
    assert tokens.refresh_token
    assert tokens.account_id == sandbox.account.id
    assert tokens.api_domain == sandbox.config.api_domain
    # Codes are single use.
    with pytest.raises(AmoCRMAuthError) as info:
        oauth.exchange_code(code)
    assert info.value.hint == "Authorization code has been revoked"
    assert code not in str(info.value)


def test_pages_ten_thousand_contacts_without_a_429(
    sandbox: SandboxServer, client: AmoCRMClient
) -> None:
    admin(sandbox, "DELETE", "/requests")
    ids: list[int] = []
    pages = 0
    for page in client.iter_pages("contacts", limit=250):
        pages += 1
        ids.extend(item["id"] for item in page.items)
    assert len(ids) == CONTACTS
    assert len(set(ids)) == CONTACTS
    assert pages == CONTACTS // 250

    log = api_log(sandbox)
    assert [e["status"] for e in log].count(429) == 0
    assert len(log) == pages
    assert_paced(log)


def test_two_workers_share_a_file_throttle(
    sandbox: SandboxServer,
    hosts: AmoHosts,
    connected: tuple[RefreshingTokenSource, list[TokenSet]],
    slot_dir: Path,
) -> None:
    source, _ = connected
    errors: list[BaseException] = []

    def worker(entity: str) -> None:
        # Separate clients and throttle objects sharing one slot file, as two Celery processes
        # would; twelve small pages each keep the test short.
        client = AmoCRMClient(hosts, source, throttle=shared_throttle(slot_dir))
        try:
            for number, _ in enumerate(client.iter_pages(entity, limit=25), start=1):
                if number == 12:
                    break
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    admin(sandbox, "DELETE", "/requests")
    threads = [threading.Thread(target=worker, args=(e,)) for e in ("leads", "contacts")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    log = api_log(sandbox)
    assert len(log) == 24
    assert_paced(log)


def test_survives_expired_tokens_by_refreshing_once(
    sandbox: SandboxServer,
    connected: tuple[RefreshingTokenSource, list[TokenSet]],
    client: AmoCRMClient,
) -> None:
    source, stored = connected
    assert client.get_account()["id"] == sandbox.account.id
    old = source.tokens

    admin(sandbox, "POST", "/tokens/expire")
    admin(sandbox, "DELETE", "/requests")
    account = client.get_account()
    assert account["subdomain"] == sandbox.config.subdomain

    assert len(stored) == 1  # the new pair was handed over for storage, once
    assert stored[0].access_token != old.access_token
    assert stored[0].refresh_token != old.refresh_token
    assert source.tokens == stored[0]
    log = admin(sandbox, "GET", "/requests")
    assert [(e["method"], e["path"].split("?")[0], e["status"]) for e in log] == [
        ("GET", "/api/v4/account", 401),
        ("POST", "/oauth2/access_token", 200),
        ("GET", "/api/v4/account", 200),
    ]
    # The spent refresh token is dead (amoCRM's strict rotation).
    oauth = source._oauth
    with pytest.raises(AmoCRMAuthError) as info:
        oauth.refresh_tokens(old.refresh_token or "")
    assert info.value.is_revoked


def test_204_and_current_subdomain(
    sandbox: SandboxServer,
    hosts: AmoHosts,
    oauth: OAuthClient,
    connected: tuple[RefreshingTokenSource, list[TokenSet]],
    slot_dir: Path,
) -> None:
    source, _ = connected
    client = AmoCRMClient(hosts, source, throttle=shared_throttle(slot_dir))
    assert client.get_contact(987_654_321) is None
    assert client.search_contacts("no-such-contact-anywhere-xyz") == []
    tokens = source.tokens
    info = oauth.current_subdomain(tokens.refresh_token or "", tokens.api_domain or "")
    assert info["subdomain"] == sandbox.config.subdomain
