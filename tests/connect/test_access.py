"""Sign-in, login throttling, roles (admin / user / guest) and CSRF on the CRM page."""

from __future__ import annotations

import re

import pytest

from crm_app.services import connection, settings
from crm_app.services.tokens import load_tokens
from tests.connect.conftest import HX

PARTIALS = [
    "/admin/crm/ui/status",
    "/admin/crm/ui/connect",
    "/admin/crm/ui/settings",
    "/admin/crm/ui/account",
    "/admin/crm/ui/stats",
    "/admin/crm/ui/log",
    "/admin/crm/ui/settings/statuses",
]
WRITES = [
    "/admin/crm/ui/settings",
    "/admin/crm/ui/auth-url",
    "/admin/crm/ui/code",
    "/admin/crm/ui/token",
    "/admin/crm/ui/disconnect",
]


def _csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match
    return match.group(1)


# -- sign-in ----------------------------------------------------------------------------------


def test_page_needs_login(app, client) -> None:
    resp = client.get("/admin/crm")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    for path in PARTIALS:
        resp = client.get(path, headers=HX)
        assert resp.status_code == 401, path
        assert "/login" in resp.headers["HX-Redirect"]
    resp = client.post("/admin/crm/ui/disconnect", headers=HX)
    assert resp.status_code in (400, 401)  # CSRF or login: either way nothing happens


