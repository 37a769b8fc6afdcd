"""Inbound fixtures: a sandbox account, an owner connected to it, API keys, a real worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import InboundRequest
from crm_app.sandbox.server import SandboxServer

# Short backoffs so retries happen within a test; the worker reads them from its environment.
WORKER_ENV = {
    "INBOUND_RETRY_BASE_SECONDS": "1",
    "INBOUND_RETRY_MAX_SECONDS": "3",
    "INBOUND_CREATE_GRACE_SECONDS": "1",
    "INBOUND_BLOCKED_RETRY_SECONDS": "2",
}


@pytest.fixture
def sandbox(make_sandbox) -> SandboxServer:
    """A small seeded account served in-process on a free port."""
    server: SandboxServer = make_sandbox(contacts=30, leads=20, tasks=0)
    return server


def connect_owner(app, make_user, server: SandboxServer, name: str, **cfg_values: Any) -> int:
    """An admin user + owner connected to the sandbox, Auto Create Lead on in its first stage."""
    from testkit.sandbox_link import connect_owner_to_sandbox

    owner_id = make_user(f"{name}-admin", role="admin", owner=name).owner_id
    pipeline = server.account.main_pipeline
    values: dict[str, Any] = {
        "auto_create_lead": True,
        "lead_pipeline_id": pipeline.id,
        "lead_status_id": pipeline.first_status().id,
    }
    connect_owner_to_sandbox(owner_id, server, **(values | cfg_values))
    return owner_id


@pytest.fixture
def connected(app, make_user):
    """connected(server, name="acme", **AmoConfig values) → owner id."""

    def _connect(server: SandboxServer, name: str = "acme", **cfg_values: Any) -> int:
        return connect_owner(app, make_user, server, name, **cfg_values)

    return _connect


@pytest.fixture
def owner(sandbox, connected) -> int:
    return connected(sandbox)


@pytest.fixture
def api_key(owner) -> str:
    from crm_app.services.inbound import create_api_key

    plain, _row = create_api_key(owner, "test widget")
    return plain


@pytest.fixture
def worker(app, celery_worker) -> Callable[..., Any]:
    """worker(concurrency=4) starts a real Celery worker with short inbound backoffs."""

    def start(concurrency: int = 4, name: str = "inbound") -> Any:
        return celery_worker(name=name, concurrency=concurrency, env=dict(WORKER_ENV))

    return start


def warm_fields(owner_id: int) -> dict[str, Any]:
    """Fetch the owner's custom-field map now, so request counts measure only the lead work."""
    from crm_app.services.amo import client_for_owner
    from crm_app.services.inbound.fields import get_field_map

    return get_field_map(owner_id, lambda: client_for_owner(owner_id))


def wait_done(public_ids: list[str] | str, timeout: float = 60.0) -> list[InboundRequest]:
    """Poll until every request left `queued`; returns them in the given order.

    Stands in for the beat (`inbound.retry_stale`, not running in tests) with a shorter fuse:
    a request no worker ever touched is enqueued again. Parallel test sessions can draw the same
    Redis db number and flush it, dropping queued messages; production has the beat for that.
    """
    from crm_app.services.inbound import enqueue

    ids = [public_ids] if isinstance(public_ids, str) else list(public_ids)
    deadline = time.monotonic() + timeout
    next_beat = time.monotonic() + 10
    while True:
        db.session.rollback()
        db.session.expire_all()
        rows = {
            r.public_id: r
            for r in db.session.scalars(
                select(InboundRequest).where(InboundRequest.public_id.in_(ids))
            )
        }
        if len(rows) == len(ids) and all(r.status != "queued" for r in rows.values()):
            return [rows[i] for i in ids]
        if time.monotonic() > deadline:
            states = {i: (rows[i].status, rows[i].error) if i in rows else None for i in ids}
            raise AssertionError(f"still queued after {timeout}s: {states}")
        if time.monotonic() > next_beat:
            next_beat = time.monotonic() + 10
            for row in rows.values():
                if row.status == "queued" and not row.attempts:
                    enqueue(row.id)
        time.sleep(0.2)


def api_calls(server: SandboxServer, since: int = 0) -> list[dict[str, Any]]:
    """API requests the sandbox logged after sequence number `since`."""
    return [e for e in server.requests_log(kind="api", since=since)]


def log_mark(server: SandboxServer) -> int:
    entries = server.requests_log()
    return entries[-1]["seq"] if entries else 0


def records(server: SandboxServer, kind: str) -> dict[int, dict[str, Any]]:
    acc = server.account
    with acc.lock:
        return dict(acc.tables[kind].records)


def notes_of_lead(server: SandboxServer, lead_id: int) -> list[dict[str, Any]]:
    return [
        n
        for n in records(server, "notes").values()
        if n.get("entity_id") == lead_id and n.get("entity_type", "leads") == "leads"
    ]


def contact_cf(server: SandboxServer, contact_id: int) -> dict[str, list[Any]]:
    """A contact's custom field values keyed by field code or name."""
    acc = server.account
    record = records(server, "contacts")[contact_id]
    out: dict[str, list[Any]] = {}
    for fid, values in record.get("cf") or ():
        field = acc.field_by_id("contacts", fid)
        key = (field.code or field.name) if field else str(fid)
        out[key] = [v for v, _enum in values]
    return out


def post_inbound(client, key: str, body: dict[str, Any], **headers: str):
    return client.post(
        "/api/crm/inbound", json=body, headers={"Authorization": f"Bearer {key}", **headers}
    )


def mark_synced(owner_id: int) -> None:
    """Record a finished contacts/leads sync, as the sync engine does: the mirror is trusted."""
    from datetime import UTC, datetime

    from crm_app.models import SyncCursor

    for entity in ("contacts", "leads"):
        row = db.session.get(SyncCursor, (owner_id, entity)) or SyncCursor(
            owner_id=owner_id, entity=entity
        )
        row.last_success_at = datetime.now(UTC)
        db.session.add(row)
    db.session.commit()
