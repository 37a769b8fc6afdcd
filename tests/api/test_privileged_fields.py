"""Every write route, sent privileged extra fields by Admin and User, changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import World, mark_connected
from tests.api.test_rbac_matrix import CASES

WRITE_ROUTES = sorted(
    route for route, case in CASES.items() if case.write and route[0] in ("PUT", "POST")
)


def privileged_extras(world: World) -> list[dict[str, Any]]:
    """Fields a client must never be able to set through the API."""
    other_user = world.users["other_user"].id
    return [
        {"owner_id": world.other},
        {"owner": "globex"},
        {"user_id": other_user},
        {"role": "admin"},
        {"is_admin": True},
        {"is_active_flag": True},
        {"id": 1},
        {"access_token": "eyJhbGciOiJIUzI1NiJ9.e30.forged"},
        {"refresh_token": "forged-refresh"},
        {"expires_at": "2099-01-01T00:00:00Z"},
        {"status": "connected"},
        {"account_id": 31337},
        {"account_name": "Pwned"},
        {"webhook_token": "attacker-chosen"},
        {"webhook_subscribed": True},
        {"client_secret_set": False},
        {"connected_at": "2020-01-01T00:00:00Z"},
        {"trigger": "beat"},
        {"lease": "x"},
    ]


def snapshot(world: World) -> dict[str, Any]:
    """Everything an escalation could touch, for both owners."""
    from crm_app.extensions import db
    from crm_app.models import AmoConfig, AmoToken, OAuthState, SyncRun, User

    db.session.expire_all()

    def rows(model: Any) -> list[dict[str, Any]]:
        cols = [c.key for c in model.__table__.columns if c.key not in ("updated_at",)]
        return sorted(
            ({c: getattr(r, c) for c in cols} for r in db.session.scalars(db.select(model))),
            key=lambda r: repr(sorted(r.items())),
        )

    return {
        "configs": rows(AmoConfig),
        "tokens": rows(AmoToken),
        "users": rows(User),
        "runs": rows(SyncRun),
        "states": rows(OAuthState),
    }


def _body(route: tuple[str, str]) -> dict[str, Any]:
    return dict(CASES[route].body or {})


@pytest.mark.parametrize("route", WRITE_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
@pytest.mark.parametrize("actor", ["admin", "user"])
def test_extra_privileged_fields_change_nothing(client, world: World, route, actor: str) -> None:
    method, rule = route
    case = CASES[route]
    path = case.path(world, True) if case.path else rule
    # The webhook URL is made on first read; make it now so the snapshot already holds it.
    client.get("/admin/crm/config", headers=world.header(actor))
    before = snapshot(world)
    failures = []
    for extra in privileged_extras(world):
        for body in (extra, _body(route) | extra):
            resp = client.open(path, method=method, json=body, headers=world.header(actor))
            if resp.status_code != 422 or resp.mimetype != "application/problem+json":
                failures.append((body, resp.status_code))
                continue
            (field,) = extra
            locs = [e["loc"] for e in resp.json["errors"]]
            if [field] not in locs:
                failures.append((body, f"error does not name {field}: {locs}"))
    assert not failures, failures
    assert snapshot(world) == before


def test_query_string_cannot_smuggle_a_user_or_owner(client, world: World) -> None:
    """GET /auth-url binds the state to the caller whatever the query says."""
    from crm_app.extensions import db
    from crm_app.models import OAuthState

    query = {"user_id": world.users["other_user"].id, "owner": "globex", "role": "admin"}
    resp = client.get("/admin/crm/auth-url", query_string=query, headers=world.header("user"))
    assert resp.status_code == 200
    (state,) = db.session.scalars(db.select(OAuthState)).all()
    assert state.owner_id == world.own and state.user_id == world.users["user"].id


def test_owner_id_in_the_body_is_not_the_owner(client, world: World) -> None:
    """Only ?owner_id= selects an owner; the same key in a body is a rejected field."""
    mark_connected(world.own, world.other)
    admin = world.header("admin")
    resp = client.post("/admin/crm/sync", json={"owner_id": world.other}, headers=admin)
    assert resp.status_code == 422
    ok = client.post(
        "/admin/crm/sync", query_string={"owner_id": world.other}, json={}, headers=admin
    )
    assert ok.status_code == 202
    from crm_app.extensions import db
    from crm_app.models import SyncRun

    run = db.session.get(SyncRun, ok.json["run_id"])
    assert run is not None and run.owner_id == world.other
