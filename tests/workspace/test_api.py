"""The workspace write routes: every route × role × owner against a connected sandbox, CSRF
for browser sessions, and the 409 / 422 / 202 answers."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from crm_app.extensions import db
from crm_app.models import Contact, Lead, OutboxWrite, PipelineStatus, Task
from tests.workspace.conftest import fault

ACTORS = ("admin", "user", "guest", "anonymous")


@pytest.fixture
def pair(app, client, sandbox, make_user, auth_header, kicks):
    """Owners acme and globex, both connected to the sandbox and synced; their users' headers."""
    from crm_app.services.sync import run_sync, start_sync
    from testkit.sandbox_link import connect_owner_to_sandbox

    owners = {}
    for name in ("acme", "globex"):
        owner_id = make_user(f"{name}-admin", role="admin", owner=name).owner_id
        connect_owner_to_sandbox(owner_id, sandbox)
        run_sync(start_sync(owner_id, full=True, enqueue=False).id)
        owners[name] = owner_id
    make_user("acme-user", role="user", owner="acme")
    make_user("acme-guest", role="guest", owner="acme")
    headers = {
        "admin": auth_header("acme-admin"),
        "user": auth_header("acme-user"),
        "guest": auth_header("acme-guest"),
        "anonymous": {},
    }
    return owners, headers


def _version(model: Any, owner_id: int, entity_id: int) -> int:
    db.session.expire_all()
    return db.session.get(model, (owner_id, entity_id)).updated_at


def _first(model: Any, owner_id: int) -> int:
    return db.session.scalar(
        select(model.id).where(model.owner_id == owner_id).order_by(model.id).limit(1)
    )


Route = tuple[str, Callable[[int], str], Callable[[int], dict[str, Any]], int]


def _routes() -> dict[str, Route]:
    """name → (method, path for an owner, body for an owner, success status)."""

    def lead(o: int) -> int:
        return _first(Lead, o)

    def contact(o: int) -> int:
        return _first(Contact, o)

    def task(o: int) -> int:
        return db.session.scalar(
            select(Task.id)
            .where(Task.owner_id == o, Task.is_completed.is_(False))
            .order_by(Task.id)
            .limit(1)
        )

    return {
        "patch lead": (
            "PATCH",
            lambda o: f"/admin/crm/leads/{lead(o)}",
            lambda o: {"price": 4321, "updated_at": _version(Lead, o, lead(o))},
            200,
        ),
        "create lead": ("POST", lambda o: "/admin/crm/leads", lambda o: {"name": "API deal"}, 201),
        "lead note": (
            "POST",
            lambda o: f"/admin/crm/leads/{lead(o)}/notes",
            lambda o: {"text": "note"},
            201,
        ),
        "patch contact": (
            "PATCH",
            lambda o: f"/admin/crm/contacts/{contact(o)}",
            lambda o: {"name": "API name", "updated_at": _version(Contact, o, contact(o))},
            200,
        ),
        "contact note": (
            "POST",
            lambda o: f"/admin/crm/contacts/{contact(o)}/notes",
            lambda o: {"text": "note"},
            201,
        ),
        "create task": (
            "POST",
            lambda o: "/admin/crm/tasks",
            lambda o: {"text": "call", "complete_till": 1_900_000_000},
            201,
        ),
        "patch task": (
            "PATCH",
            lambda o: f"/admin/crm/tasks/{task(o)}",
            lambda o: {"text": "edited task"},
            200,
        ),
    }


def _expected(actor: str, own: bool, ok: int) -> int:
    if actor == "anonymous":
        return 401
    if not own and actor != "admin":
        return 404
    if actor == "guest":
        return 403
    return ok


