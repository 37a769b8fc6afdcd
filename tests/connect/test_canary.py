"""No client secret or token in any page, partial, error page or log line (canary values)."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from typing import Any

import requests

from crm_app.extensions import db
from crm_app.models import SyncLog
from crm_app.services import connection, settings
from crm_app.services.amo import client_for_owner
from crm_app.services.tokens import load_tokens
from tests.connect.conftest import HX

CANARY = "CANARY" + secrets.token_hex(6)
CANARY_SECRET = f"{CANARY}clientsecret0123456789abcdef"
CANARY_WEBHOOK = f"{CANARY}webhooktoken"
CANARY_TELEGRAM = f"{CANARY}telegramsecret"
CANARY_CLIENT = "canary-client-0001"
# The webhooks panel shows the owner's webhook URL (which embeds its token) to those who may
# change the integration, by design: GET /admin/crm/config returns webhook_url (docs/api.md).
# Everything else, and every page a guest sees, must not contain it.
SHOWS_WEBHOOK_URL = ("/admin/crm/ui/webhooks", "/admin/crm/config")


def _pages(ctx: dict[str, int]) -> list[tuple[str, str, dict[str, str]]]:
    """(method, path, headers) for every page, partial and error page a browser can reach."""
    pipeline = ctx["pipeline"]
    gets = [
        "/admin/crm",
        "/admin/crm/ui/status",
        "/admin/crm/ui/connect",
        "/admin/crm/ui/settings",
        f"/admin/crm/ui/settings/statuses?lead_pipeline_id={pipeline}",
        "/admin/crm/ui/account",
        "/admin/crm/ui/stats",
        f"/admin/crm/ui/stats?pipeline_id={pipeline}",
        "/admin/crm/ui/log",
        "/admin/crm/ui/log?page=2",
        "/admin/crm/callback/done",
        "/admin/crm/callback?state=forged&code=x&referer=demo.amocrm.ru",
        "/admin/crm/does-not-exist",
        f"/admin/crm?owner_id={ctx['other_owner']}",
        "/admin/crm?owner_id=not-a-number",
        # The lazily loaded panels and the JSON API must not leak either.
        "/admin/crm/ui/sync",
        "/admin/crm/ui/webhooks",
        "/admin/crm/ui/inbound",
        "/admin/crm/config",
        "/admin/crm/status",
        "/admin/crm/account",
        "/admin/crm/stats",
        "/admin/crm/pipelines",
        "/admin/crm/sync/log",
        "/webhooks/amocrm/disconnect?client_uuid=a&account_id=1&signature=00",
    ]
    out: list[tuple[str, str, dict[str, Any]]] = []
    for path in gets:
        out.append(("GET", path, {}))
        if path.startswith("/admin/crm/ui/"):
            out.append(("GET", path, HX))
    out += [
        ("POST", "/admin/crm/ui/settings", HX),  # no CSRF token → 400
        ("POST", "/admin/crm/ui/disconnect", {}),  # no CSRF token → 400
        ("GET", "/admin/crm/ui/disconnect", {}),  # 405
    ]
    return out


def test_no_secret_in_html_or_logs(
    app, client, owner, login, make_user, sandbox, caplog, capfd
) -> None:
    caplog.set_level(logging.DEBUG)
    owner_id = owner.owner_id
    sandbox.register_integration(
        CANARY_CLIENT, CANARY_SECRET, app.config["PUBLIC_URL"] + "/admin/crm/callback"
    )
    settings.update_config(
        owner_id,
        settings.parse_config(
            {
                "subdomain": sandbox.config.subdomain,
                "client_id": CANARY_CLIENT,
                "client_secret": CANARY_SECRET,
            }
        ),
    )
    code = sandbox.auth_code(client_id=CANARY_CLIENT)
    connection.connect_with_code(owner_id, code)
    first = load_tokens(owner_id)
    # Force a refresh so the rotation path logs too.
    requests.post(f"{sandbox.url}/_sandbox/tokens/expire", timeout=5)
    client_for_owner(owner_id).get_account()
    second = load_tokens(owner_id)
    assert second.version == first.version + 1

    cfg = settings.get_or_create_config(owner_id)
    cfg.webhook_token = CANARY_WEBHOOK
    cfg.webhook_token_hash = hashlib.sha256(CANARY_WEBHOOK.encode()).hexdigest()
    cfg.telegram_secret = CANARY_TELEGRAM
    cfg.telegram_secret_hash = hashlib.sha256(CANARY_TELEGRAM.encode()).hexdigest()
    db.session.commit()
    other = make_user("bob", role="user", owner="other").owner_id
    make_user("guest", role="guest", owner="acme")

    secrets_to_find = {
        "client secret": CANARY_SECRET,
        "access token 1": first.access_token,
        "refresh token 1": first.refresh_token,
        "access token 2": second.access_token,
        "refresh token 2": second.refresh_token,
        "webhook token": CANARY_WEBHOOK,
        "telegram secret": CANARY_TELEGRAM,
        "authorization code": code,
    }
    pipeline = cfg.lead_pipeline_id or 0
    from crm_app.models import Pipeline

    row = db.session.query(Pipeline).filter_by(owner_id=owner_id).first()
    pipeline = row.id if row else pipeline

    bodies: dict[str, str] = {}
    login("alice")
    bodies["auth-url"] = client.post(
        "/admin/crm/ui/auth-url",
        data={"csrf_token": _csrf(client)},
        headers=HX,
    ).get_data(as_text=True)
    for method, path, headers in _pages({"pipeline": pipeline, "other_owner": other}):
        resp = client.open(path, method=method, headers=headers)
        assert resp.status_code < 500, (path, resp.status_code)
        bodies[f"admin {method} {path} {bool(headers)}"] = resp.get_data(as_text=True)
    login("bob")  # a user looking at someone else's owner id: 404 pages
    for path in (f"/admin/crm?owner_id={owner_id}", f"/admin/crm/ui/status?owner_id={owner_id}"):
        bodies[f"user {path}"] = client.get(path).get_data(as_text=True)
    login("guest")
    bodies["guest page"] = client.get("/admin/crm").get_data(as_text=True)
    for path in ("/admin/crm/ui/sync", "/admin/crm/ui/webhooks", "/admin/crm/ui/inbound"):
        bodies[f"guest {path}"] = client.get(path, headers=HX).get_data(as_text=True)
    bodies["guest 403"] = client.post(
        "/admin/crm/ui/disconnect", data={"csrf_token": _csrf(client)}, headers=HX
    ).get_data(as_text=True)

    # Careless writers elsewhere (a raw error text, a log row's details): the page masks them.
    cfg = settings.get_or_create_config(owner_id)
    cfg.last_error = f"refresh failed: refresh_token={second.refresh_token}"
    for i in range(25):
        db.session.add(
            SyncLog(
                owner_id=owner_id,
                operation="webhook",
                status="error",
                details={
                    "access_token": second.access_token,
                    "url": f"/webhooks/amocrm/{CANARY_WEBHOOK}",
                    "n": i,
                },
            )
        )
    db.session.commit()
    login("alice")
    for path in (
        "/admin/crm",
        "/admin/crm/ui/status",
        "/admin/crm/ui/log",
        "/admin/crm/ui/log?page=2",
    ):
        bodies[f"planted {path}"] = client.get(path, headers=HX if "/ui/" in path else {}).get_data(
            as_text=True
        )
    assert "refresh failed" in bodies["planted /admin/crm/ui/status"]
    assert "webhook" in bodies["planted /admin/crm/ui/log"].lower()
    client.post("/logout", data={"csrf_token": _csrf(client)})
    bodies["login"] = client.get("/login").get_data(as_text=True)

    assert 'data-status="connected"' in bodies["admin GET /admin/crm False"]  # really rendered
    out, err = capfd.readouterr()
    logs = "\n".join(r.getMessage() for r in caplog.records) + out + err
    for name, value in secrets_to_find.items():
        assert value, name
        for where, body in bodies.items():
            if (
                value == CANARY_WEBHOOK
                and where.startswith("admin GET")
                and any(where.split()[2].startswith(p) for p in SHOWS_WEBHOOK_URL)
            ):
                continue
            assert value not in body, f"{name} leaked into {where}"
        assert value not in logs, f"{name} leaked into the logs"
    assert CANARY not in logs


def _csrf(client) -> str:
    html = client.get("/admin/crm").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
