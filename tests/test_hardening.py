"""Production hardening: security headers, cookie flags, key rotation and masked logs."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import BuildError

from crm_app import create_app
from crm_app.extensions import db

ROOT = Path(__file__).resolve().parent.parent
KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
PASSWORD = "hardening-Test-pass-7401"

MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeApp]:
    """Build apps on one SQLite file; each call may override config (keys, PUBLIC_URL...)."""
    instance = tmp_path / "instance"
    monkeypatch.setenv("CRM_INSTANCE_PATH", str(instance))
    built: list[Flask] = []

    def _make(**overrides: Any) -> Flask:
        config: dict[str, Any] = {
            "SQLALCHEMY_DATABASE_URI": "sqlite:///" + str(tmp_path / "t.db"),
            "TESTING": True,
            "WTF_CSRF_ENABLED": False,
            "INSTANCE_PATH": str(instance),
            "SECRET_KEY": "hardening-test-secret-" + "x" * 30,
            "CRM_ENCRYPTION_KEY": KEY_A,
            "REDIS_URL": "",
            "RATELIMIT_STORAGE_URI": "memory://",
            # Any accidental amoCRM call fails at once instead of leaving the machine.
            "AMOCRM_BASE_URL": "http://127.0.0.1:9",
            "PUBLIC_URL": "http://127.0.0.1:5000",
        }
        config.update(overrides)
        app = create_app(config)
        with app.app_context():
            db.create_all()
        built.append(app)
        return app

    yield _make
    for app in built:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def _login(app: Flask, client: FlaskClient, username: str = "admin") -> None:
    from crm_app.commands.users import create_user

    with app.app_context():
        create_user(username, PASSWORD, "admin", None)
    response = client.post("/login", data={"username": username, "password": PASSWORD})
    assert response.status_code == 302, response.get_data(as_text=True)[:300]


# --- security headers on every HTML page -------------------------------------------------------

_DUMMY_VALUES: tuple[object, ...] = (1, "00000000-0000-0000-0000-000000000001", "x")


def _get_paths(app: Flask) -> list[str]:
    """One concrete URL per GET rule of the app (arguments filled with dummy values)."""
    adapter = app.url_map.bind("localhost")
    paths: set[str] = set()
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or set()) or rule.endpoint == "static":
            continue
        for dummy in _DUMMY_VALUES:
            try:
                paths.add(adapter.build(rule.endpoint, dict.fromkeys(rule.arguments, dummy)))
                break
            except (BuildError, ValueError, TypeError):
                continue
    return sorted(paths)


_INLINE_SCRIPT = re.compile(
    r"<script\b(?![^>]*\bsrc\s*=)(?![^>]*type\s*=\s*[\"']application/(?:ld\+)?json)[^>]*>", re.I
)
_INLINE_HANDLER = re.compile(r"<[^>]*\s(?:on[a-z]+|hx-on[:\-][^\s=]*)\s*=", re.I)
_INLINE_STYLE = re.compile(r"<style\b|<[^>]*\sstyle\s*=", re.I)
_HTMX_CONFIG = re.compile(r"<meta\s+name=[\"']htmx-config[\"']\s+content='([^']*)'", re.I)


def _assert_secure_html(path: str, response: Any) -> None:
    headers = response.headers
    csp = headers.get("Content-Security-Policy", "")
    where = f"{path} ({response.status_code})"
    assert "script-src 'self'" in csp, where
    assert "frame-ancestors 'none'" in csp, where
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, where
    assert headers.get("X-Content-Type-Options") == "nosniff", where
    # A page may tighten it (the OAuth callback sends no-referrer), never loosen it.
    assert headers.get("Referrer-Policy") in {"same-origin", "no-referrer"}, where
    assert headers.get("X-Frame-Options") == "DENY", where
    body = response.get_data(as_text=True)
    # The CSP would silently break these in a browser; fail here instead.
    assert not _INLINE_SCRIPT.search(body), f"inline <script> on {where}"
    assert not _INLINE_HANDLER.search(body), f"inline event handler / hx-on on {where}"
    assert not _INLINE_STYLE.search(body), f"inline style on {where}"
    assert "javascript:" not in body.lower(), f"javascript: URL on {where}"
    if re.search(r"<script[^>]*src=[\"'][^\"']*htmx", body, re.I):
        match = _HTMX_CONFIG.search(body)
        assert match, f"{where} loads htmx without <meta name='htmx-config'>"
        assert json.loads(match.group(1)).get("includeIndicatorStyles") is False, where


def _walk_html(client: FlaskClient, paths: list[str], headers: dict[str, str]) -> set[str]:
    checked: set[str] = set()
    for path in paths:
        response = client.get(path, headers={"Accept": "text/html", **headers})
        if response.mimetype == "text/html":
            _assert_secure_html(path, response)
            checked.add(path)
    return checked


def test_every_html_get_route_carries_the_security_headers(make_app: MakeApp) -> None:
    app = make_app()
    paths = _get_paths(app)
    assert "/login" in paths and "/healthz" in paths
    anonymous = app.test_client()
    checked = _walk_html(anonymous, paths, {})
    assert "/login" in checked
    signed_in = app.test_client()
    _login(app, signed_in)
    checked |= _walk_html(signed_in, paths, {})
    checked |= _walk_html(signed_in, paths, {"HX-Request": "true"})
    assert "/admin/crm" in checked


def test_error_pages_carry_the_security_headers(make_app: MakeApp) -> None:
    app = make_app()

    @app.get("/_hardening/boom")
    def boom() -> str:
        raise RuntimeError("kaboom with access_token=never-shown")

    client = app.test_client()
    for method, path, status in [
        ("GET", "/definitely-not-a-page", 404),
        ("PUT", "/login", 405),
        ("GET", "/_hardening/boom", 500),
    ]:
        response = client.open(path, method=method, headers={"Accept": "text/html"})
        assert response.status_code == status
        assert response.mimetype == "text/html"
        _assert_secure_html(path, response)
        assert "never-shown" not in response.get_data(as_text=True)


def test_json_responses_get_nosniff_and_no_store(make_app: MakeApp) -> None:
    response = make_app().test_client().get("/healthz")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Strict-Transport-Security" not in response.headers


def test_hsts_only_over_https(make_app: MakeApp) -> None:
    plain = make_app(PUBLIC_URL="http://127.0.0.1:5000").test_client()
    assert "Strict-Transport-Security" not in plain.get("/login").headers
    secure_request = plain.get("/login", base_url="https://localhost")
    assert secure_request.headers["Strict-Transport-Security"].startswith("max-age=")
    https_app = make_app(PUBLIC_URL="https://crm.example.com").test_client()
    assert "max-age=" in https_app.get("/login").headers["Strict-Transport-Security"]


def test_forwarded_proto_is_trusted_only_with_trusted_proxy_count(make_app: MakeApp) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    untrusted = make_app().test_client().get("/login", headers=forwarded)
    assert "Strict-Transport-Security" not in untrusted.headers
    trusted = make_app(TRUSTED_PROXY_COUNT=1).test_client().get("/login", headers=forwarded)
    assert "Strict-Transport-Security" in trusted.headers


def test_csp_lets_forms_reach_only_amocrm_consent_and_the_sandbox() -> None:
    from crm_app.security import build_csp

    csp = build_csp("http://127.0.0.1:8100/")
    form_action = next(d for d in csp.split("; ") if d.startswith("form-action"))
    assert form_action.split()[1:] == [
        "'self'",
        "https://*.amocrm.ru",
        "https://*.amocrm.com",
        "https://*.kommo.com",
        "http://127.0.0.1:8100",
    ]


# --- cookies ------------------------------------------------------------------------------------


def _session_cookie(app: Flask, response: Any) -> str:
    name = app.config["SESSION_COOKIE_NAME"]
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith(f"{name}=")]
    assert cookies, response.headers
    return cookies[-1]


def _login_response(app: Flask) -> Any:
    from crm_app.commands.users import create_user

    with app.app_context():
        create_user("cookie-user", PASSWORD, "user", None)
    return app.test_client().post("/login", data={"username": "cookie-user", "password": PASSWORD})


def test_session_cookie_is_secure_under_an_https_public_url(make_app: MakeApp) -> None:
    app = make_app(PUBLIC_URL="https://crm.example.com")
    cookie = _session_cookie(app, _login_response(app))
    assert "; Secure" in cookie
    assert "; HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert app.config["REMEMBER_COOKIE_SECURE"] is True
    assert app.config["REMEMBER_COOKIE_HTTPONLY"] is True


def test_session_cookie_over_plain_http_is_httponly_lax_but_not_secure(make_app: MakeApp) -> None:
    app = make_app(PUBLIC_URL="http://127.0.0.1:5000")
    cookie = _session_cookie(app, _login_response(app))
    assert "; Secure" not in cookie
    assert "; HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


# --- key rotation ---------------------------------------------------------------------------------

SECRETS = {
    "client_secret": "client-secret-plain",
    "webhook_token": "webhook-token-plain",
    "telegram_secret": "telegram-secret-plain",
    "access_token": "access-token-plain",
    "refresh_token": "refresh-token-plain",
}


def _store_secrets(app: Flask, owners: int = 3) -> None:
    from crm_app.models import AmoConfig, AmoToken, Owner

    with app.app_context():
        for n in range(owners):
            owner = Owner(name=f"owner-{n}")
            db.session.add(owner)
            db.session.flush()
            db.session.add(
                AmoConfig(
                    owner_id=owner.id,
                    subdomain=f"demo{n}",
                    client_secret=f"{SECRETS['client_secret']}-{n}",
                    webhook_token=f"{SECRETS['webhook_token']}-{n}",
                    telegram_secret=None if n == 0 else f"{SECRETS['telegram_secret']}-{n}",
                )
            )
            db.session.add(
                AmoToken(
                    owner_id=owner.id,
                    access_token=f"{SECRETS['access_token']}-{n}",
                    refresh_token=f"{SECRETS['refresh_token']}-{n}",
                    expires_at=datetime.now(UTC) + timedelta(hours=1),
                )
            )
        db.session.commit()


def _raw_ciphertexts(app: Flask) -> dict[str, list[str | None]]:
    with app.app_context():
        out: dict[str, list[str | None]] = {}
        for table, cols in (
            ("amocrm_configs", ("client_secret", "webhook_token", "telegram_secret")),
            ("amocrm_tokens", ("access_token", "refresh_token")),
        ):
            rows = db.session.execute(sa.text(f"SELECT {', '.join(cols)} FROM {table} ORDER BY id"))
            for row in rows:
                for name, value in zip(cols, row, strict=True):
                    out.setdefault(name, []).append(value)
        return out


def _decrypted(app: Flask) -> dict[str, list[str | None]]:
    from crm_app.models import AmoConfig, AmoToken

    with app.app_context():
        configs = db.session.scalars(sa.select(AmoConfig).order_by(AmoConfig.id)).all()
        tokens = db.session.scalars(sa.select(AmoToken).order_by(AmoToken.id)).all()
        return {
            "client_secret": [c.client_secret for c in configs],
            "webhook_token": [c.webhook_token for c in configs],
            "telegram_secret": [c.telegram_secret for c in configs],
            "access_token": [t.access_token for t in tokens],
            "refresh_token": [t.refresh_token for t in tokens],
        }


def test_encrypted_columns_are_discovered_from_metadata() -> None:
    from crm_app.commands.secrets import encrypted_columns
    from crm_app.crypto import EncryptedText

    found = {
        f"{t.name}.{c.name}" for t, cols in encrypted_columns(db.metadata).items() for c in cols
    }
    assert {
        "amocrm_configs.client_secret",
        "amocrm_configs.webhook_token",
        "amocrm_configs.telegram_secret",
        "amocrm_tokens.access_token",
        "amocrm_tokens.refresh_token",
    } <= found
    # A column added later is covered without touching the command.
    extra = sa.MetaData()
    sa.Table(
        "future_area",
        extra,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("bot_token", EncryptedText()),
        sa.Column("plain", sa.Text),
    )
    assert [c.name for cols in encrypted_columns(extra).values() for c in cols] == ["bot_token"]


def test_rotation_round_trip_a_to_b(make_app: MakeApp) -> None:
    app_a = make_app(CRM_ENCRYPTION_KEY=KEY_A)
    _store_secrets(app_a)
    expected = _decrypted(app_a)
    before = _raw_ciphertexts(app_a)

    app_ba = make_app(CRM_ENCRYPTION_KEY=f"{KEY_B},{KEY_A}")
    result = app_ba.test_cli_runner().invoke(args=["secrets", "rotate", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "amocrm_tokens.refresh_token: rotated=3 current=0 empty=0" in result.output
    assert "amocrm_configs.telegram_secret: rotated=2 current=0 empty=1" in result.output
    assert "total: rotated=14 current=0 empty=1 changed=0 failed=0" in result.output
    for plain in SECRETS.values():
        assert plain not in result.output

    after = _raw_ciphertexts(app_ba)
    fernet_b = Fernet(KEY_B.encode())
    for column, values in after.items():
        for old, new in zip(before[column], values, strict=True):
            if old is None:
                assert new is None
                continue
            assert new != old
            fernet_b.decrypt(new.encode())  # readable with B alone
            with pytest.raises(InvalidToken):
                Fernet(KEY_A.encode()).decrypt(new.encode())

    app_b = make_app(CRM_ENCRYPTION_KEY=KEY_B)
    assert _decrypted(app_b) == expected

    again = app_b.test_cli_runner().invoke(args=["secrets", "rotate"])
    assert again.exit_code == 0, again.output
    assert "total: rotated=0 current=14 empty=1" in again.output


def test_rotation_dry_run_writes_nothing(make_app: MakeApp) -> None:
    _store_secrets(make_app(CRM_ENCRYPTION_KEY=KEY_A), owners=1)
    app_ba = make_app(CRM_ENCRYPTION_KEY=f"{KEY_B},{KEY_A}")
    before = _raw_ciphertexts(app_ba)
    result = app_ba.test_cli_runner().invoke(args=["secrets", "rotate", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run, would rotate: rotated=4" in result.output
    assert _raw_ciphertexts(app_ba) == before


def test_rotation_reports_undecryptable_secrets_without_showing_them(make_app: MakeApp) -> None:
    _store_secrets(make_app(CRM_ENCRYPTION_KEY=KEY_A), owners=2)
    stray = Fernet(Fernet.generate_key()).encrypt(b"written-with-a-lost-key").decode()
    app_b = make_app(CRM_ENCRYPTION_KEY=f"{KEY_B},{KEY_A}")
    with app_b.app_context():
        db.session.execute(
            sa.text("UPDATE amocrm_tokens SET refresh_token = :v WHERE id = 2"), {"v": stray}
        )
        db.session.commit()
    result = app_b.test_cli_runner().invoke(args=["secrets", "rotate"])
    assert result.exit_code != 0
    assert "amocrm_tokens.refresh_token: rotated=1 current=0 empty=0 changed=0 failed=1" in (
        result.output
    )
    assert "undecryptable rows (primary key): 2" in result.output
    assert "written-with-a-lost-key" not in result.output and stray not in result.output
    # Everything else was still rotated.
    assert "amocrm_tokens.access_token: rotated=2" in result.output


def test_rotation_never_overwrites_a_value_written_meanwhile(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crm_app import crypto
    from crm_app.commands import secrets as secrets_cmd

    _store_secrets(make_app(CRM_ENCRYPTION_KEY=KEY_A), owners=1)
    app_ba = make_app(CRM_ENCRYPTION_KEY=f"{KEY_B},{KEY_A}")
    real_rotate = crypto.rotate

    def racing_rotate(value: str) -> str:
        # A token refresh lands between our read and our write of refresh_token.
        fresh = crypto.encrypt("refresh-token-from-a-concurrent-refresh")
        db.session.execute(
            sa.text("UPDATE amocrm_tokens SET refresh_token = :v WHERE refresh_token = :old"),
            {"v": fresh, "old": value},
        )
        return real_rotate(value)

    monkeypatch.setattr(secrets_cmd.crypto, "rotate", racing_rotate)
    result = app_ba.test_cli_runner().invoke(args=["secrets", "rotate"])
    assert result.exit_code == 0, result.output
    assert "amocrm_tokens.refresh_token: rotated=0 current=0 empty=0 changed=1" in result.output
    monkeypatch.setattr(secrets_cmd.crypto, "rotate", real_rotate)
    assert _decrypted(app_ba)["refresh_token"] == ["refresh-token-from-a-concurrent-refresh"]


def test_generate_key_prints_a_fernet_key(make_app: MakeApp) -> None:
    result = make_app().test_cli_runner().invoke(args=["secrets", "generate-key"])
    assert result.exit_code == 0
    key = result.stdout.strip().splitlines()[0]
    Fernet(key.encode())  # raises on anything that is not a valid key


# --- masked logs ----------------------------------------------------------------------------------

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMiLCJhcGlfZG9tYWluIjoiYXBpLWIifQ.c2lnbmF0dXJlLXZhbHVl"
REFRESH = "def50200" + "ab12" * 30

SECRET_SHAPES = [
    ("Authorization: Bearer abc.DEF-123_xyz", "abc.DEF-123_xyz"),
    ("headers={'Authorization': 'Bearer tok-in-dict'}", "tok-in-dict"),
    ("Proxy-Authorization: Basic c3ZjOnBhc3M=", "c3ZjOnBhc3M="),
    (f"got token {JWT} from amoCRM", JWT),
    (f"refresh with {REFRESH}", REFRESH),
    ('{"access_token": "json-access", "expires_in": 86400}', "json-access"),
    ('{"refresh_token":"json-refresh"}', "json-refresh"),
    ("{'client_secret': 'repr-secret', 'grant_type': 'authorization_code'}", "repr-secret"),
    ("POST body client_secret=form-secret&grant_type=x", "form-secret"),
    ("GET /admin/crm/callback?code=oauth-code-1&state=st&referer=a.amocrm.ru", "oauth-code-1"),
    ("GET /admin/crm/callback?code=c&state=state-value-9&referer=a.amocrm.ru", "state-value-9"),
    ('{"code": "json-code-2", "client_id": "x"}', "json-code-2"),
    ("exchanging code=plain-code-3 now", "plain-code-3"),
    ("password=hunter2-pw user=bob", "hunter2-pw"),
    ("login failed, password: colon-pw", "colon-pw"),
    ('{"password": "json-pw"}', "json-pw"),
    ("POST /webhooks/amocrm/wh-path-token HTTP/1.1", "wh-path-token"),
    ("POST /webhooks/amocrm?token=wh-query-token&x=1", "wh-query-token"),
    ("POST /webhooks/telegram/tg-path-secret 200", "tg-path-secret"),
    ("X-Telegram-Bot-Api-Secret-Token: tg-header-secret", "tg-header-secret"),
    (
        "GET https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getMe",
        "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
    ),
    ("DATABASE_URL=postgresql+psycopg://crm:pg-pass-1@db:5432/crm", "pg-pass-1"),
    ("using proxy http://svc:proxy-pass-2@172.17.0.1:8888", "proxy-pass-2"),
    ("redis://:redis-pass-3@redis:6379/0", "redis-pass-3"),
    ("long_lived_token=llt-4 api_key=key-5", "llt-4"),
    ("long_lived_token=llt-4 api_key=key-5", "key-5"),
]


@pytest.mark.parametrize(("text", "secret"), SECRET_SHAPES)
def test_mask_secrets_hides_every_shape(text: str, secret: str) -> None:
    from crm_app.logging_setup import mask_secrets

    masked = mask_secrets(text)
    assert secret not in masked
    assert "***" in masked


@pytest.mark.parametrize(
    "text",
    [
        "exit code: 1, status_code=500",
        "sync state=running for owner 7",
        "tokens.refresh_due finished in 0.2 s",
        "GET /admin/crm/contacts?limit=50&offset=100",
        "POST /webhooks/amocrm 202",
    ],
)
def test_mask_secrets_keeps_ordinary_text(text: str) -> None:
    from crm_app.logging_setup import mask_secrets

    assert mask_secrets(text) == text


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("crm_app.test", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_filter_masks_arguments_tracebacks_and_extras() -> None:
    from crm_app.logging_setup import JsonFormatter, KeyValueFormatter, SecretMaskFilter

    try:
        raise RuntimeError("token request failed: refresh_token=tb-refresh")
    except RuntimeError as exc:
        record = _record(
            "calling %s with %r", "/x?access_token=arg-access", {"password": "pw"}, exc=exc
        )
    record.url = "https://u:extra-pass@host/"  # an `extra=` field
    assert SecretMaskFilter().filter(record) is True
    for formatter in (KeyValueFormatter(), JsonFormatter()):
        line = formatter.format(record)
        for secret in ("arg-access", "'pw'", "tb-refresh", "extra-pass"):
            assert secret not in line, (formatter, line)
        assert "\n" not in line
    data = json.loads(JsonFormatter().format(record))
    assert data["level"] == "ERROR" and data["logger"] == "crm_app.test"
    assert "RuntimeError" in data["exc"]


def test_init_logging_masks_app_and_werkzeug_lines_as_json(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("LOG_LEVEL", "INFO")
    make_app()
    capsys.readouterr()
    logging.getLogger("crm_app.services.test").warning(
        "token exchange for %s: %s", "demo", {"access_token": "app-access-1", "expires_in": 3600}
    )
    logging.getLogger("werkzeug").info(
        '%s - - [%s] "%s" %s %s',
        "127.0.0.1",
        "26/Nov/2026 10:00:00",
        "POST /webhooks/amocrm/wz-token-2?token=wz-query-3 HTTP/1.1",
        "204",
        "-",
    )
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    text = json.dumps(lines)
    assert any(entry["logger"] == "crm_app.services.test" for entry in lines)
    assert any("/webhooks/amocrm/***" in entry["msg"] for entry in lines)
    for secret in ("app-access-1", "wz-token-2", "wz-query-3"):
        assert secret not in text


def test_init_logging_text_format_is_key_value(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "text")
    make_app()
    capsys.readouterr()
    logging.getLogger("crm_app.kv").warning("saved password=kv-secret for %s", "owner 1")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"ts=\S+ level=WARNING logger=crm_app\.kv msg=\".*\"$", line), line
    assert "kv-secret" not in line


def test_create_app_twice_does_not_duplicate_log_lines(
    make_app: MakeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    make_app()
    make_app()
    capsys.readouterr()
    logging.getLogger("crm_app.once").warning("exactly-once-marker")
    assert capsys.readouterr().err.count("exactly-once-marker") == 1


def test_celery_logging_handlers_get_the_mask(make_app: MakeApp) -> None:
    from celery import signals

    from crm_app.logging_setup import SecretMaskFilter

    make_app()
    celery_logger = logging.getLogger("celery.test-hardening")
    handler = logging.StreamHandler()
    celery_logger.addHandler(handler)
    try:
        signals.after_setup_logger.send(sender=None, logger=celery_logger, loglevel=logging.INFO)
        assert any(isinstance(f, SecretMaskFilter) for f in handler.filters)
    finally:
        celery_logger.removeHandler(handler)


def test_lines_logged_inside_a_task_name_the_task() -> None:
    from celery import Celery

    from crm_app.logging_setup import CeleryTaskFilter, KeyValueFormatter, SecretMaskFilter

    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = _Collect()
    for log_filter in (CeleryTaskFilter(), SecretMaskFilter()):
        handler.addFilter(log_filter)
    handler.setFormatter(KeyValueFormatter())
    task_logger = logging.getLogger("crm_app.tests.task")
    task_logger.addHandler(handler)
    celery = Celery("hardening-test", set_as_current=False)
    celery.conf.task_always_eager = True

    @celery.task(name="hardening.probe")
    def probe() -> None:
        task_logger.warning("refreshing with refresh_token=in-task-secret")

    try:
        probe.apply()
        task_logger.warning("outside any task")
    finally:
        task_logger.removeHandler(handler)
    assert "task_name=hardening.probe" in records[0] and "task_id=" in records[0]
    assert "in-task-secret" not in records[0]
    assert "task_name" not in records[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_gunicorn_access_log_is_masked(tmp_path: Path) -> None:
    port = _free_port()
    log_path = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "CRM_INSTANCE_PATH": str(tmp_path / "instance"),
        "DATABASE_URL": "sqlite:///" + str(tmp_path / "g.db"),
        "REDIS_URL": "",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "LOG_FORMAT": "json",
        "SECRET_KEY": "gunicorn-test-" + "y" * 30,
        "CRM_ENCRYPTION_KEY": KEY_A,
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "wsgi:app"],
            cwd=str(ROOT),
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
                break
            except (requests.ConnectionError, requests.Timeout):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log_path.read_text(errors="replace")) from None
                time.sleep(0.2)
        requests.get(
            f"http://127.0.0.1:{port}/webhooks/amocrm/gu-path-tok?token=gu-query-tok&code=gu-code",
            headers={"Authorization": "Bearer gu-bearer"},
            timeout=30,
        )
        deadline = time.monotonic() + 10
        while "/webhooks/amocrm/***" not in log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(15)
    text = log_path.read_text(errors="replace")
    access = [
        json.loads(line)
        for line in text.splitlines()
        if line.startswith("{") and '"gunicorn.access"' in line
    ]
    assert access, text
    for secret in ("gu-path-tok", "gu-query-tok", "gu-code", "gu-bearer"):
        assert secret not in text


def test_unique_marker_for_uuid_routes_is_valid() -> None:
    # _get_paths relies on this dummy for <uuid:...> converters.
    assert uuid.UUID(str(_DUMMY_VALUES[1]))
