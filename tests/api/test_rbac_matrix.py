"""Every /admin/crm JSON route × role (admin, user, guest, anonymous) × ownership (own, other)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.api.conftest import World, mark_connected

ACTORS = ("admin", "user", "guest", "anonymous")
OWNERSHIP = ("own", "other")


@dataclass(frozen=True)
class Case:
    """How to call one route and what its success looks like."""

    write: bool = False
    body: dict[str, Any] | None = None
    ok: int = 200
    path: Callable[[World, bool], str] | None = None
    # Checks that the answer is the targeted owner's data: (json, tag) → bool.
    owned_by: Callable[[dict[str, Any], str], bool] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _names(key: str, attr: str = "name") -> Callable[[dict[str, Any], str], bool]:
    def check(data: dict[str, Any], tag: str) -> bool:
        items = data["_embedded"][key]
        return bool(items) and all(str(i[attr]).startswith(tag) for i in items)

    return check


CASES: dict[tuple[str, str], Case] = {
    ("GET", "/admin/crm/config"): Case(owned_by=lambda d, tag: d["subdomain"] == f"{tag}corp"),
    ("PUT", "/admin/crm/config"): Case(
        write=True,
        body={"sync_tasks": False},
        owned_by=lambda d, tag: d["subdomain"] == f"{tag}corp" and d["sync_tasks"] is False,
    ),
    ("GET", "/admin/crm/auth-url"): Case(
        write=True, owned_by=lambda d, tag: f"client_id=client-{tag}" in d["url"]
    ),
    ("GET", "/admin/crm/status"): Case(owned_by=lambda d, tag: d["subdomain"] == f"{tag}corp"),
    ("POST", "/admin/crm/disconnect"): Case(write=True, body={}),
    ("GET", "/admin/crm/account"): Case(owned_by=lambda d, tag: d["subdomain"] == f"{tag}corp"),
    ("GET", "/admin/crm/contacts"): Case(owned_by=_names("contacts")),
    ("GET", "/admin/crm/leads"): Case(owned_by=_names("leads")),
    ("GET", "/admin/crm/tasks"): Case(owned_by=_names("tasks", "text")),
    ("GET", "/admin/crm/pipelines"): Case(owned_by=_names("pipelines")),
    ("POST", "/admin/crm/sync"): Case(write=True, body={"entities": ["contacts"]}, ok=202),
    ("GET", "/admin/crm/sync/runs/<int(min=1, max=2147483647):run_id>"): Case(
        path=lambda w, own: f"/admin/crm/sync/runs/{w.own_run_id if own else w.other_run_id}"
    ),
    ("GET", "/admin/crm/sync/log"): Case(
        owned_by=lambda d, tag: (
            bool(d["items"])
            and all(i["details"]["tag"] == tag for i in d["items"] if "tag" in i["details"])
        )
    ),
    ("GET", "/admin/crm/stats"): Case(owned_by=lambda d, tag: d["contacts_count"] == 3),
}

# Workspace writes. These owners are not connected to amoCRM, so an allowed write ends in
# 409 "not connected" after every access check passed; tests/workspace/test_api.py runs the
# same matrix against a connected sandbox for the success answers.
_ID = "<int(min=1, max=9223372036854775807):{}>"


def _entity_path(prefix: str, base: int, suffix: str = "") -> Callable[[World, bool], str]:
    return lambda w, own: f"{prefix}{base * (w.own if own else w.other) + 1}{suffix}"


CASES.update(
    {
        ("PATCH", "/admin/crm/leads/" + _ID.format("lead_id")): Case(
            write=True,
            ok=409,
            body={"price": 5, "updated_at": 1_700_000_001},
            path=_entity_path("/admin/crm/leads/", 2000),
        ),
        ("POST", "/admin/crm/leads"): Case(write=True, ok=409, body={"name": "New deal"}),
        ("POST", "/admin/crm/leads/" + _ID.format("lead_id") + "/notes"): Case(
            write=True,
            ok=409,
            body={"text": "hi"},
            path=_entity_path("/admin/crm/leads/", 2000, "/notes"),
        ),
        ("PATCH", "/admin/crm/contacts/" + _ID.format("contact_id")): Case(
            write=True,
            ok=409,
            body={"name": "X", "updated_at": 1_700_000_001},
            path=_entity_path("/admin/crm/contacts/", 1000),
        ),
        ("POST", "/admin/crm/contacts/" + _ID.format("contact_id") + "/notes"): Case(
            write=True,
            ok=409,
            body={"text": "hi"},
            path=_entity_path("/admin/crm/contacts/", 1000, "/notes"),
        ),
        ("POST", "/admin/crm/tasks"): Case(
            write=True, ok=409, body={"text": "call", "complete_till": 1_800_000_000}
        ),
        ("PATCH", "/admin/crm/tasks/" + _ID.format("task_id")): Case(
            write=True,
            ok=409,
            body={"is_completed": True, "result": "done"},
            path=_entity_path("/admin/crm/tasks/", 3000),
        ),
    }
)


def api_routes(app: Any) -> set[tuple[str, str]]:
    """(method, rule) of every route the api blueprint serves under /admin/crm."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api.") and rule.rule.startswith("/admin/crm"):
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                found.add((method, rule.rule))
    return found


