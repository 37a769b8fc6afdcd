"""Sign-in security: revocable sessions, the `next` redirect, throttling, the password policy,
bounded integer route parameters."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from crm_app.auth import throttle
from crm_app.extensions import db
from crm_app.models import ApiKey, User

PASSWORD = "password123"  # the seeded users' (see make_user); the policy refuses it for new ones
HX = {"HX-Request": "true"}


def _csrf(client: FlaskClient, path: str = "/login") -> str:
    html = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:300]
    return match.group(1)


def _sign_in(app: Flask, username: str, address: str = "127.0.0.1") -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    resp = client.post(
        "/login", data={"username": username, "password": PASSWORD, "csrf_token": _csrf(client)}
    )
    assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
    return client


def _copy(app: Flask, client: FlaskClient) -> FlaskClient:
    """A thief's client holding a copy of `client`'s session cookie."""
    cookie = client.get_cookie("session")
    assert cookie is not None
    thief = app.test_client()
    thief.set_cookie("session", cookie.value)
    return thief


def _mint_key(client: FlaskClient, token: str) -> int:
    resp = client.post("/admin/crm/ui/inbound/keys", data={"csrf_token": token, "name": "k"})
    return resp.status_code


def _keys() -> int:
    return int(db.session.scalar(select(func.count()).select_from(ApiKey)) or 0)


def _token(client: FlaskClient, username: str) -> str:
    resp = client.post("/auth/token", json={"username": username, "password": PASSWORD})
    assert resp.status_code == 200, resp.data
    return str(resp.json["access_token"])


def _signed_out(app: Flask, thief: FlaskClient, token: str) -> None:
    """The copied cookie reads nothing and writes nothing any more."""
    before = _keys()
    page = thief.get("/admin/crm")
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    assert thief.get("/admin/crm/status").status_code == 401
    assert thief.get("/admin/crm/ui/status", headers=HX).status_code == 401
    assert _mint_key(thief, token) in (302, 401)
    db.session.expire_all()
    assert _keys() == before


# -- 1. sessions end on the server --------------------------------------------------------------


def test_a_copied_cookie_stops_working_after_logout(app: Flask, make_user: Any) -> None:
    make_user("ivan", role="user", owner="acme")
    browser = _sign_in(app, "ivan")
    thief = _copy(app, browser)
    token = _csrf(thief, "/admin/crm")
    # The control: the copy works while the session lives (reads and a write).
    assert thief.get("/admin/crm/status").status_code == 200
    assert _mint_key(thief, token) == 200 and _keys() == 1
    assert browser.post("/logout", data={"csrf_token": _csrf(browser, "/admin/crm")}).status_code
    _signed_out(app, thief, token)


def test_logout_ends_only_that_browser(app: Flask, make_user: Any) -> None:
    make_user("ivan", role="user", owner="acme")
    laptop, phone = _sign_in(app, "ivan"), _sign_in(app, "ivan")
    laptop.post("/logout", data={"csrf_token": _csrf(laptop, "/admin/crm")})
    assert laptop.get("/admin/crm").status_code == 302
    assert phone.get("/admin/crm").status_code == 200


def _cli(app: Flask, *args: str) -> Any:
    result = app.test_cli_runner().invoke(args=list(args))
    db.session.expire_all()
    return result


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(lambda app: _cli(app, "users", "set-password", "ivan", "--password",
                                      "river-lamp-moon-7"), id="password change"),
        pytest.param(lambda app: _cli(app, "users", "deactivate", "ivan"), id="deactivation"),
        pytest.param(lambda app: _cli(app, "users", "sign-out-everywhere", "ivan"),
                     id="admin signs out everywhere"),
    ],
)  # fmt: skip
def test_every_session_and_api_token_ends(app: Flask, make_user: Any, end: Any) -> None:
    make_user("ivan", role="user", owner="acme")
    laptop, phone = _sign_in(app, "ivan"), _sign_in(app, "ivan", "10.0.0.2")
    thief = _copy(app, laptop)
    token = _csrf(thief, "/admin/crm")
    jwt = _token(app.test_client(), "ivan")
    bearer = {"Authorization": f"Bearer {jwt}"}
    assert app.test_client().get("/admin/crm/status", headers=bearer).status_code == 200
    result = end(app)
    assert result.exit_code == 0, result.output
    _signed_out(app, thief, token)
    assert phone.get("/admin/crm").status_code == 302
    assert app.test_client().get("/admin/crm/status", headers=bearer).status_code == 401


def test_a_deactivated_user_cannot_sign_in_until_activated(app: Flask, make_user: Any) -> None:
    make_user("ivan", role="user", owner="acme")
    assert _cli(app, "users", "deactivate", "ivan").exit_code == 0
    client = app.test_client()
    resp = client.post(
        "/login", data={"username": "ivan", "password": PASSWORD, "csrf_token": _csrf(client)}
    )
    assert resp.status_code == 401
    assert _cli(app, "users", "activate", "ivan").exit_code == 0
    _sign_in(app, "ivan", "10.0.0.3")


def test_the_sign_out_everywhere_button(app: Flask, make_user: Any) -> None:
    make_user("ivan", role="user", owner="acme")
    laptop, phone = _sign_in(app, "ivan"), _sign_in(app, "ivan")
    jwt = _token(app.test_client(), "ivan")
    page = phone.get("/admin/crm").get_data(as_text=True)
    assert 'id="logout-everywhere"' in page
    resp = phone.post("/logout/everywhere", data={"csrf_token": _csrf(phone, "/admin/crm")})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/login")
    assert laptop.get("/admin/crm").status_code == 302
    assert phone.get("/admin/crm").status_code == 302
    bearer = {"Authorization": f"Bearer {jwt}"}
    assert app.test_client().get("/admin/crm/status", headers=bearer).status_code == 401
    # A new sign-in works at once.
    assert _sign_in(app, "ivan").get("/admin/crm").status_code == 200


def test_a_session_idle_too_long_ends(app: Flask, make_user: Any) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from crm_app.models import UserSession
    from crm_app.models.base import utcnow

    make_user("ivan", role="user", owner="acme")
    browser = _sign_in(app, "ivan")
    stale = utcnow() - timedelta(seconds=app.config["SESSION_IDLE_SECONDS"] + 60)
    db.session.execute(update(UserSession).values(last_seen_at=stale))
    db.session.commit()
    assert browser.get("/admin/crm").status_code == 302


# -- 2. no open redirect after sign-in ------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/\t/evil.example",
        "//evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "/\\/evil.example",
        "/\n/evil.example",
        "/\r\n/evil.example",
        "\x00//evil.example",
        " //evil.example",
        "https://evil.example/admin/crm",
        "HTTPS:evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/%09/evil.example",  # stays encoded: a path on this site, not another origin
    ],
)
def test_next_never_leaves_the_site(app: Flask, make_user: Any, target: str) -> None:
    make_user("ivan", role="user", owner="acme")
    client = app.test_client()
    resp = client.post(
        "/login?next=" + quote(target, safe=""),
        data={"username": "ivan", "password": PASSWORD, "csrf_token": _csrf(client)},
    )
    assert resp.status_code == 302
    location = resp.headers["Location"]
    parts = urlsplit(location)
    assert parts.scheme in ("", "http") and parts.netloc in ("", "localhost"), location
    assert location.startswith("/") and not location.startswith("//"), location
    assert not re.search(r"[\x00-\x1f\\]", location), location


def test_next_keeps_a_path_on_the_site(app: Flask, make_user: Any) -> None:
    make_user("ivan", role="user", owner="acme")
    client = app.test_client()
    resp = client.post(
        "/login?next=" + quote("/admin/crm?lang=en", safe=""),
        data={"username": "ivan", "password": PASSWORD, "csrf_token": _csrf(client)},
    )
    assert resp.headers["Location"] == "/admin/crm?lang=en"


# -- 5. throttling by (username, address) ---------------------------------------------------------


def _login_code(app: Flask, username: str, password: str, address: str, lang: str = "") -> Any:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    query = f"?lang={lang}" if lang else ""
    return client.post(
        "/login" + query,
        data={"username": username, "password": password, "csrf_token": _csrf(client)},
    )


def _token_call(app: Flask, username: str, password: str, address: str) -> Any:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client.post("/auth/token", json={"username": username, "password": password})


def test_guessing_from_one_address_never_locks_out_another(app: Flask, make_user: Any) -> None:
    make_user("ivan", role="user", owner="acme")
    codes = [_login_code(app, "ivan", "guess", "203.0.113.9").status_code for _ in range(10)]
    assert codes[0] == 401 and codes[-1] == 429
    assert _token_call(app, "ivan", "guess", "203.0.113.9").status_code == 429
    assert _login_code(app, "ivan", PASSWORD, "198.51.100.4").status_code == 302
    assert _token_call(app, "ivan", PASSWORD, "198.51.100.4").status_code == 200


def test_login_and_token_share_one_counter(app: Flask, make_user: Any) -> None:
    app.config["LOGIN_FREE_FAILURES"] = 4
    make_user("ivan", role="user", owner="acme")
    addr = "203.0.113.10"
    assert _login_code(app, "ivan", "guess", addr).status_code == 401
    assert _token_call(app, "ivan", "guess", addr).status_code == 401
    assert _login_code(app, "ivan", "guess", addr).status_code == 401
    # The fourth failure (on either route) starts the delay for both.
    assert _token_call(app, "ivan", "guess", addr).status_code == 401
    assert _login_code(app, "ivan", PASSWORD, addr).status_code == 429
    assert _token_call(app, "ivan", PASSWORD, addr).status_code == 429


def test_the_429_says_when_to_retry_in_words(app: Flask, make_user: Any) -> None:
    app.config["LOGIN_FREE_FAILURES"] = 1
    make_user("ivan", role="user", owner="acme")
    addr = "203.0.113.11"
    _login_code(app, "ivan", "guess", addr)
    ru = _login_code(app, "ivan", "guess", addr)
    assert ru.status_code == 429 and ru.headers["Retry-After"] == "30"
    assert "Попробуйте снова через 30 секунд." in ru.get_data(as_text=True)
    en = _login_code(app, "ivan", "guess", addr, lang="en")
    assert "Try again in 30 seconds." in en.get_data(as_text=True)
    api = _token_call(app, "ivan", "guess", addr)
    assert api.status_code == 429 and api.headers["Retry-After"] == "30"
    assert api.json["detail"] == "Too many failed sign-ins. Try again in 30 seconds."
    assert api.json["retry_after"] == 30
    assert "per" not in api.json["detail"]


def test_delays_grow_and_a_right_password_resets_them(
    app: Flask, make_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_900_000_000.0]
    monkeypatch.setattr(throttle, "clock", lambda: now[0])
    app.config["LOGIN_FREE_FAILURES"] = 2
    make_user("ivan", role="user", owner="acme")
    addr = "203.0.113.12"
    waits = []
    assert _token_call(app, "ivan", "guess", addr).status_code == 401
    for _ in range(4):
        assert _token_call(app, "ivan", "guess", addr).status_code == 401
        blocked = _token_call(app, "ivan", "guess", addr)
        assert blocked.status_code == 429
        waits.append(int(blocked.headers["Retry-After"]))
        now[0] += waits[-1] + 1
    assert waits == [30, 60, 120, 240]
    assert _token_call(app, "ivan", PASSWORD, addr).status_code == 200
    assert _token_call(app, "ivan", "guess", addr).status_code == 401  # counting from zero again


def test_one_address_spraying_many_names_waits(app: Flask) -> None:
    app.config["LOGIN_ADDRESS_FREE_FAILURES"] = 5
    codes = [_token_call(app, f"user{i}", "guess", "203.0.113.13").status_code for i in range(6)]
    assert codes == [401] * 5 + [429]
    assert _token_call(app, "user99", "guess", "203.0.113.14").status_code == 401


def test_redis_down_falls_back_to_the_database(app: Flask, make_user: Any) -> None:
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    app.config["LOGIN_FREE_FAILURES"] = 2
    make_user("ivan", role="user", owner="acme")
    addr = "203.0.113.15"
    codes = [_token_call(app, "ivan", "guess", addr).status_code for _ in range(3)]
    assert codes == [401, 401, 429]
    assert _login_code(app, "ivan", PASSWORD, "198.51.100.5").status_code == 302


def test_counters_are_in_redis_when_configured(app: Flask, make_user: Any) -> None:
    import redis

    make_user("ivan", role="user", owner="acme")
    _token_call(app, "ivan", "guess", "203.0.113.16")
    keys = redis.Redis.from_url(app.config["REDIS_URL"]).keys("crm:login-failures:*")
    assert len(keys) == 2  # the (name, address) pair and the address
    # Nothing about the name or address is stored in clear.
    assert all(b"ivan" not in k and b"203.0.113" not in k for k in keys)


# -- 6. the password policy ------------------------------------------------------------------------


@pytest.mark.parametrize("weak", ["password", "12345678", "qwerty123", "iloveyou", "Password1"])
def test_the_cli_refuses_common_passwords(app: Flask, weak: str) -> None:
    result = _cli(app, "users", "create", "ivan", "--password", weak, "--role", "user")
    assert result.exit_code != 0
    assert "leaked in data breaches" in result.output, result.output
    assert db.session.scalar(select(User).where(User.username == "ivan")) is None


@pytest.mark.parametrize(
    ("weak", "reason"),
    [
        ("short", "at least 8 characters"),
        ("ivan-ivan", "built on the username"),
        ("aaaaaaaaaaaa", "too easy to guess"),
        ("amocrm2024", "too easy to guess"),
    ],
)
def test_the_cli_explains_other_refusals(app: Flask, weak: str, reason: str) -> None:
    result = _cli(app, "users", "create", "ivan", "--password", weak, "--role", "user")
    assert result.exit_code != 0 and reason in result.output, result.output


def test_a_strong_password_is_accepted_everywhere(app: Flask, make_user: Any) -> None:
    result = _cli(app, "users", "create", "ivan", "--password", "river-lamp-moon-7")
    assert result.exit_code == 0, result.output
    weak = _cli(app, "users", "set-password", "ivan", "--password", "12345678")
    assert weak.exit_code != 0 and "leaked in data breaches" in weak.output
    demo = _cli(app, "demo", "setup", "--password", "password")
    assert demo.exit_code != 0 and "leaked in data breaches" in demo.output
    assert _cli(app, "demo", "setup").exit_code == 0


# -- 4. integer route parameters are bounded ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/crm/ui/sync/runs/99999999999999999999"),
        ("POST", "/admin/crm/ui/inbound/keys/99999999999999999999/revoke"),
        ("GET", "/admin/crm/ui/sync/runs/2147483648"),
        ("GET", "/admin/crm/sync/runs/99999999999999999999"),
    ],
)
def test_huge_ids_are_not_found(app: Flask, make_user: Any, method: str, path: str) -> None:
    make_user("root", role="admin", owner="ops")
    client = _sign_in(app, "root")
    token = _csrf(client, "/admin/crm")
    resp = client.open(path, method=method, data={"csrf_token": token}, headers=HX)
    assert resp.status_code == 404, resp.get_data(as_text=True)[:300]


def test_every_int_route_parameter_is_bounded(app: Flask) -> None:
    from werkzeug.routing import IntegerConverter

    for rule in app.url_map.iter_rules():
        for name, converter in rule._converters.items():
            if isinstance(converter, IntegerConverter):
                assert converter.max is not None and converter.max < 2**63, (rule.rule, name)
