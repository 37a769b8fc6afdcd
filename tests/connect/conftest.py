"""Fixtures for the connection tests: a sandbox amoCRM, a configured owner, signed-in users."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from crm_app.sandbox import SandboxServer

CALLBACK = "/admin/crm/callback"


@pytest.fixture
def sandbox(app, make_sandbox) -> SandboxServer:
    """A sandbox amoCRM on a free port; the app sends every amoCRM request there.

    The sandbox's integration is registered with the app's own Redirect URI, as an admin would
    do in amoCRM's integration settings.
    """
    server: SandboxServer = make_sandbox(
        contacts=30,
        leads=25,
        tasks=15,
        rate_limit=0,
        redirect_uri=app.config["PUBLIC_URL"] + CALLBACK,
    )
    app.config["AMOCRM_BASE_URL"] = server.url
    return server


def token_requests(server: SandboxServer) -> list[dict[str, Any]]:
    """POST /oauth2/access_token calls the sandbox saw (code exchanges and refreshes)."""
    return [
        e
        for e in server.requests_log()
        if e["method"] == "POST" and e["path"] == "/oauth2/access_token"
    ]


@pytest.fixture
def owner(make_user):
    """An owner "acme" with an admin of its own; returns the admin user."""
    return make_user("alice", role="admin", owner="acme")


@pytest.fixture
def configure(app, sandbox):
    """configure(owner_id) saves settings that match the sandbox's integration."""
    from crm_app.services import settings

    def _configure(owner_id: int, **extra: Any):
        cfg = sandbox.config
        data = {
            "subdomain": cfg.subdomain,
            "client_id": cfg.client_id,
            "client_secret": cfg.client_secret,
            "redirect_uri": app.config["PUBLIC_URL"] + CALLBACK,
            **extra,
        }
        return settings.update_config(owner_id, settings.parse_config(data))

    return _configure


@pytest.fixture
def connected(configure, sandbox):
    """connected(owner_id) connects the owner with a fresh private-integration code."""
    from crm_app.services import connection

    def _connect(owner_id: int):
        configure(owner_id)
        return connection.connect_with_code(owner_id, sandbox.auth_code())

    return _connect


@pytest.fixture
def page_csrf(client) -> Callable[[], str]:
    """The CSRF token the CRM page puts in <body hx-headers> for the signed-in client."""

    def _token() -> str:
        html = client.get("/admin/crm").get_data(as_text=True)
        match = re.search(r'name="csrf_token" value="([^"]+)"', html)
        assert match, html[:500]
        return match.group(1)

    return _token


HX = {"HX-Request": "true"}
