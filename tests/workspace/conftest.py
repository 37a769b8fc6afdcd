"""Workspace fixtures: a sandbox, an owner connected to it, and a webhook relay into the app."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from crm_app.sandbox.server import SandboxServer

# Webhooks go to a closed port: the sandbox logs each body, and the relay posts it to the app.
UNREACHABLE = "http://127.0.0.1:9/hook"
HOOK_SETTINGS = [
    "add_lead", "update_lead", "status_lead", "responsible_lead", "note_lead",
    "add_contact", "update_contact", "note_contact", "add_task", "update_task",
]  # fmt: skip


@pytest.fixture
def sandbox(make_sandbox) -> SandboxServer:
    server: SandboxServer = make_sandbox(contacts=20, leads=20, tasks=10)
    return server


class Owner:
    """An owner connected to the sandbox, with helpers to act as a manager and relay hooks."""

    def __init__(self, app, client, server: SandboxServer, owner_id: int) -> None:
        from crm_app.services.webhooks import ensure_webhook_token

        self.app = app
        self.client = client
        self.server = server
        self.id = owner_id
        self.token = ensure_webhook_token(owner_id)
        self.relayed = 0

    def ids(self, entity: str) -> list[int]:
        return sorted(self.server.account.tables[entity].records)

    def record(self, entity: str, entity_id: int) -> dict[str, Any] | None:
        return self.server.account.tables[entity].get(entity_id)

    def manager(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A manager's action in the sandbox (fires the webhooks amoCRM would)."""
        resp = requests.request(method, f"{self.server.url}/_sandbox/{path}", timeout=10, **kwargs)
        assert resp.status_code < 300, resp.text
        return resp

    def subscribe(self) -> None:
        from crm_app.services.amo import client_for_owner

        with client_for_owner(self.id) as api:
            api.subscribe_webhook(UNREACHABLE, HOOK_SETTINGS)

    def relay(self, expected: int = 1, timeout: float = 10.0) -> int:
        """Post the bodies the sandbox tried to deliver since the last relay to our endpoint."""
        deadline = time.monotonic() + timeout
        fresh: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            fresh = [
                d for d in self.server.deliveries() if d["id"] > self.relayed and d["attempt"] == 1
            ]
            if len(fresh) >= expected:
                break
            time.sleep(0.02)
        for delivery in fresh:
            resp = self.client.post(
                f"/webhooks/amocrm/{self.token}",
                data=delivery["body"].encode("ascii"),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert resp.status_code == 200, resp.get_data(as_text=True)
            self.relayed = max(self.relayed, delivery["id"])
        return len(fresh)

    def process_webhooks(self) -> dict[str, Any]:
        from crm_app.services.webhooks.apply import process_owner

        return process_owner(self.id)

    def api_requests(self, prefix: str = "/api/v4/", method: str | None = None) -> list[dict]:
        found = self.server.requests_log(path_prefix=prefix)
        return [r for r in found if method is None or r["method"] == method]


@pytest.fixture
def owner(app, client, sandbox, make_user) -> Owner:
    from crm_app.commands.users import get_or_create_owner
    from testkit.sandbox_link import connect_owner_to_sandbox

    owner_id = get_or_create_owner("acme").id
    connect_owner_to_sandbox(owner_id, sandbox)
    return Owner(app, client, sandbox, owner_id)


@pytest.fixture
def synced(owner: Owner) -> Owner:
    """The owner with a full sync done (mirror and reference data filled)."""
    from crm_app.services.sync import run_sync, start_sync

    run = start_sync(owner.id, full=True, enqueue=False)
    run_sync(run.id)
    owner.server.clear_requests()
    return owner


@pytest.fixture
def kicks(monkeypatch) -> list[tuple[int, float | None]]:
    """Outbox drains the services ask for, recorded instead of sent to a broker."""
    sent: list[tuple[int, float | None]] = []
    monkeypatch.setattr(
        "crm_app.services.workspace.outbox.kick",
        lambda owner_id, countdown=None: sent.append((owner_id, countdown)),
    )
    return sent


def fault(server: SandboxServer, **body: Any) -> None:
    resp = requests.post(f"{server.url}/_sandbox/faults", json=body, timeout=5)
    assert resp.status_code == 201, resp.text


def heal(server: SandboxServer) -> None:
    requests.delete(f"{server.url}/_sandbox/faults", timeout=5)