def test_login_and_logout(app, client, make_user) -> None:
    make_user("ivan", role="user", owner="acme")
    page = client.get("/login").get_data(as_text=True)
    assert 'id="login-username"' in page and 'name="csrf_token"' in page
    bad = client.post(
        "/login",
        data={"username": "ivan", "password": "wrong-pass", "csrf_token": _csrf_from(page)},
    )
    assert bad.status_code == 401 and 'id="login-error"' in bad.get_data(as_text=True)
    good = client.post(
        "/login",
        data={"username": "ivan", "password": "password123", "csrf_token": _csrf_from(page)},
    )
    assert good.status_code == 302 and good.headers["Location"].endswith("/admin/crm")
    crm = client.get("/admin/crm")
    assert crm.status_code == 200 and "ivan" in crm.get_data(as_text=True)
    token = _csrf_from(crm.get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/admin/crm").status_code == 302


def test_login_throttled_per_user_and_address(app, client, make_user) -> None:
    app.config["LOGIN_FREE_FAILURES"] = 3
    make_user("ivan", role="user", owner="acme")
    token = _csrf_from(client.get("/login").get_data(as_text=True))
    codes = [
        client.post(
            "/login", data={"username": "ivan", "password": "guess", "csrf_token": token}
        ).status_code
        for _ in range(4)
    ]
    assert codes == [401, 401, 401, 429]
    # Held back from this address even with the right password...
    assert (
        client.post(
            "/login", data={"username": "ivan", "password": "password123", "csrf_token": token}
        ).status_code
        == 429
    )
    # ...while from another address the right password works at once.
    other_ip = app.test_client()
    other_ip.environ_base["REMOTE_ADDR"] = "10.9.8.7"
    token2 = _csrf_from(other_ip.get("/login").get_data(as_text=True))
    resp = other_ip.post(
        "/login", data={"username": "ivan", "password": "password123", "csrf_token": token2}
    )
    assert resp.status_code == 302


# -- roles ------------------------------------------------------------------------------------


@pytest.fixture
def two_owners(make_user):
    a = make_user("ivan", role="user", owner="acme")
    b = make_user("boris", role="user", owner="beta")
    make_user("gina", role="guest", owner="acme")
    make_user("root", role="admin", owner="ops")
    settings.update_config(b.owner_id, settings.parse_config({"subdomain": "betaco"}))
    return a, b


def test_user_cannot_reach_another_owner(app, client, login, two_owners) -> None:
    a, b = two_owners
    login("ivan")
    assert client.get("/admin/crm").status_code == 200
    assert client.get(f"/admin/crm?owner_id={a.owner_id}").status_code == 200
    assert client.get(f"/admin/crm?owner_id={b.owner_id}").status_code == 404
    for path in PARTIALS:
        assert client.get(f"{path}?owner_id={b.owner_id}", headers=HX).status_code == 404, path
    token = _csrf_from(client.get("/admin/crm").get_data(as_text=True))
    for path in WRITES:
        resp = client.post(
            f"{path}?owner_id={b.owner_id}",
            data={"csrf_token": token, "subdomain": "stolen", "owner_id": b.owner_id},
            headers=HX,
        )
        assert resp.status_code == 404, path
    assert settings.get_or_create_config(b.owner_id).subdomain == "betaco"
    # Its own page shows no owner picker and never the other owner's settings.
    html = client.get("/admin/crm").get_data(as_text=True)
    assert 'id="owner-picker"' not in html and "betaco" not in html


def test_admin_picks_any_owner(app, client, login, two_owners) -> None:
    _a, b = two_owners
    login("root")
    html = client.get("/admin/crm").get_data(as_text=True)
    assert 'id="owner-picker"' in html and ">beta<" in html and ">acme<" in html
    html = client.get(f"/admin/crm?owner_id={b.owner_id}").get_data(as_text=True)
    assert 'value="betaco"' in html
    # Every panel URL on that page keeps the owner.
    assert f"/admin/crm/ui/settings?owner_id={b.owner_id}" in html
    assert f'action="/admin/crm/ui/settings?owner_id={b.owner_id}"' in html
    token = _csrf_from(html)
    resp = client.post(
        f"/admin/crm/ui/settings?owner_id={b.owner_id}",
        data={"csrf_token": token, "subdomain": "beta2"},
        headers=HX,
    )
    assert resp.status_code == 200
    assert settings.get_or_create_config(b.owner_id).subdomain == "beta2"
    assert client.get("/admin/crm?owner_id=999999").status_code == 404
    assert client.get("/admin/crm?owner_id=abc").status_code == 400


def test_guest_reads_but_changes_nothing(
    app, client, login, two_owners, sandbox, configure
) -> None:
    a, _b = two_owners
    configure(a.owner_id)
    connection.connect_with_code(a.owner_id, sandbox.auth_code())
    login("gina")
    html = client.get("/admin/crm").get_data(as_text=True)
    assert 'id="guest-badge"' in html and 'id="read-only-note"' in html
    for button in ("save-settings", "get-auth-url", "disconnect", "connect-code", "connect-token"):
        assert f'id="{button}"' not in html, button
    assert '<fieldset class="form-grid" disabled>' in html
    token = _csrf_from(html)
    for path in WRITES:
        resp = client.post(
            path,
            data={"csrf_token": token, "subdomain": "guest", "code": "c", "token": "t"},
            headers=HX,
        )
        assert resp.status_code == 403, path
    assert connection.status(a.owner_id)["status"] == "connected"
    assert load_tokens(a.owner_id) is not None
    assert settings.get_or_create_config(a.owner_id).subdomain == sandbox.config.subdomain


# -- CSRF -------------------------------------------------------------------------------------


def test_post_without_csrf_token_is_400(app, client, login, two_owners) -> None:
    a, _b = two_owners
    login("ivan")
    for path in WRITES:
        resp = client.post(path, data={"subdomain": "nocsrf"}, headers=HX)
        assert resp.status_code == 400, path
        resp = client.post(path, data={"subdomain": "nocsrf", "csrf_token": "forged"})
        assert resp.status_code == 400, path
    assert settings.get_or_create_config(a.owner_id).subdomain == ""
    # The token htmx sends in the X-CSRFToken header (from <body hx-headers>) is accepted.
    html = client.get("/admin/crm").get_data(as_text=True)
    header = re.search(r"hx-headers='\{&#34;X-CSRFToken&#34;: &#34;([^&]+)&#34;\}'", html)
    header = header or re.search(r'hx-headers=\'\{"X-CSRFToken": "([^"]+)"\}\'', html)
    assert header, re.search(r"<body[^>]*>", html).group(0)
    resp = client.post(
        "/admin/crm/ui/settings",
        data={"subdomain": "withheader"},
        headers={**HX, "X-CSRFToken": header.group(1)},
    )
    assert resp.status_code == 200
    assert settings.get_or_create_config(a.owner_id).subdomain == "withheader"
