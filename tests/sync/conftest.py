"""Sync fixtures: an in-process amoCRM sandbox and owners connected to it through real OAuth."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import func, select

from crm_app.extensions import db
from crm_app.models import Contact, Lead, SyncRun, Task
from crm_app.sandbox.server import SandboxServer

MODELS: dict[str, type[Contact | Lead | Task]] = {
    "contacts": Contact,
    "leads": Lead,
    "tasks": Task,
}


@pytest.fixture
def sandbox(make_sandbox) -> SandboxServer:
    """A small seeded account (60 contacts, 40 leads, 30 tasks), 7 rps like amoCRM."""
    return make_sandbox(contacts=60, leads=40, tasks=30)


def connect_owner(
    app,
    make_user,
    server: SandboxServer,
    name: str,
    account: Any = None,
    user_id: int | None = None,
) -> int:
    """An admin user + owner connected to the sandbox account by a real code exchange."""
    from testkit.sandbox_link import connect_owner_to_sandbox

    owner_id = make_user(f"{name}-admin", role="admin", owner=name).owner_id
    connect_owner_to_sandbox(owner_id, server, account=account, user_id=user_id)
    return owner_id


@pytest.fixture
def connected(app, make_user):
    """connected(server, name="acme", account=None) → owner id connected to that account."""

    def _connect(
        server: SandboxServer, name: str = "acme", account: Any = None, user_id: int | None = None
    ) -> int:
        return connect_owner(app, make_user, server, name, account, user_id)

    return _connect


def sandbox_items(server: SandboxServer, entity: str, account: Any = None) -> list[dict]:
    """Every record of an entity as the API renders it (read straight from the emulator)."""
    from crm_app.sandbox.hal import Renderer

    acc = server.sandbox.find_account(account) or server.account
    render = Renderer(acc, server.url, server.config.multitext_enum_keys)
    with acc.lock:
        records = list(acc.tables[entity].records.values())
        return [render.entity(entity, r, frozenset({"contacts"})) for r in records]


def mirror_count(owner_id: int, entity: str) -> int:
    model = MODELS[entity]
    db.session.expire_all()
    return db.session.scalar(select(func.count()).where(model.owner_id == owner_id)) or 0


def wait_run(run_id: int, timeout: float = 60.0) -> SyncRun:
    """Poll the run row until it leaves queued/running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.session.expire_all()
        run = db.session.get(SyncRun, run_id)
        if run is not None and run.status not in ("queued", "running"):
            return run
        time.sleep(0.2)
    run = db.session.get(SyncRun, run_id)
    raise AssertionError(f"run {run_id} still {run.status if run else 'missing'} after {timeout}s")


@pytest.fixture(autouse=True)
def _sync_settings(app):
    # A 429 from the sandbox carries Kommo's retry_after of 300 s; tests wait at most 2 s.
    app.config["SYNC_RATE_LIMIT_MAX_WAIT"] = 2.0
    yield


def max_per_second(entries: list[dict]) -> int:
    """The largest number of API requests the sandbox logged within any rolling second."""
    # The sandbox logs `ts` when it answers; arrivals are what a rate limit counts.
    stamps = sorted(
        e["ts"] - (e.get("duration_ms") or 0) / 1000 for e in entries if e.get("kind") == "api"
    )
    best = 0
    start = 0
    for end, ts in enumerate(stamps):
        while ts - stamps[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best
