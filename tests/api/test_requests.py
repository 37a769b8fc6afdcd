"""Request hygiene: CSRF on session writes, body size/type/shape, query validation, no echo."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import World, mark_connected

WRITES: tuple[tuple[str, str, dict[str, Any], int], ...] = (
    ("PUT", "/admin/crm/config", {"sync_tasks": False}, 200),
    ("POST", "/admin/crm/sync", {"entities": ["contacts"]}, 202),
    ("POST", "/admin/crm/disconnect", {}, 200),
)


# -- CSRF: Bearer calls are exempt, session writes are not ----------------------------------------


def test_session_writes_need_the_csrf_header(client, login, csrf_token, world: World) -> None:
    from crm_app.extensions import db
    from crm_app.models import SyncRun

    mark_connected(world.own)
    login("acme_user")
    for method, path, body, ok in WRITES:
        runs_before = db.session.scalar(db.select(db.func.count()).select_from(SyncRun))
        refused = client.open(path, method=method, json=body)
        assert refused.status_code == 400, (path, refused.data)
        assert refused.mimetype == "application/problem+json"
        assert "CSRF" in refused.json["detail"]
        assert db.session.scalar(db.select(db.func.count()).select_from(SyncRun)) == runs_before
        forged = client.open(path, method=method, json=body, headers={"X-CSRFToken": "forged"})
        assert forged.status_code == 400, path
        good = {"X-CSRFToken": csrf_token()}
        allowed = client.open(path, method=method, json=body, headers=good)
        assert allowed.status_code == ok, (path, allowed.data)


def test_session_reads_need_no_csrf_header(client, login, world: World) -> None:
    login("acme_guest")
    assert client.get("/admin/crm/contacts").status_code == 200
    assert client.get("/admin/crm/config").status_code == 200


def test_session_guest_write_is_forbidden_even_with_csrf(client, login, csrf_token, world) -> None:
    login("acme_guest")
    resp = client.post("/admin/crm/sync", json={}, headers={"X-CSRFToken": csrf_token()})
    assert resp.status_code == 403 and resp.mimetype == "application/problem+json"


def test_bearer_writes_need_no_csrf(client, world: World) -> None:
    mark_connected(world.own)
    for method, path, body, ok in WRITES:
        resp = client.open(path, method=method, json=body, headers=world.header("user"))
        assert resp.status_code == ok, (path, resp.data)


def test_session_csrf_token_of_another_session_is_refused(app, client, login, world) -> None:
    import re

    other = app.test_client()
    html = other.get("/login").get_data(as_text=True)
    foreign = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert foreign
    login("acme_user")
    resp = client.post("/admin/crm/sync", json={}, headers={"X-CSRFToken": foreign[1]})
    assert resp.status_code == 400


# -- bodies ----------------------------------------------------------------------------------------


def test_oversized_body_is_413(client, world: World) -> None:
    big = {"client_secret": "x" * (70 * 1024)}
    resp = client.put("/admin/crm/config", json=big, headers=world.header("admin"))
    assert resp.status_code == 413 and resp.mimetype == "application/problem+json"


def test_body_limit_is_configurable(app, client, world: World) -> None:
    app.config["API_MAX_BODY"] = 50
    resp = client.put(
        "/admin/crm/config",
        json={"client_id": "a" * 60, "sync_tasks": True},
        headers=world.header("admin"),
    )
    assert resp.status_code == 413


def test_body_must_be_json(client, world: World) -> None:
    headers = world.header("admin")
    form = client.put("/admin/crm/config", data={"sync_tasks": "false"}, headers=headers)
    assert form.status_code == 415 and form.mimetype == "application/problem+json"
    text = client.post("/admin/crm/sync", data="full", headers=headers, content_type="text/plain")
    assert text.status_code == 415
    broken = client.put(
        "/admin/crm/config",
        data='{"sync_tasks": ',
        headers=headers,
        content_type="application/json",
    )
    assert broken.status_code == 400 and broken.mimetype == "application/problem+json"
    deep = client.put(
        "/admin/crm/config", data="[" * 50_000, headers=headers, content_type="application/json"
    )
    assert deep.status_code == 400
    for not_an_object in ("[]", "null", "0", '"x"', "[1, 2]"):
        resp = client.put(
            "/admin/crm/config",
            data=not_an_object,
            headers=headers,
            content_type="application/json",
        )
        assert resp.status_code == 422, not_an_object


def test_empty_body_is_fine_where_optional(client, world: World) -> None:
    mark_connected(world.own)
    headers = world.header("admin")
    assert client.post("/admin/crm/sync", headers=headers).status_code == 202
    assert client.post("/admin/crm/disconnect", headers=headers).status_code == 200


BAD_CONFIG = [
    {"sync_tasks": "yes"},
    {"sync_tasks": 1},
    {"lead_pipeline_id": "7"},
    {"lead_pipeline_id": 0},
    {"subdomain": "a b"},
    {"subdomain": "www"},
    {"subdomain": None},
    {"domain": "evil.com"},
    {"redirect_uri": "javascript:alert(1)"},
    {"client_id": "../../etc"},
]
BAD_SYNC = [{"entities": []}, {"entities": ["deals"]}, {"full": "true"}, {"entities": "contacts"}]


def test_bodies_are_validated_strictly(client, world: World) -> None:
    headers = world.header("admin")
    wrong = []
    for path, method, bodies in (
        ("/admin/crm/config", "PUT", BAD_CONFIG),
        ("/admin/crm/sync", "POST", BAD_SYNC),
    ):
        for body in bodies:
            resp = client.open(path, method=method, json=body, headers=headers)
            errors = (resp.json or {}).get("errors") or []
            if resp.status_code != 422 or not errors or any(e["in"] != "body" for e in errors):
                wrong.append((path, body, resp.status_code))
    assert not wrong, wrong


def test_rejected_secrets_are_not_echoed(client, world: World) -> None:
    body = {"client_secret": "TopSecretValue\x00", "long_lived_token": "eyJ.bad token"}
    resp = client.put("/admin/crm/config", json=body, headers=world.header("admin"))
    assert resp.status_code == 422
    text = resp.get_data(as_text=True)
    assert "TopSecretValue" not in text and "bad token" not in text


# -- query strings -------------------------------------------------------------------------------


BAD_QUERIES = [
    {"limit": "0"},
    {"limit": "251"},
    {"limit": "ten"},
    {"offset": "-1"},
    {"offset": "99999999999999999999"},
    {"q": "x" * 201},
    {"q": "a\x00b"},
    {"limit": ["1", "2"]},
]


def test_list_query_is_validated(client, world: World) -> None:
    wrong = []
    for query in BAD_QUERIES:
        resp = client.get("/admin/crm/contacts", query_string=query, headers=world.header("user"))
        ok = (
            resp.status_code == 422
            and resp.mimetype == "application/problem+json"
            and resp.json["errors"][0]["in"] == "query"
        )
        if not ok:
            wrong.append((query, resp.status_code))
    assert not wrong, wrong


def test_unknown_query_parameters_are_ignored(client, world: World) -> None:
    resp = client.get(
        "/admin/crm/contacts", query_string={"lang": "en", "_": "1"}, headers=world.header("user")
    )
    assert resp.status_code == 200


def test_token_endpoint_rejects_odd_bodies_without_500(client, world: World) -> None:
    """Found by the property run: a bare number, NUL and lone surrogates used to give 500."""
    bodies = [
        "6.9588381597846815e+19",
        "[1]",
        '{"username": "\\ud9e4x", "password": "pw"}',
        '{"username": "a\\u0000b", "password": "pw"}',
        '{"username": "acme_user", "password": "\\ud800"}',
        "[" * 50_000,
    ]
    for body in bodies:
        resp = client.post("/auth/token", data=body, content_type="application/json")
        assert resp.status_code in (400, 422), (body[:40], resp.status_code)
        assert resp.mimetype == "application/problem+json"


def test_lone_surrogates_in_api_bodies_are_422(client, world: World) -> None:
    body = '{"redirect_uri": "https://x.example/\\ud800"}'
    resp = client.put(
        "/admin/crm/config",
        data=body,
        content_type="application/json",
        headers=world.header("admin"),
    )
    assert resp.status_code == 422