def expected_status(actor: str, ownership: str, case: Case) -> int:
    if actor == "anonymous":
        return 401
    if ownership == "other" and actor != "admin":
        return 404  # another owner's data is "not found", never "forbidden"
    if case.write and actor == "guest":
        return 403
    return case.ok


def test_every_api_route_is_in_the_matrix(app) -> None:
    assert api_routes(app) == set(CASES), "add the new route to CASES with its expectations"


def _check(client, world: World, route: tuple[str, str], actor: str, ownership: str) -> str | None:
    """Call the route as this actor on this owner; a description of what went wrong, or None."""
    method, rule = route
    case = CASES[route]
    own = ownership == "own"
    path = case.path(world, own) if case.path else rule
    query = {} if own else {"owner_id": world.other}
    kwargs: dict[str, Any] = {"query_string": query, "headers": world.header(actor)}
    if case.body is not None:
        kwargs["json"] = case.body
    resp = client.open(path, method=method, **kwargs)
    want = expected_status(actor, ownership, case)
    if resp.status_code != want:
        return f"{resp.status_code} != {want}: {resp.get_data(as_text=True)[:300]}"
    if want >= 400:
        body = resp.json or {}
        if resp.mimetype != "application/problem+json" or body.get("status") != want:
            return f"not a problem document: {resp.mimetype} {body}"
        if want == 401 and not resp.headers.get("WWW-Authenticate", "").lower().startswith(
            "bearer"
        ):
            return "401 without WWW-Authenticate: Bearer"
        return None
    tag = "acme" if own else "globex"
    if case.owned_by is not None and not case.owned_by(resp.json, tag):
        return f"answered with data that is not {tag}'s: {resp.json}"
    return None


@pytest.mark.parametrize("route", sorted(CASES), ids=lambda r: f"{r[0]} {r[1]}")
def test_access_matrix(client, world: World, route: tuple[str, str]) -> None:
    """All eight (actor × ownership) cells of one route; every mismatch is reported."""
    if route == ("POST", "/admin/crm/sync"):
        mark_connected(world.own, world.other)  # a sync of a disconnected owner is refused (409)
    failures = {}
    for actor, ownership in itertools.product(ACTORS, OWNERSHIP):
        problem = _check(client, world, route, actor, ownership)
        if problem:
            failures[f"{actor}/{ownership}"] = problem
    assert not failures, failures


def test_user_cannot_read_another_owners_run_by_id(client, world: World) -> None:
    for role in ("user", "guest", "admin"):
        resp = client.get(f"/admin/crm/sync/runs/{world.other_run_id}", headers=world.header(role))
        # Without ?owner_id= even an admin acts on their own owner, where the run is unknown.
        assert resp.status_code == 404, role


def test_owner_id_that_does_not_exist_or_is_malformed(client, world: World) -> None:
    admin = world.header("admin")
    assert client.get("/admin/crm/contacts?owner_id=999999", headers=admin).status_code == 404
    assert client.get(f"/admin/crm/contacts?owner_id={2**40}", headers=admin).status_code == 404
    assert client.get("/admin/crm/contacts?owner_id=abc", headers=admin).status_code == 400
    assert client.get("/admin/crm/contacts?owner_id=-1", headers=admin).status_code == 400
    # For a non-admin every foreign id is the same 404, existing or not.
    user = world.header("user")
    assert client.get("/admin/crm/contacts?owner_id=999999", headers=user).status_code == 404
    assert (
        client.get(f"/admin/crm/contacts?owner_id={world.other}", headers=user).status_code == 404
    )
    own = client.get(f"/admin/crm/contacts?owner_id={world.own}", headers=user)
    assert own.status_code == 200