def test_every_write_route_by_role_and_owner(client, pair) -> None:
    owners, headers = pair
    failures = {}
    for name, (method, path, body, ok) in _routes().items():
        for actor, own in itertools.product(ACTORS, (True, False)):
            target = owners["acme"] if own else owners["globex"]
            query = {} if own else {"owner_id": target}
            resp = client.open(
                path(target), method=method, json=body(target), headers=headers[actor],
                query_string=query,
            )  # fmt: skip
            want = _expected(actor, own, ok)
            if resp.status_code != want:
                failures[f"{name} {actor} {'own' if own else 'other'}"] = (
                    f"{resp.status_code} != {want}: {resp.get_data(as_text=True)[:200]}"
                )
    assert not failures, failures


def test_another_owners_entity_is_not_found(client, pair) -> None:
    owners, headers = pair
    status_id = db.session.scalar(
        select(PipelineStatus.id).where(PipelineStatus.owner_id == owners["globex"])
    )
    db.session.add(
        Lead(
            owner_id=owners["globex"],
            id=987654321,
            name="theirs",
            status_id=status_id,
            updated_at=1,
        )
    )
    db.session.commit()
    resp = client.patch(
        "/admin/crm/leads/987654321", json={"price": 1, "updated_at": 1}, headers=headers["user"]
    )
    assert resp.status_code == 404
    resp = client.post(
        "/admin/crm/leads/987654321/notes", json={"text": "x"}, headers=headers["admin"]
    )
    assert resp.status_code == 404


def test_session_writes_need_the_csrf_token(client, pair, login, csrf_token) -> None:
    owners, _headers = pair
    login("acme-user")
    lead_id = _first(Lead, owners["acme"])
    body = {"name": "via session", "updated_at": _version(Lead, owners["acme"], lead_id)}
    assert client.patch(f"/admin/crm/leads/{lead_id}", json=body).status_code == 400
    resp = client.patch(
        f"/admin/crm/leads/{lead_id}", json=body, headers={"X-CSRFToken": csrf_token()}
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.json["name"] == "via session"


def test_stale_version_gets_409_with_both_versions(client, pair, sandbox) -> None:
    owners, headers = pair
    lead_id = _first(Lead, owners["acme"])
    seen = _version(Lead, owners["acme"], lead_id)
    resp = client.patch(
        f"/admin/crm/leads/{lead_id}",
        json={"price": 1, "updated_at": seen - 1},
        headers=headers["user"],
    )
    assert resp.status_code == 409 and resp.mimetype == "application/problem+json"
    assert resp.json["theirs"]["id"] == lead_id and resp.json["theirs"]["updated_at"] == seen
    assert resp.json["yours"] == {"price": 1, "updated_at": seen - 1}


def test_refused_value_names_the_field_and_outage_answers_202(client, pair, sandbox) -> None:
    owners, headers = pair
    lead_id = _first(Lead, owners["acme"])
    seen = _version(Lead, owners["acme"], lead_id)
    resp = client.patch(
        f"/admin/crm/leads/{lead_id}",
        json={"responsible_user_id": 4242, "updated_at": seen},
        headers=headers["user"],
    )
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert resp.json["errors"][0]["loc"] == ["responsible_user_id"]
    # Bad input is refused by the schema before anything happens.
    assert (
        client.patch(
            f"/admin/crm/leads/{lead_id}",
            json={"price": -1, "updated_at": seen},
            headers=headers["user"],
        ).status_code
        == 422
    )
    assert (
        client.patch(
            f"/admin/crm/leads/{lead_id}", json={"price": 1}, headers=headers["user"]
        ).status_code
        == 422
    )
    fault(sandbox, status=503, count=100, method="PATCH")
    resp = client.patch(
        f"/admin/crm/leads/{lead_id}",
        json={"price": 77, "updated_at": seen},
        headers=headers["user"],
    )
    assert resp.status_code == 202, resp.get_data(as_text=True)
    assert resp.json["status"] == "pending" and resp.json["pending"] == {"price": 77}
    assert resp.json["entity"]["id"] == lead_id
    row = db.session.get(OutboxWrite, resp.json["outbox_id"])
    assert row.status == "pending" and row.base_updated_at == seen
